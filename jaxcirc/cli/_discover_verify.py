"""`jaxcirc discover`'s stage 4: whether a circuit is the mechanism (faithfulness and
completeness against size, the chosen circuit and its own logits against the model's)."""

from __future__ import annotations

import numpy as np

from ._discover_find import _k_composition
from ._discover_task import LABELS


def _curve_sizes(n: int) -> list[int]:
    return sorted({int(k) for k in np.round(np.geomspace(1, n, min(n, 32)))})


def _verification(setup, args, circuits, figures, report, record):
    import jax
    import jax.numpy as jnp

    from ..graph import EdgeMask, ablation_values, graph, masked_logits
    from ..metrics import faithfulness, top_n
    from ..viz._report import plot_circuits, plot_curves, plot_scatter

    model, task = setup.model, setup.task
    g = graph(model)
    sizes = _curve_sizes(int(g.valid.sum()))
    valid = jnp.asarray(g.valid, jnp.float32)
    curves, faith, compl = {}, {}, {}
    for name, circuit in circuits.items():
        if name == "acdc" or circuit.scores is None:
            continue
        tops = [top_n(circuit.scores, k) for k in sizes]
        rest = [EdgeMask(valid - c.values, g) for c in tops]
        f = np.asarray(faithfulness(model, task.clean, task.corrupt, task.metric, tops))
        c = 1.0 - np.asarray(faithfulness(model, task.clean, task.corrupt, task.metric, rest))
        curves[name] = {"faithfulness": f.tolist(), "completeness": c.tolist()}
        faith[LABELS[name]], compl[LABELS[name]] = (sizes, f), (sizes, c)
    points = {}
    if "acdc" in circuits:
        m = record["methods"]["acdc"]
        points = {"ACDC circuit": (m["n_edges"], m["faithfulness"])}
    ranked = "eap-ig" if "eap-ig" in curves else next(iter(curves), None)
    if ranked is None:
        chosen_name, chosen = "acdc", circuits["acdc"]
        rule = "ACDC's circuit (no scoring method ran)"
    else:
        f = np.asarray(curves[ranked]["faithfulness"])
        k = (
            sizes[int(np.argmax(f >= args.target_faithfulness))]
            if (f >= args.target_faithfulness).any()
            else sizes[-1]
        )
        chosen_name, chosen = ranked, top_n(circuits[ranked].scores, k)
        rule = (
            f"the smallest {LABELS[ranked]} top-n circuit with faithfulness ≥ "
            f"{args.target_faithfulness:g} (n = {k} of {len(g.edges())} edges)"
        )
    fp = (
        plot_curves(
            faith,
            figures / "faithfulness.png",
            points=points,
            reference=args.target_faithfulness,
            title="Faithfulness of the top-n edges of each method, against n",
            x_label="edges kept (n, log scale)",
            y_label="faithfulness (1 = full behaviour)",
            log_x=True,
        )
        if faith
        else None
    )
    cp = (
        plot_curves(
            compl,
            figures / "completeness.png",
            log_x=True,
            title="Completeness: behaviour lost when only the top-n edges are corrupted",
            x_label="edges corrupted (n, log scale)",
            y_label="completeness (1 = all of it lost)",
        )
        if compl
        else None
    )

    # the circuit's own logits against the model's, and against every edge corrupted
    ablated = ablation_values(model, task.clean, task.corrupt, "corrupt", g)
    full = jax.vmap(model)(task.clean)
    own = masked_logits(model, task.clean, chosen, ablated, g)
    none = masked_logits(model, task.clean, EdgeMask(jnp.zeros_like(valid), g), ablated, g)
    per = getattr(task.metric, "per_example", None)
    read = setup.read
    agree = float(
        (np.asarray(full)[:, read].argmax(-1) == np.asarray(own)[:, read].argmax(-1)).mean()
    )
    logp, logq = (np.asarray(jax.nn.log_softmax(x[:, read], -1)) for x in (full, own))
    kl = float((np.exp(logp) * (logp - logq)).sum(-1).mean())
    faith_c = float(faithfulness(model, task.clean, task.corrupt, task.metric, chosen))
    path = _k_composition(chosen)
    record["circuit"] = {
        "method": chosen_name,
        "rule": rule,
        "edges": [list(e) for e in chosen.edges()],
        "n_edges": len(chosen),
        "faithfulness": faith_c,
        "completeness": 1.0
        - float(
            faithfulness(
                model, task.clean, task.corrupt, task.metric, EdgeMask(valid - chosen.values, g)
            )
        ),
        "k_composition": [list(e) for e in path],
        "top1_agreement": agree,
        "kl": kl,
    }
    record["curves"] = {"sizes": sizes, **curves}
    sp = None
    if per is not None:
        x, y0, y1 = (np.asarray(per(v)) for v in (full, own, none))
        record["circuit"]["per_prompt"] = {
            "model": x.tolist(),
            "circuit": y0.tolist(),
            "no_edges": y1.tolist(),
        }
        sp = plot_scatter(
            {"circuit's edges only": (x, y0), "every edge corrupted": (x, y1)},
            figures / "circuit_vs_model.png",
            title="The circuit's own metric against the model's, one point per prompt",
            x_label=f"model: {setup.metric_text}",
            y_label="circuit (same metric)",
        )
    # scoring methods are drawn at the chosen circuit's size, so the panels compare
    drawn = {
        (f"{LABELS[n]} top {len(chosen)}" if n in curves else LABELS[n]): (
            top_n(c.scores, len(chosen)) if n in curves else c
        )
        for n, c in circuits.items()
    }
    # every method's K-composition edges are highlighted in its panel
    fig = plot_circuits(
        drawn,
        figures / "circuits.png",
        highlight=sorted(
            {tuple(e) for n in circuits for e in record["methods"][n]["k_composition"]} | set(path)
        ),
        highlight_label="head → later head's key (K-composition)",
        title=f"Circuits found by each method; the chosen circuit is "
        f"{LABELS[chosen_name]} top {len(chosen)}",
    )

    report.figure(
        fig,
        "The circuits drawn by layer: the embedding at the bottom, the logits "
        "on top; EAP and EAP-IG at the chosen circuit's size. Orange: edges from a head to "
        "a later head's key input; on the "
        "induction model, the previous-token head L0H2 feeding the induction heads' "
        "keys.",
    )
    report.section(
        "4. Is it the mechanism? Verifying the circuit",
        f"The chosen circuit is {rule}. It is verified by running the model with only its "
        "edges (every other edge carries its corrupt value) and comparing with the model.",
    )
    report.number(
        "edges in the circuit",
        len(chosen),
        f"Of the {len(g.edges())} edges of the graph, the circuit keeps these.",
    )
    report.number(
        "faithfulness",
        faith_c,
        "With only these edges the model keeps this share of "
        "its clean − corrupt metric gap (1 = all of it, 0 = none).",
    )
    report.number(
        "completeness",
        record["circuit"]["completeness"],
        "Corrupting only these edges loses this share of the behaviour (1 = the "
        "circuit carries all of it).",
    )
    report.number(
        "top-1 agreement",
        agree,
        "At the positions the metric reads, the circuit's "
        "top prediction equals the model's this often.",
    )
    report.number(
        "KL(model ‖ circuit)",
        kl,
        "Mean divergence of the circuit's next-token "
        "distribution from the model's at those positions, in nats (0 = identical).",
    )
    report.number(
        "head → later key edges",
        len(path),
        "K-composition (on the induction task: "
        "previous-token head → induction head's key) in the circuit: "
        + (", ".join(f"{s} → {t}" for s, t in path) or "none")
        + ".",
    )
    for png, caption in (
        (
            fp,
            "Faithfulness against the number of top-scored edges kept; the "
            "star is ACDC's circuit, the dashed line the target.",
        ),
        (cp, "Completeness against the number of top-scored edges corrupted."),
        (
            sp,
            "Per prompt: the metric of the circuit (edges outside it "
            "corrupted) and of the fully corrupted graph against the model's; "
            "points on the diagonal agree exactly.",
        ),
    ):
        if png is not None:
            report.figure(png, caption)
