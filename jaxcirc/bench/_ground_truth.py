"""The ground-truth scorecard: every discovery method on every tracr case, scored.

For each case of `jaxcirc.tasks.TRACR_CASES` (compiled programs whose circuit is known; Lindner
et al. 2023, as in InterpBench, Gupta et al. 2024) and each method, the edge scores are compared
with the true edges: edge and node AUROC, SHD of the top-`k` circuit at the true edge count `k`,
that circuit's faithfulness, and the wall time. Every method sees the same model, the same
clean/corrupt inputs and the same metric:

- categorical outputs: the logit difference between the clean and the corrupted output value,
  averaged over the positions where they differ (1 at the clean model, scaled below);
- numerical outputs: the output projected on the clean-minus-corrupt direction.

Both are normalised to 1 on the clean run and 0 on the corrupted run, so attribution methods
get a non-zero gradient. ACDC minimises the divergence from the clean model (KL for categorical
outputs, squared error for numerical ones); learned masks minimise `1 - metric`. The methods are
values (`jaxcirc.methods.EAP()`, ...) run by `jaxcirc.methods.discover`; each returns a
`Circuit` whose `Scores` are ranked against the true `Circuit`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import atomic_write
from ..graph import Circuit, EdgeMask, Scores, graph
from ..metrics import bind
from ..metrics._circuit import auroc, faithfulness, shd


@dataclasses.dataclass(frozen=True)
class Problem:
    """One scorecard case: model, inputs, metric, divergence and the true `Circuit`."""

    name: str
    model: object
    clean: jnp.ndarray
    corrupt: jnp.ndarray
    metric: Callable
    divergence: Callable
    truth: Circuit
    ablation: str

    def shortfall(self, logits, clean_logits):
        """`1 - metric`: the learned masks' loss (KL from the clean run has no gradient at
        the full model, so the masks would learn nothing until edges fall away)."""
        del clean_logits
        return 1.0 - self.metric(logits)


def _numerical(logits, y_corrupt, direction, scale):
    return ((logits[..., 1:, 0] - y_corrupt) * direction).mean() / scale


def _numerical_divergence(logits, clean):
    return ((logits[..., 1:, 0] - clean[..., 1:, 0]) ** 2).mean()


def _gap(logits, a, b, differ, count):
    lp = jax.nn.log_softmax(logits[..., 1:, :].astype(jnp.float32), -1)
    gap = jnp.take_along_axis(lp, a[..., None], -1) - jnp.take_along_axis(lp, b[..., None], -1)
    return (gap[..., 0] * differ).sum() / count


def _categorical(logits, a, b, differ, count, bottom, scale):
    return (_gap(logits, a, b, differ, count) - bottom) / scale


def _categorical_divergence(logits, clean):
    p = jax.nn.log_softmax(clean[..., 1:, :].astype(jnp.float32), -1)
    q = jax.nn.log_softmax(logits[..., 1:, :].astype(jnp.float32), -1)
    return (jnp.exp(p) * (p - q)).sum(-1).mean()


def _positions_metric(clean_logits, ablated_logits, output: str):
    """The normalised task metric and the divergence described in the module docstring (module
    functions with their arrays bound, so every case shares the compiled programs)."""
    if output == "numerical":
        y_clean, y_corrupt = clean_logits[..., 1:, 0], ablated_logits[..., 1:, 0]
        direction = y_clean - y_corrupt
        scale = jnp.maximum((direction**2).mean(), 1e-12)
        metric = bind(_numerical, y_corrupt=y_corrupt, direction=direction, scale=scale)
        return metric, _numerical_divergence
    a = jnp.argmax(clean_logits[..., 1:, :], -1)
    b = jnp.argmax(ablated_logits[..., 1:, :], -1)
    differ = (a != b).astype(jnp.float32)
    count = jnp.maximum(differ.sum(), 1.0)
    top, bottom = (_gap(x, a, b, differ, count) for x in (clean_logits, ablated_logits))
    scale = jnp.where(top == bottom, 1.0, top - bottom)
    metric = bind(_categorical, a=a, b=b, differ=differ, count=count, bottom=bottom, scale=scale)
    return metric, _categorical_divergence


def problem(name: str, n: int = 32, seed: int = 0, ablation: str = "zero") -> Problem:
    """The scorecard case `name`: cached converted model, `n` input pairs, metric.

    With `ablation="zero"` (the default) a removed edge carries nothing, so every edge the
    compiled program uses matters, and the truth is the circuit's edges together with its
    constant edges (those carrying tracr's `one` direction and BOS attention). With
    `"corrupt"` an edge matters only where the counterfactual changes what it carries (a
    same-length resample never changes a length or an index), and the truth is the edges.
    """
    from ..graph import ablation_values, masked_logits
    from ..io._tracr import tracr_case

    model, circuit, info = tracr_case(name)
    clean, corrupt = (jnp.asarray(x) for x in info.sample(n, seed=seed))
    g = graph(model)
    ablated = ablation_values(model, clean, corrupt, ablation, g)
    none = EdgeMask(jnp.zeros(g.valid.shape), g)
    clean_logits = jax.vmap(model)(clean)
    metric, divergence = _positions_metric(
        clean_logits, masked_logits(model, clean, none, ablated, g), info.case.output
    )
    truth = circuit.on(g, constant=ablation == "zero")
    return Problem(name, model, clean, corrupt, metric, divergence, truth, ablation)


def methods_for(p: Problem) -> dict:
    """The scorecard's method values for problem `p` (same inputs, metric and ablation)."""
    from ..methods import ACDC, EAP, EAPIG, CircuitLasso, EdgePatching, LearnedMask

    a = p.ablation
    return {
        "EAP": EAP(ablation=a),
        "EAP-IG (inputs)": EAPIG(steps=5, ablation=a),
        "EAP-IG (inputs, m=50)": EAPIG(steps=50, ablation=a),
        "EAP-IG (activations)": EAPIG(steps=5, variant="activations", ablation=a),
        "ACDC": ACDC(threshold=1e-4, divergence=p.divergence, ablation=a),
        "learned mask": LearnedMask(penalty=1e-2, steps=300, divergence=p.shortfall, ablation=a),
        "edge patching": EdgePatching(ablation=a),
        # observational: clean and corrupt inputs as samples; the dependency skeleton (every
        # edge the program uses is in the zero-ablation truth) with λ chosen on held-out
        # examples (no knowledge of the truth; the top-k circuit is scored like every method's)
        "CircuitLasso": CircuitLasso(select="heldout", target="skeleton"),
    }


METHODS = (
    "EAP", "EAP-IG (inputs)", "EAP-IG (inputs, m=50)", "EAP-IG (activations)", "ACDC",
    "learned mask", "edge patching", "CircuitLasso",
)  # fmt: skip


def score(p: Problem, method: str, scores: Scores, seconds: float) -> dict:
    """The scorecard row of `scores` (a method's circuit's scores) on problem `p`."""
    k = len(p.truth)
    circuit = scores.top(k)
    return {
        "case": p.name,
        "method": method,
        "ablation": p.ablation,
        "edge_auroc": auroc(scores, p.truth),
        "node_auroc": _node_auroc(scores.nodes(), p.truth),
        "shd_at_k": shd(circuit, p.truth),
        "true_edges": k,
        "n_edges": scores.graph.n_edges,
        "faithfulness": float(
            faithfulness(p.model, p.clean, p.corrupt, p.metric, circuit, ablation=p.ablation)
        ),
        "seconds": round(seconds, 3),
    }


def _node_auroc(nodes: Scores, truth: Circuit) -> float | None:
    kept = np.asarray(truth.mask, bool).any(1)[truth.graph.valid.any(1)]
    if kept.all() or not kept.any():
        return None  # every (or no) node is in the circuit: a node ROC is undefined
    return auroc(nodes, truth)


def scorecard(
    cases: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    n: int = 32,
    seed: int = 0,
    ablation: str = "zero",
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Run `methods` on `cases` (default: all of both).

    **Returns:** `(records, found)`: one record per (case, method), and per case the true
    edges with each method's top-`k` circuit (for `write`'s figures)."""
    from ..methods import discover
    from ..tasks._tracr_cases import TRACR_CASE_NAMES

    cases = list(TRACR_CASE_NAMES if cases is None else cases)
    names = list(METHODS if methods is None else methods)
    for m in names:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choices: {list(METHODS)}")
    records, found = [], {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases) * len(names), desc="scorecard", unit="run")
    for name in cases:
        p = problem(name, n, seed, ablation)
        values = methods_for(p)
        for m in names:
            discover(values[m], p.model, p)  # compile, then time a second run
            start = time.perf_counter()
            scores = jax.block_until_ready(discover(values[m], p.model, p).scores)
            records.append(score(p, m, scores, time.perf_counter() - start))
            found.setdefault(name, (p.truth, {}))[1][m] = scores.top(len(p.truth))
            if bar is not None:
                bar.set_postfix_str(f"{name}: {m}")
                bar.update()
    if bar is not None:
        bar.close()
    return records, found


def markdown(records: list[dict]) -> str:
    """The scorecard as a Markdown table, plus the mean of each method over the cases."""

    def fmt(x):
        return "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    cols = ["case", "method", "edge_auroc", "node_auroc", "shd_at_k", "true_edges",
            "faithfulness", "seconds"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in records]
    lines += ["", "| method | mean edge AUROC | mean SHD at k | mean faithfulness | total s |",
              "|---|---|---|---|---|"]  # fmt: skip
    for m in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == m]
        lines.append(
            f"| {m} | {np.mean([r['edge_auroc'] for r in rows]):.3f} | "
            f"{np.mean([r['shd_at_k'] for r in rows]):.1f} | "
            f"{np.nanmean([r['faithfulness'] for r in rows]):.3f} | "
            f"{sum(r['seconds'] for r in rows):.2f} |"
        )
    return "\n".join(lines) + "\n"


def write(records: list[dict], out: str | Path, found: dict | None = None) -> list[Path]:
    """`out/scorecard.md`, `out/scorecard.json` and, given `found`, `out/circuits/<case>.png`."""
    out = Path(out)
    paths = [
        atomic_write(out / "scorecard.md", lambda t: Path(t).write_text(markdown(records))),
        atomic_write(
            out / "scorecard.json",
            lambda t: Path(t).write_text(json.dumps(records, indent=1) + "\n"),
        ),
    ]
    from ..viz._circuit import plot_circuit

    for case, (truth, circuits) in (found or {}).items():
        paths.append(
            plot_circuit(
                circuits,
                truth,
                out / "circuits" / f"{case}.png",
                title=f"{case}: top-k edges (k = true edge count)",
            )
        )
    return paths
