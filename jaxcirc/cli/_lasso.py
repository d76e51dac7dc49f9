"""`jaxcirc lasso`: a circuit by CircuitLasso, from forward passes only.

CircuitLasso (Yin et al. 2026, ICML 2026 MI workshop, arXiv 2606.16939) regresses each graph
target's input (a head's q/k/v vector, an MLP's pre-activations, the logits) on the outputs of
the components before it with an ℓ1 penalty; block norms score the edges. Runs on a shipped
tracr case (default `reverse`: clean and corrupted inputs are the samples, the true circuit is
known) or on a saved model (`--model`) with random tokens. Writes `OUT/circuit.json` (scores,
the chosen circuit, the λ path, and SHD/AUROC against the truth when there is one) and
`OUT/circuit.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._patch import choice


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lasso",
        help="circuit discovery by sparse regression on activations (CircuitLasso)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from ..tasks._tracr_cases import TRACR_CASE_NAMES

    parser.add_argument(
        "--case", type=choice("case", TRACR_CASE_NAMES), default="reverse", help="tracr case"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="a saved model instead (random tokens)"
    )
    parser.add_argument("--n", type=int, default=32, help="clean (and corrupted) prompts")
    parser.add_argument("--seq", type=int, default=8, help="tokens per prompt with --model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and the split")
    parser.add_argument("--alpha", type=float, default=None, help="λ (default: chosen on a path)")
    parser.add_argument(
        "--select",
        type=choice("select", ("heldout", "count", "bic")),
        default=None,
        help="how λ is chosen: held-out error (default), edge count (--n-edges), BIC",
    )
    parser.add_argument("--n-edges", type=int, default=None, help="edge count for --select count")
    parser.add_argument("--n-alphas", type=int, default=20, help="λ values on the path")
    parser.add_argument("--out", type=Path, default=Path("lasso-out"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, parser=parser)
    return parser


def run(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from .._atomic import atomic_write
    from .._finite import check_finite_weights
    from ..methods._circuit_lasso import circuit_lasso
    from ..metrics._circuit import auroc, shd, top_n
    from ..viz._circuit import plot_circuit

    if args.n < 2:
        args.parser.error(f"argument --n: need at least 2 prompts; got {args.n}")
    if args.alpha is not None and args.alpha < 0:
        args.parser.error(f"argument --alpha: must be >= 0; got {args.alpha}")
    if args.select == "count" and args.n_edges is None:
        args.parser.error("--select count needs --n-edges")
    truth = None
    if args.model is not None:
        from .. import load

        model = load(args.model)
        if args.seq < 1 or (model.pos_embed is not None and args.seq > model.cfg.n_ctx):
            args.parser.error(f"argument --seq: need 1..{model.cfg.n_ctx}; got {args.seq}")
        rng = np.random.default_rng(args.seed)
        clean, corrupt = (rng.integers(0, model.cfg.d_vocab, (args.n, args.seq)) for _ in "ab")
        source = {"model": str(args.model)}
    else:
        from ..io._tracr import tracr_case

        model, circ, info = tracr_case(args.case)
        clean, corrupt = info.sample(args.n, seed=args.seed)
        truth = tuple(circ.edges)
        source = {"case": args.case, "constant_edges": [list(e) for e in circ.constant_edges]}
    check_finite_weights(model, f"model {args.model or args.case}")
    res = circuit_lasso(
        model, jnp.asarray(clean), jnp.asarray(corrupt), alpha=args.alpha, select=args.select,
        n_edges=args.n_edges, n_alphas=args.n_alphas, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    g = res.scores.graph
    values = np.asarray(res.scores.values)
    found = res.circuit.edges()
    record = {
        **source,
        "method": "CircuitLasso (arXiv 2606.16939)",
        "samples": int(res.fit.n_samples),
        "alpha": res.alpha,
        "select": res.fit.select,
        "alphas": [float(a) for a in res.alphas],
        "edge_counts": None if res.edge_counts is None else [int(c) for c in res.edge_counts],
        "circuit": [[s, t] for s, t in found],
        "scores": [[s, t, float(values[g.edge_index(s, t)])] for s, t in g.edges()],
        "dropped_columns": len(res.fit.dropped),
        "seconds": {k: round(v, 3) for k, v in res.seconds.items()},
    }
    if truth is not None:
        record["truth"] = [list(e) for e in truth]
        record["shd"] = shd(res.circuit, truth)
        record["shd_at_true_count"] = shd(top_n(res.scores, len(truth)), truth)
        record["edge_auroc"] = auroc(res.scores, truth)
    out = args.out
    js = atomic_write(
        out / "circuit.json", lambda t: Path(t).write_text(json.dumps(record, indent=1) + "\n")
    )
    name = args.case if args.model is None else args.model.name
    png = plot_circuit(
        {"CircuitLasso": res.circuit}, truth, out / "circuit.png",
        title=f"{name}: CircuitLasso circuit (λ = {res.alpha:.3g})",
    )  # fmt: skip
    summary = f"{len(found)} edges at λ = {res.alpha:.3g}"
    if truth is not None:
        summary += (
            f"; SHD {record['shd']} (at the true count {record['shd_at_true_count']}), "
            f"edge AUROC {record['edge_auroc']:.3f}"
        )
    print(summary)
    print(f"wrote {js} and {png}")
    return 0
