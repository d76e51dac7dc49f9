"""`jaxcirc bench ground-truth`: every discovery method on every tracr case, scored.

Writes `OUT/scorecard.md` and `OUT/scorecard.json` (one record per case and method: edge
AUROC, node AUROC, SHD at the true edge count, faithfulness, wall time) and a figure per case
under `OUT/circuits/` with each method's top-k edges against the true ones. The converted
tracr models ship with the package, so tracr itself is not needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._patch import choice


def add_parser(subparsers) -> argparse.ArgumentParser:
    bench = subparsers.add_parser(
        "bench", help="benchmark harnesses (ground-truth scorecard)", description=__doc__
    )
    kinds = bench.add_subparsers(title="benchmarks", dest="benchmark", metavar="BENCHMARK")
    parser = kinds.add_parser(
        "ground-truth",
        help="circuit discovery against tracr ground truth: scorecard (MD, JSON) and figures",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from ..tasks._tracr_cases import TRACR_CASE_NAMES

    def method(value: str) -> str:  # imports JAX, so only when --methods is given
        from ..bench._ground_truth import METHODS

        return choice("method", METHODS)(value)

    parser.add_argument("--out", type=Path, default=Path("scorecard-out"), help="output folder")
    parser.add_argument(
        "--cases",
        nargs="+",
        type=choice("case", TRACR_CASE_NAMES),
        default=None,
        help=f"tracr cases (default all): {', '.join(TRACR_CASE_NAMES)}",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        type=method,
        default=None,
        help="methods (default all), as named in jaxcirc.bench.METHODS: 'EAP', 'ACDC', ...",
    )
    parser.add_argument(
        "--ablation",
        type=choice("ablation", ("zero", "corrupt", "mean")),
        default="zero",
        help="what a removed edge carries",
    )
    parser.add_argument("--n", type=int, default=32, help="clean/corrupt pairs per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input pairs")
    parser.add_argument("--no-figures", action="store_true", help="skip the circuit figures")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, parser=parser)
    bench.set_defaults(run=lambda args: (bench.print_help(), 2)[1], parser=bench)
    return parser


def run(args) -> int:
    from ..bench._ground_truth import markdown, scorecard, write

    if args.n < 2:
        args.parser.error(f"argument --n: need at least 2 pairs; got {args.n}")
    records, found = scorecard(
        args.cases,
        args.methods,
        n=args.n,
        seed=args.seed,
        ablation=args.ablation,
        progress=not args.no_progress,
    )
    paths = write(records, args.out, None if args.no_figures else found)
    print(markdown(records))
    print(
        "wrote "
        + ", ".join(str(p) for p in paths[:2])
        + (f" and {len(paths) - 2} figures" if len(paths) > 2 else "")
    )
    return 0
