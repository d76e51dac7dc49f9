"""Peak memory of a `resid_pre` sweep against the number of prompt pairs (issue 12).

`jaxcirc.patching.sweep(site="resid_pre")` at 64, 1k, 4k, 16k and 32k clean/corrupt prompt
pairs, each point in its own process so its peak RSS is its own, on two models:

- the embedded induction model (`jaxcirc.zoo.induction_model()`, 2 attention-only layers,
  d_vocab 64) on `jaxcirc.zoo.induction_task(n)` (32 tokens, `[A, A]` against `[A', A]`) with
  its metric, the mean log-probability of the induction token over the repeated half (it
  reads every position, so every position is unembedded);
- the same shape with a 50,257-token vocabulary (random weights) on `jaxcirc.tasks.induction(n,
  d_vocab=64)` (31 tokens), metric `bind(logit_diff, answer, distractor)` at the last position
  (it declares that position, so only it is unembedded: a metric reading every position of a
  50k vocabulary costs 30× the compute, hours for these points on a laptop CPU).

Both metrics are means over examples with a per-example form, so the sweep splits the prompts
into chunks that fit `memory_budget` (`BUDGET_MIB`). Passes when every point's peak RSS is
within 20 % above the 64-pair point's. Usage: `python benchmarks/bench_memory.py [--quick]`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

POINTS = (64, 1024, 4096, 16384, 32768)
QUICK_POINTS = (64, 256, 1024)
BUDGET_MIB = 256
FLAT = 1.2  # allowed peak over the first point's
MODELS = {
    "induction": "embedded induction model (d_vocab 64), `induction_task` metric, all positions",
    "vocab50k": "same shape, d_vocab 50,257 (random weights), logit diff at the last position",
}


def setup(which: str, n: int):
    """`(model, clean, corrupt, metric)` of one point."""
    import jax

    import jaxcirc as jc

    if which == "induction":
        task = jc.zoo.induction_task(n)
        return jc.zoo.induction_model(), task.clean, task.corrupt, task.metric
    model = jc.models.attn_only(
        d_model=64, n_heads=4, d_head=16, d_vocab=50257, n_ctx=48, key=jax.random.key(0)
    )
    task = jc.tasks.induction(n, d_vocab=64)
    metric = jc.metrics.bind(jc.metrics.logit_diff, answer=task.answer, distractor=task.distractor)
    return model, task.clean, task.corrupt, metric


def prompts_per_chunk(model, clean, metric, budget: int) -> int:
    """The prompts the sweep runs at once (its own plan, recomputed here for the report)."""
    from jaxcirc.patching import _budget, _sweep

    batch, seq = clean.shape
    positions, read = _sweep._read_plan(metric, None, batch, seq)
    n_read = seq if positions is None else positions.shape[1]
    fixed, units = _sweep._prompt_bytes(model, "resid_pre", "position", seq, n_read, read, None,
                                        None)  # fmt: skip
    return _budget.prompts_per_chunk(batch, fixed + units, budget, metric,
                                     on_positions=read == "declared")  # fmt: skip


def side(which: str, n: int) -> None:
    import jax

    import jaxcirc as jc

    model, clean, corrupt, metric = setup(which, n)
    jax.block_until_ready((clean, corrupt))
    setup_mib = c.peak_rss_mib()
    budget = BUDGET_MIB << 20
    t = time.perf_counter()
    out = jc.patching.sweep(model, clean, corrupt, metric, "resid_pre", memory_budget=budget)
    seconds = time.perf_counter() - t
    print(json.dumps({
        "n": n, "peak_rss_mib": c.peak_rss_mib(), "setup_rss_mib": setup_mib, "seconds": seconds,
        "per_chunk": prompts_per_chunk(model, clean, metric, budget),
        "finite": bool(jax.numpy.isfinite(out).all()),
    }))  # fmt: skip


def run_point(which: str, n: int) -> dict:
    env = {"TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, __file__, "--side", which, "--n", str(n)]
    print(f"[{which}, {n} pairs] running ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode:
        sys.exit(f"{which} at {n} pairs failed:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if not report["finite"]:
        sys.exit(f"{which} at {n} pairs: the sweep is not finite")
    print(f"  {report}", flush=True)
    return report


def report(info: dict, points: tuple[int, ...], runs: dict[str, list[dict]]) -> tuple[str, bool]:
    rows, verdicts = [], {}
    for which, reports in runs.items():
        first = reports[0]["peak_rss_mib"]
        worst = max(r["peak_rss_mib"] for r in reports) / first
        verdicts[which] = worst <= FLAT
        for r in reports:
            rows.append([
                MODELS[which] if r is reports[0] else "", f"{r['n']:,}",
                f"**{r['peak_rss_mib']:,.0f} MiB**", f"{r['peak_rss_mib'] / first:.2f}×",
                f"{r['setup_rss_mib']:,.0f} MiB",
                "all" if r["per_chunk"] >= r["n"] else f"{r['per_chunk']:,}",
                c.ms(r["seconds"]),
            ])  # fmt: skip
    ok = all(verdicts.values())
    verdict = "; ".join(
        f"{w}: worst {max(r['peak_rss_mib'] for r in runs[w]) / runs[w][0]['peak_rss_mib']:.2f}×"
        for w in runs
    )
    text = "\n\n".join([
        "## Peak memory of a `resid_pre` sweep against the number of prompts (issue 12, CPU)",
        c.machine_markdown(info),
        f"`jaxcirc.patching.sweep(model, clean, corrupt, metric, \"resid_pre\", memory_budget="
        f"{BUDGET_MIB} MiB)` at {', '.join(f'{n:,}' for n in points)} clean/corrupt prompt "
        f"pairs; one process per point, peak RSS (`VmHWM`) of that whole process: Python, JAX, "
        f"the model, the prompts, compiling and running the sweep. Models: the embedded "
        f"induction model (`jaxcirc.zoo.induction_model()`, 2 attention-only layers) on "
        f"`jaxcirc.zoo.induction_task(n)` (32 tokens) with its metric, which reads every "
        f"position; and the same shape with a 50,257-token vocabulary (random weights) on "
        f"`jaxcirc.tasks.induction(n, d_vocab=64)` (31 tokens) with `bind(logit_diff, answer, "
        f"distractor)` at the last position (it declares that position: only it is "
        f"unembedded). Both metrics are means over examples with a per-example form, so prompts "
        f"that do not fit the budget run in chunks of one compiled program. \"after setup\": "
        f"peak RSS before the sweep; \"prompts at once\": the chunk the sweep chose. Before "
        f"this change (issue 12), at the default 1 GiB: 1.3 GB up to 4k pairs, then 2.3 GB at "
        f"16k and 4.1 GB at 32k on the induction model; 3.8 GB from 1k pairs on with a 50k "
        f"vocabulary.",
        c.table(["model", "prompt pairs", "peak RSS", "vs first point", "after setup",
                 "prompts at once", "sweep (incl. compile)"], rows),  # fmt: skip
        f"**Target (peak RSS flat within {FLAT - 1:.0%} above the 64-pair point, on both "
        f"models): {'met' if ok else 'MISSED'}** — {verdict}.",
    ])  # fmt: skip
    return text, ok


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--n", type=int, help="prompt pairs (side process)")
    args = p.parse_args()
    if args.side:
        return side(args.side, args.n)
    info = c.machine()
    points = QUICK_POINTS if args.quick else POINTS
    runs = {which: [run_point(which, n) for n in points] for which in MODELS}
    text, ok = report(info, points, runs)
    c.publish("bench_memory", text, record=not args.quick)
    if not ok:
        sys.exit("peak memory is not flat")


if __name__ == "__main__":
    main()
