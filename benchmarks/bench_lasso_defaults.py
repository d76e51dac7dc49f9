"""`jaxcirc.solvers.lasso` with its default arguments vs scikit-learn's `Lasso` with its
defaults, on float32 problems with correlated columns of unequal scale and an intercept.

Problems: `X [n, d]` with AR(1)-correlated columns (correlation 0.9 between neighbours),
column scales in [0.5, 2] and offsets in [-3, 3]; `Y [n, k] = X B + noise + offsets`, each
target using 5 % of the columns. `alpha = 0.05`. Sizes 1500 × 300 × 40 and 4096 × 1024 × 256.
Reference objective: scikit-learn `Lasso(tol=1e-8)` in float64. Each side runs in its own
process (its peak memory is its own); jaxcirc's steady state is the median of 3 calls after
the first (compiling) call; scikit-learn runs once (it has nothing to compile).

Usage: `python benchmarks/bench_lasso_defaults.py [--quick]`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SIZES = [(1500, 300, 40), (4096, 1024, 256)]
QUICK = [(300, 60, 8)]
ALPHA = 0.05


def make(n, d, k, seed=0, rho=0.9):
    """Correlated columns of unequal scale with offsets; a sparse multi-target response."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d))
    X = np.empty((n, d))
    X[:, 0] = Z[:, 0]
    for j in range(1, d):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * Z[:, j]
    X = X * rng.uniform(0.5, 2.0, d) + rng.uniform(-3, 3, d)
    B = np.zeros((d, k))
    for t in range(k):
        idx = rng.choice(d, size=max(1, d // 20), replace=False)
        B[idx, t] = rng.standard_normal(idx.size)
    Y = X @ B + 0.5 * rng.standard_normal((n, k)) + rng.uniform(-2, 2, k)
    return X.astype(np.float32), Y.astype(np.float32)


def objective(X, Y, W, b):
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    R = Y - X @ W.astype(np.float64) - np.asarray(b, np.float64)
    return 0.5 * np.sum(R * R) / len(X) + ALPHA * np.abs(W).sum()


def sizes(args):
    return QUICK if args.quick else SIZES


def side_jax(args, workdir):
    import jax

    from jaxcirc.solvers import RESULTS, lasso

    report, out = {}, {}
    for n, d, k in sizes(args):
        X, Y = make(n, d, k)
        run = lambda: jax.block_until_ready(lasso(X, Y, ALPHA))  # noqa: E731
        t = time.perf_counter()
        run()
        report[f"{n}_first_s"] = time.perf_counter() - t
        times, sol = c.timed(run, 3)
        report[f"{n}_steady_s"] = statistics.median(times)
        report[f"{n}_steps"] = int(sol.stats["num_steps"])
        names = ("successful", "precision_floor", "max_steps_reached", "nonfinite")
        report[f"{n}_result_name"] = next(
            m for m in names if bool(sol.result == getattr(RESULTS, m))
        )
        report[f"{n}_gap_rel"] = float(sol.stats["duality_gap"] / sol.stats["objective"])
        report[f"{n}_floor_rel"] = float(sol.stats["precision_floor"] / sol.stats["objective"])
        out[f"{n}_W"], out[f"{n}_b"] = np.asarray(sol.value), np.asarray(sol.intercept)
    c.finish_side(workdir, "jax", out, **report)


def _sklearn(X, Y, **kw):
    from sklearn.linear_model import Lasso
    from threadpoolctl import threadpool_limits

    with threadpool_limits(c.CORES), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        m = Lasso(alpha=ALPHA, **kw).fit(X, Y)
        return time.perf_counter() - t, m


def side_sklearn(args, workdir):
    report, out = {}, {}
    for n, d, k in sizes(args):
        X, Y = make(n, d, k)
        report[f"{n}_steady_s"], m = _sklearn(X, Y)
        out[f"{n}_W"], out[f"{n}_b"] = m.coef_.T, m.intercept_
    c.finish_side(workdir, "sklearn", out, **report)


def side_reference(args, workdir):
    report, out = {}, {}
    for n, d, k in sizes(args):
        X, Y = make(n, d, k)
        report[f"{n}_steady_s"], m = _sklearn(
            X.astype(np.float64), Y.astype(np.float64), tol=1e-8, max_iter=100_000
        )
        out[f"{n}_W"], out[f"{n}_b"] = m.coef_.T, m.intercept_
    c.finish_side(workdir, "reference", out, **report)


def main():
    p = c.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    if args.side:
        {"jax": side_jax, "sklearn": side_sklearn, "reference": side_reference}[args.side](
            args, Path(args.workdir)
        )
        return
    info = c.machine()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rep = c.run_sides(__file__, workdir, ["jax", "sklearn", "reference"], 1)
        rows, notes = [], []
        for n, d, k in sizes(args):
            X, Y = make(n, d, k)
            out = lambda side, name: c.load_output(workdir, side, f"{n}_{name}")  # noqa: E731
            obj = {
                side: objective(X, Y, out(side, "W"), out(side, "b"))
                for side in ("jax", "sklearn", "reference")
            }
            ref = obj["reference"]
            j, s = rep["jax"], rep["sklearn"]
            ratio = s[f"{n}_steady_s"] / j[f"{n}_steady_s"]
            rel = (obj["jax"] - ref) / ref
            ok = rel <= 1e-5 and j[f"{n}_result_name"] in ("successful", "precision_floor")
            rows.append(
                [f"{n} × {d} × {k}", "jaxcirc `lasso` (defaults)", f"{j[f'{n}_first_s']:.3f}",
                 f"{j[f'{n}_steady_s']:.3f}", f"{rel:.1e}",
                 f"{j[f'{n}_result_name']}, {j[f'{n}_steps']} steps, gap {j[f'{n}_gap_rel']:.1e}"
                 f" (floor {j[f'{n}_floor_rel']:.1e}) of the objective", f"{j['peak_rss_mib']:.0f}"]
            )  # fmt: skip
            rows.append(
                [f"{n} × {d} × {k}", "scikit-learn `Lasso` (defaults)", "–",
                 f"{s[f'{n}_steady_s']:.3f}", f"{(obj['sklearn'] - ref) / ref:.1e}", "",
                 f"{s['peak_rss_mib']:.0f}"]
            )  # fmt: skip
            notes.append(
                f"- {n} × {d} × {k}: scikit-learn / jaxcirc time **{ratio:.1f}×** (target > 1×: "
                f"{'met' if ratio > 1 else 'missed'}); objective within 1e-5 of the reference "
                f"and converged: {'yes' if ok else 'NO'}; reference (float64, tol 1e-8) took "
                f"{rep['reference'][f'{n}_steady_s']:.1f} s."
            )
            print(notes[-1])
    body = "\n".join(
        [
            "## `lasso` with default arguments vs scikit-learn `Lasso` (CPU, float32)",
            "",
            c.machine_markdown(info),
            "",
            __doc__.split("\n\n")[1].replace("\n", " "),
            "",
            c.table(
                [
                    "problem n × d × k",
                    "solver",
                    "first call s",
                    "steady s",
                    "objective − reference (relative)",
                    "result",
                    "peak RSS MiB",
                ],
                rows,
            ),  # fmt: skip
            "",
            *notes,
        ]
    )
    c.publish("lasso_defaults", body, record=not args.quick)


if __name__ == "__main__":
    main()
