"""`jaxcirc sae dashboard`: an SAE's feature dashboard (top contexts, histograms, logit effects).

Reads the SAE from a SAELens folder (`cfg.json` + `sae_weights.safetensors`) or a jaxcirc SAE
folder (`sae.json`), runs the model (default SmolLM2-135M) over text, and writes
`OUT/dashboard.html` (one self-contained page), `OUT/dashboard.png` (a summary figure) and
`OUT/dashboard.json` (the numbers). The text is `--text FILE`, or by default held-out rows of
the standard library's docstrings (`--skip` rows passed over first, e.g. those the SAE was
trained on); `--random N` draws random tokens instead (models without a tokenizer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._patch import choice


def _features(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated feature ids such as 3,17,42; got {text!r}"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one feature id")
    return ids


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "dashboard",
        help="feature dashboards of an SAE: top contexts, histograms, logit effects",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("sae", type=Path, metavar="SAE_PATH", help="SAELens or jaxcirc SAE folder")
    parser.add_argument("--model", type=Path, default=None, help="model (default: SmolLM2-135M)")
    parser.add_argument(
        "--site", default=None, help="override the SAE's site (TransformerLens name)"
    )
    parser.add_argument("--features", type=_features, default=None, help="ids, e.g. 3,17,42")
    parser.add_argument("--n-features", type=int, default=8, help="how many, without --features")
    parser.add_argument(
        "--select",
        type=choice("select", ("frequency", "max")),
        default="frequency",
        help="without --features: the most frequent or the highest-max features",
    )
    parser.add_argument("--text", type=Path, default=None, help="a UTF-8 text file to read")
    parser.add_argument("--random", type=int, default=None, metavar="N", help="N random rows")
    parser.add_argument("--rows", type=int, default=64, help="rows of text")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row")
    parser.add_argument("--skip", type=int, default=0, help="corpus rows to pass over first")
    parser.add_argument("--contexts", type=int, default=8, help="top contexts per feature")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per compiled batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random")
    parser.add_argument("--out", type=Path, default=Path("dashboard-out"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, parser=parser)
    return parser


def _tokens(args, model, tokenizer):
    import numpy as np

    for name in ("rows", "seq"):
        if getattr(args, name) < 1 or (name == "seq" and getattr(args, name) < 2):
            args.parser.error(f"argument --{name}: must be at least {2 if name == 'seq' else 1}")
    if args.random is not None:
        if args.random < 1:
            args.parser.error(f"argument --random: need at least 1 row; got {args.random}")
        rng = np.random.default_rng(args.seed)
        seq = args.seq if model.pos_embed is None else min(args.seq, model.cfg.n_ctx)
        return rng.integers(0, model.cfg.d_vocab, (args.random, seq)), 0, {"random": args.random}
    if tokenizer is None:
        args.parser.error(f"model {args.model} has no tokenizer: give --random N")
    from ..tasks._corpus import token_sequences

    texts = None
    source = {"corpus": "stdlib docstrings", "skip": args.skip}
    if args.text is not None:
        texts = [args.text.read_text(encoding="utf-8")]
        source = {"text": str(args.text), "skip": args.skip}
    tokens = token_sequences(tokenizer, args.seq, args.rows, skip=args.skip, texts=texts)
    return tokens, 1, source  # position 0 is BOS: left out of the statistics


def run(args) -> int:
    import numpy as np

    from .. import load
    from .._atomic import atomic_write
    from .._finite import check_finite_weights
    from ..io import load_sae, load_tokenizer
    from ..viz._dashboard import feature_dashboard, plot_dashboard, write_html

    if args.features is not None and any(f < 0 for f in args.features):
        args.parser.error(f"argument --features: ids must be >= 0; got {args.features}")
    if args.text is not None and args.random is not None:
        args.parser.error("give --text or --random, not both")
    sae = load_sae(args.sae, args.site)
    if args.model is None:
        from ..io._gguf import smollm2_gguf_path

        args.model = Path(smollm2_gguf_path())
    model = load(args.model)
    check_finite_weights(model, f"model {args.model}")
    tokenizer = None
    if args.random is None:
        try:
            tokenizer = load_tokenizer(args.model)
        except (OSError, ValueError):
            tokenizer = None
    tokens, start, source = _tokens(args, model, tokenizer)
    dash = feature_dashboard(
        model, sae, tokens, features=args.features, n_features=args.n_features,
        select=args.select, tokenizer=tokenizer, start=start, n_contexts=args.contexts,
        batch_size=args.batch_size, progress=not args.no_progress,
    )  # fmt: skip
    title = f"{args.sae.name}: features at {sae.site} ({args.model.name})"
    out = args.out
    html = write_html(dash, out / "dashboard.html", title=title)
    png = plot_dashboard(dash, out / "dashboard.png", title=title)
    record = {"sae": str(args.sae), "model": str(args.model), **source,
              "rows": int(np.asarray(tokens).shape[0]), **dash.to_dict()}  # fmt: skip
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    js = atomic_write(out / "dashboard.json", lambda t: Path(t).write_text(text, encoding="utf-8"))
    shown = ", ".join(f"{c.feature} ({100 * c.frequency:.2g}%)" for c in dash.cards)
    print(f"features {shown} of {dash.d_sae} at {dash.site} over {dash.n_tokens} tokens")
    print(f"wrote {html}, {png} and {js}")
    return 0
