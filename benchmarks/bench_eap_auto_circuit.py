"""EAP parity and timing: jaxcirc's `methods.eap` vs auto-circuit's mask-gradient EAP.

For each case (a tracr-compiled model, and a random GPT-2-style model with LayerNorm) the
script exports the jaxcirc model, prompts and jaxcirc's EAP scores (`auto_circuit/export.py`,
this python), runs auto-circuit on the same weights and tokens in its own venv
(`auto_circuit/run_auto_circuit.py`, TransformerLens 2.x, numpy<2), and compares the scores
edge by edge: Spearman rank correlation of |score|, and Pearson correlation of the signed scores
after matching sign conventions (auto-circuit's score is the negative of jaxcirc's: its loss
is `-metric`). Exits 1 if a rank correlation is below 0.99 (or the logits disagree).

    bash benchmarks/auto_circuit/setup.sh        # once: the auto-circuit venv
    python benchmarks/bench_eap_auto_circuit.py  # writes its section of RESULTS.md
    python benchmarks/bench_eap_auto_circuit.py --quick --cases reverse   # prints only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AC = HERE / "auto_circuit"
VENV_PYTHON = AC / ".venv" / "bin" / "python"
SETUP = "bash benchmarks/auto_circuit/setup.sh"
MIN_RANK_CORRELATION = 0.99
DIGITS = 6  # |score| / max |score| is rounded to this many decimals before ranking (float ties)

DESCRIPTION = """\
Same weights and tokens on both sides: `auto_circuit/export.py` writes the jaxcirc model in
TransformerLens layout, the prompts and jaxcirc's EAP scores; `auto_circuit/run_auto_circuit.py`
(its own venv: TransformerLens 2.x, numpy<2) rebuilds a `HookedTransformer`, checks its logits
against jaxcirc's (atol 1e-4), and runs auto-circuit's `mask_gradient_prune_scores`
(`grad_function="logit"`, `mask_val=0`, `integrated_grad_samples=None`, resample ablation from the
corrupt prompts) on `patchable_model(factorized=True, separate_qkv=True,
slice_output="last_seq")`. Metric at the last position, batch mean: `logit_diff` (answer = clean
prediction, wrong = corrupt prediction) ↔ `answer_function="avg_diff"`, or `logit` of column 0
(numerical tracr output) ↔ `"avg_val"`. auto-circuit's score is `-1 ×` jaxcirc's (its mask runs
clean → corrupt, its loss is `-metric`); Pearson is taken after flipping it. Spearman is over
|score| of every shared edge, |score| / max |score| rounded to {digits} decimals first, so that
float32 noise does not break ties (tracr's many exact zeros, and scores equal in exact
arithmetic); "unrounded" ranks the raw float32 values. Times: median of {repeat} runs after a
first (warm-up) call, each including the corrupt run for the ablations; jaxcirc's first call
includes compilation. Peak RSS of each side's own
process (jaxcirc's includes building the model, auto-circuit's importing torch and
TransformerLens). `torch.set_num_threads({threads})`; XLA uses all cores. The two sides run
one after the other in separate processes on a shared machine (load average above): the
speed-ups are indicative only. These models are tiny, so per-call overhead dominates:
auto-circuit runs the corrupt forward and a hooked forward + backward through Python wrappers
on every node, jaxcirc one compiled XLA program.\
"""

HEADER = [
    "model", "batch × seq", "metric", "edges (non-zero)", "Spearman abs", "unrounded",
    "Pearson signed",
    "max abs diff", "jaxcirc EAP", "auto-circuit EAP", "speed-up", "peak RSS jaxcirc / ac",
]  # fmt: skip


def _run(cmd: list[str], what: str) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as `scipy.stats.rankdata`)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def compare(workdir: Path) -> dict:
    """Edge-by-edge agreement of the scores in `workdir` (written by export + auto-circuit)."""
    data = np.load(workdir / "data.npz")
    ac = json.loads((workdir / "auto_circuit.json").read_text())
    sources, targets = list(data["sources"]), list(data["targets"])
    ours_all = {
        (sources[i], targets[j]): float(data["eap"][i, j])
        for i, j in zip(*np.nonzero(data["valid"]))
    }
    theirs_all = {(s, t): -score for _, _, s, t, score in ac["edges"]}  # sign: theirs is -ours
    shared = sorted(set(ours_all) & set(theirs_all))
    ours = np.array([ours_all[e] for e in shared])
    theirs = np.array([theirs_all[e] for e in shared])
    scale = max(np.abs(ours).max(), np.abs(theirs).max(), 1e-30)

    def magnitude(x):  # float32 noise must not break ties (exact zeros, equal tracr scores)
        return np.round(np.abs(x) / scale, DIGITS)

    return {
        "n_edges_jaxcirc": len(ours_all),
        "n_edges_auto_circuit": len(theirs_all),
        "n_shared": len(shared),
        "n_nonzero": int((magnitude(ours) > 0).sum()),
        "spearman_abs": _pearson(_ranks(magnitude(ours)), _ranks(magnitude(theirs))),
        "spearman_abs_unrounded": _pearson(_ranks(np.abs(ours)), _ranks(np.abs(theirs))),
        "pearson_signed": _pearson(ours, theirs),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "max_abs_score": float(scale),
        "top_edges": [f"{s}->{t}" for s, t in (shared[i] for i in np.argsort(-np.abs(ours))[:3])],
    }


def run_case(case: str, workdir: Path, n: int, repeat: int, seed: int = 0) -> dict:
    """Export `case` with jaxcirc, run auto-circuit on it, compare; all reports merged."""
    if not VENV_PYTHON.exists():
        raise FileNotFoundError(f"no auto-circuit venv at {VENV_PYTHON}; create it with `{SETUP}`")
    jax_side = _run(
        [sys.executable, str(AC / "export.py"), "--case", case, "--out", str(workdir),
         "--n", str(n), "--seed", str(seed), "--repeat", str(repeat)],
        f"export ({case})",
    )  # fmt: skip
    ac_side = _run(
        [str(VENV_PYTHON), str(AC / "run_auto_circuit.py"), str(workdir), "--repeat", str(repeat)],
        f"auto-circuit ({case})",
    )
    info = json.loads((workdir / "config.json").read_text())
    return {
        "case": case,
        "info": info,
        "jaxcirc": jax_side,
        "auto_circuit": ac_side,
        **compare(workdir),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _median(times: list[float]) -> float:
    return statistics.median(times) if times else float("nan")


def markdown(results: list[dict], args) -> str:
    sys.path.insert(0, str(HERE))
    from _common import machine, machine_markdown, table

    info = machine()
    ac_versions = results[0]["auto_circuit"]["versions"]
    info["versions"] += "; auto-circuit venv: " + ", ".join(
        f"{k} {v}" for k, v in ac_versions.items()
    )
    rows = []
    for r in results:
        i, jx, ac = r["info"], r["jaxcirc"], r["auto_circuit"]
        tl = i["tl_config"]
        norm = "LayerNorm" if tl["normalization_type"] else "no norm"
        model = (
            f"{r['case']} ({tl['n_layers']} layers × {tl['n_heads']} heads, "
            f"d_model {tl['d_model']}, {norm}, {tl['attention_dir']})"
        )
        jm, am = _median(jx["steady_s"]), _median(ac["steady_s"])
        rows.append(
            [
                model,
                f"{i['batch']} × {i['seq']}",
                i["metric"],
                f"{r['n_shared']} ({r['n_nonzero']} ≠ 0)",
                f"**{r['spearman_abs']:.6f}**",
                f"{r['spearman_abs_unrounded']:.6f}",
                f"{r['pearson_signed']:.6f}",
                f"{r['max_abs_diff']:.1e}",
                f"{_ms(jm)} (first {_ms(jx['first_call_s'])})",
                f"{_ms(am)} (first {_ms(ac['first_call_s'])})",
                f"{am / jm:.1f}×",
                f"{jx['peak_rss_mib']:,.0f} / {ac['peak_rss_mib']:,.0f} MiB",
            ]
        )
    threads = results[0]["auto_circuit"]["threads"]
    worst = min(r["spearman_abs"] for r in results)
    verdict = "met" if worst >= MIN_RANK_CORRELATION else "MISSED"
    return "\n\n".join([
        "## EAP: jaxcirc `methods.eap` vs auto-circuit's edge attribution patching (CPU)",
        machine_markdown(info),
        DESCRIPTION.format(digits=DIGITS, repeat=args.repeat, threads=threads),
        table(
            HEADER,
            rows,
        ),
        f"**Target (rank correlation ≥ {MIN_RANK_CORRELATION} with auto-circuit's EAP on the same "
        f"tracr model): {verdict}** — worst Spearman {worst:.6f}.",
    ])  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="reverse,frac_prevs,random", help="comma-separated")
    p.add_argument("--n", type=int, default=16, help="prompt pairs")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per side after warm-up")
    p.add_argument("--quick", action="store_true", help="print only, do not write RESULTS.md")
    args = p.parse_args(argv)
    if not VENV_PYTHON.exists():
        print(f"no auto-circuit venv at {VENV_PYTHON}; create it with `{SETUP}`", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="eap_ac_") as tmp:
        for case in args.cases.split(","):
            print(f"[{case}] export + auto-circuit ...", flush=True)
            r = run_case(case, Path(tmp) / case, args.n, args.repeat)
            results.append(r)
            jm, am = _median(r["jaxcirc"]["steady_s"]), _median(r["auto_circuit"]["steady_s"])
            print(
                f"  {r['n_shared']} edges ({r['n_nonzero']} non-zero): Spearman |score| "
                f"{r['spearman_abs']:.6f} (unrounded {r['spearman_abs_unrounded']:.6f}), "
                f"Pearson signed {r['pearson_signed']:.6f}, max |diff| "
                f"{r['max_abs_diff']:.1e}; EAP median jaxcirc {_ms(jm)}, auto-circuit {_ms(am)}; "
                f"peak RSS {r['jaxcirc']['peak_rss_mib']:.0f} / "
                f"{r['auto_circuit']['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    if not args.quick:
        sys.path.insert(0, str(HERE))
        from _common import write_section

        write_section("bench_eap_auto_circuit", markdown(results, args))
    worst = min(r["spearman_abs"] for r in results)
    if worst < MIN_RANK_CORRELATION:
        print(f"rank correlation {worst:.6f} < {MIN_RANK_CORRELATION}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
