"""`jaxcirc iia`: interchange-intervention accuracy on a built-in toy example, plus DAS.

The toy network reads a token `t = 4a + b` (a, b in 0..3) into a residual stream holding
`[a, b, 1, noise…]` and outputs the token `S = a + b`; the high-level model is
`A = a, B = b, S = A + B`. It scores a right and a wrong alignment of `A`, multi-source
interchanges of `A` and `B`, and DAS on a copy whose stream is randomly rotated, against a
random subspace (Geiger et al. 2021; 2023). Writes an IIA table as PNG and JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "iia",
        help="interchange-intervention accuracy and DAS on a toy example: table (PNG, JSON)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n-pairs", type=int, default=256, help="(base, source) pairs")
    parser.add_argument("--das-steps", type=int, default=200, help="DAS training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of pairs and rotations")
    parser.add_argument("--out", type=Path, default=Path("iia-out"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run, parser=parser)
    return parser


def _data(rng, n: int, values: int):
    """`n` tokens `values·a + b` with random `a, b < values`, and their high-level inputs."""
    a, b = rng.integers(0, values, n), rng.integers(0, values, n)
    return np.asarray(values * a + b)[:, None], {"a": a, "b": b}


def run(args) -> int:
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from .. import __version__
    from .._atomic import atomic_write
    from ..methods import das, iia
    from ..models._site import SiteRef
    from ..viz import plot_iia
    from ..zoo._toy_sum import D, N, high_level, toy_model

    if args.n_pairs < 8:
        args.parser.error(f"argument --n-pairs: must be at least 8; got {args.n_pairs}")
    if args.das_steps < 1:
        args.parser.error(f"argument --das-steps: must be at least 1; got {args.das_steps}")
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    hl, answers = high_level(), jnp.arange(2 * N - 1)
    (bt, bi), (st, si), (t2, i2) = (_data(rng, args.n_pairs, N) for _ in range(3))
    site = SiteRef("resid_post", 0)
    model = toy_model(seed=args.seed)
    one = dict(base_inputs=bi, source_inputs=si, answer_tokens=answers)
    multi = dict(base_inputs=bi, source_inputs={"A": si, "B": i2}, answer_tokens=answers)
    cases = [
        ("A -> unit 0 (right)", {"A": {"site": site, "unit": 0}}, st, one),
        ("A -> unit 1 (wrong)", {"A": {"site": site, "unit": 1}}, st, one),
        (
            "A, B -> units 0, 1, two sources",
            {"A": {"site": site, "unit": 0}, "B": {"site": site, "unit": 1}},
            {"A": st, "B": t2},
            multi,
        ),
        (
            "A, B -> units 1, 0 (swapped)",
            {"A": {"site": site, "unit": 1}, "B": {"site": site, "unit": 0}},
            {"A": st, "B": t2},
            multi,
        ),
    ]
    rows = []
    show = not args.no_progress
    with tqdm(total=len(cases) + 2, desc="jaxcirc iia", disable=not show, leave=False) as bar:
        for name, alignment, sources, kw in cases:
            bar.set_postfix_str(name)
            rows.append(
                {"alignment": name, "iia": iia(model, hl, alignment, bt, sources, **kw).accuracy}
            )
            bar.update()
        bar.set_postfix_str(f"DAS, {args.das_steps} steps")
        q = np.linalg.qr(rng.normal(size=(D, D)))[0].astype(np.float32)
        rotated = toy_model(rotation=q, nuisance=1.0, seed=args.seed)
        t = time.perf_counter()
        result = das(
            rotated,
            hl,
            "A",
            {"site": site, "position": 0},
            bt,
            st,
            **one,
            k=1,
            steps=args.das_steps,
            learning_rate=0.05,
            key=jax.random.key(args.seed),
        )
        das_s = time.perf_counter() - t
        cos = float(np.linalg.svd(result.basis @ q[:1].T, compute_uv=False).min())
        rows.append(
            {
                "alignment": "DAS k=1, rotated stream (held-out)",
                "iia": result.test_iia,
                "train_iia": result.train_iia,
                "cos_principal_angle": cos,
            }
        )
        bar.update()
        random_basis = jnp.asarray(np.linalg.qr(rng.normal(size=(D, 1)))[0].T)
        rows.append(
            {
                "alignment": "random 1-d subspace, rotated stream",
                "iia": iia(
                    rotated, hl, {"A": {"site": site, "basis": random_basis}}, bt, st, **one
                ).accuracy,
            }
        )
        bar.update()

    png = plot_iia(
        {r["alignment"]: r["iia"] for r in rows},
        args.out / "iia_toy.png",
        title="jaxcirc iia: toy S = a + b",
    )
    record = {
        "jaxcirc_version": __version__,
        "example": "toy S = a + b (a, b in 0..3)",
        "n_pairs": args.n_pairs,
        "seed": args.seed,
        "das_steps": args.das_steps,
        "rows": rows,
        "timing": {"das_s": round(das_s, 3), "total_s": round(time.perf_counter() - start, 3)},
    }
    out = atomic_write(
        args.out / "iia_toy.json",
        lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"),
    )
    print(f"jaxcirc iia: toy S = a + b, {args.n_pairs} pairs")
    for row in rows:
        print(f"  {row['alignment']:<40} IIA {row['iia']:.3f}")
    print(f"DAS: held-out IIA {result.test_iia:.3f}, cos(principal angle to planted) {cos:.3f}")
    print(f"wrote {png} and {out}")
    return 0
