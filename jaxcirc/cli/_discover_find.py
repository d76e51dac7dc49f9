"""`jaxcirc discover`'s stages 2 and 3: where the behaviour is computed (activation patching of
heads and of the residual stream per position) and which edges carry it (EAP, EAP-IG, ACDC and
CircuitLasso on the shared graph)."""

from __future__ import annotations

import time

import numpy as np

from ._discover_task import LABELS
from ._patch import _finite


def _restored(values, clean: float, corrupt: float) -> np.ndarray:
    gap = clean - corrupt
    return (np.asarray(values) - corrupt) / gap if abs(gap) > 1e-6 else np.asarray(values) * np.nan


def _patching(setup, args, figures, report, record):
    from ..patching import sweep
    from ..viz._heatmap import heatmap
    from ..viz._report import wrap_title

    model, task = setup.model, setup.task
    clean, corrupt = record["task"]["metric_clean"], record["task"]["metric_corrupt"]
    heads = _restored(
        sweep(model, task.clean, task.corrupt, task.metric, "z", "head"), clean, corrupt
    )
    positions = _restored(
        sweep(model, task.clean, task.corrupt, task.metric, "resid_pre", "position"), clean, corrupt
    )
    layers = [f"L{i}" for i in range(heads.shape[0])]
    title = (
        f"Head patching: fraction of the metric restored by each head's clean output, {setup.name}"
    )
    heat = heatmap(
        heads,
        path=figures / "head_patching.png",
        x_labels=[f"H{h}" for h in range(heads.shape[1])],
        y_labels=layers,
        title=wrap_title(title, 4.5),
        x_title="head",
        y_title="layer",
        colorbar_label="fraction restored",
    )
    title = (
        "Position patching: fraction restored by the clean residual stream (resid_pre) "
        "at one position"
    )
    pos_png = heatmap(
        positions,
        path=figures / "position_patching.png",
        x_labels=setup.labels,
        y_labels=layers,
        title=wrap_title(title, 0.3 * len(setup.labels) + 2.5),
        x_title=setup.position_title,
        y_title="layer (resid_pre of)",
        colorbar_label="fraction restored",
        annotate=len(setup.labels) <= 8,
    )
    flat = np.nanargmax(np.where(np.isfinite(heads), heads, -np.inf))
    top = np.unravel_index(flat, heads.shape)
    record["patching"] = {
        "head": {"values": _finite(heads.tolist()), "layers": layers},
        "position": {"values": _finite(positions.tolist()), "labels": setup.labels},
        "top_head": f"L{top[0]}H{top[1]}",
        "top_head_restored": float(heads[top]),
    }
    report.section(
        "2. Where is it? Activation patching",
        "Each cell runs the corrupt prompts with one unit set to its value on the clean "
        "prompts and reads the metric, as a fraction of the clean − corrupt gap: 1 means that "
        "unit alone restores the behaviour, 0 that it restores nothing.",
    )
    report.number(
        "most restoring head",
        record["patching"]["top_head"],
        "Patching this head's output alone moves the metric furthest towards clean.",
    )
    report.number(
        "its fraction restored",
        heads[top],
        "The share of the clean − corrupt gap that this one head restores.",
    )
    report.figure(
        heat,
        "Per-head map (site z): the heads whose clean output restores the "
        "behaviour. On the induction model these are the layer-1 induction heads.",
    )
    report.figure(
        pos_png,
        "Per-position map of the residual stream before each layer. In the "
        "induction task only the first copy is corrupted, so one clean position "
        "restores little; copying happens through several positions at once.",
    )


def _methods(setup, args, report, record):
    from ..methods import ACDC, EAP, EAPIG, CircuitLasso, discover
    from ..metrics import completeness, faithfulness

    model, task = setup.model, setup.task
    values = {
        "eap": EAP(),
        "eap-ig": EAPIG(steps=args.ig_steps),
        "acdc": ACDC(threshold=args.acdc_threshold),
        "circuit-lasso": CircuitLasso(),
    }
    circuits, rows = {}, []
    record["methods"] = {}
    for name in args.methods:
        start = time.perf_counter()
        circuit = discover(values[name], model, task)
        seconds = time.perf_counter() - start
        circuits[name] = circuit
        f = float(faithfulness(model, task.clean, task.corrupt, task.metric, circuit))
        c = float(completeness(model, task.clean, task.corrupt, task.metric, circuit))
        path = _k_composition(circuit)
        record["methods"][name] = {
            "edges": [list(e) for e in circuit.edges()],
            "n_edges": len(circuit),
            "faithfulness": f,
            "completeness": c,
            "k_composition": [list(e) for e in path],
            "seconds": round(seconds, 3),
        }
        rows.append([LABELS[name], len(circuit), f, c, len(path), f"{seconds:.1f}"])
    report.section(
        "3. Which edges? Four circuit-discovery methods on one graph",
        "Every method works on the same graph: sources (the embedding, each head) write to "
        "the residual stream, targets (each head's query, key and value input, the logits) "
        "read it, and an edge joins each source to every later target. EAP and EAP-IG keep "
        "every edge of positive attributed effect; ACDC greedily removes edges whose removal "
        "raises the KL from the model by less than its threshold; CircuitLasso keeps the edges "
        "of a sparse regression of each target's input on the sources.",
    )
    report.table(
        ["method", "edges", "faithfulness", "completeness", "head → later key edges", "seconds"],
        rows,
        "Faithfulness: the share of the clean − corrupt metric gap kept with only the circuit's "
        "edges (the rest carry corrupt values). Completeness: the share lost when only the "
        "circuit's edges are corrupted. Head → later key edges: K-composition, the previous-"
        "token → induction-head path on the induction task.",
    )
    return circuits


def _k_composition(circuit) -> list[tuple[str, str]]:
    """The circuit's edges from a head to a later head's key input (K-composition: on the
    induction task, previous-token head → induction head; Olsson et al. 2022)."""
    return [(s, t) for s, t in circuit.edges() if s.startswith("L") and t.endswith(".k")]
