"""`jaxcirc discover`'s stage 5: a smaller model that computes the same, by interventional-risk
pruning checked with interchange-intervention accuracy."""

from __future__ import annotations

import numpy as np


def _default_site(model) -> str:
    last = model.cfg.n_layers - 1
    from ..methods._units import unit_sites

    mlp = f"blocks.{last}.mlp.hook_post"
    return mlp if mlp in unit_sites(model) else f"blocks.{last}.attn.hook_z"


def _abstraction(setup, args, figures, report, record):
    import jax

    from ..methods._abstraction_iia import abstraction_iia
    from ..methods._prune import prune_model
    from ..methods._units import unit_sites
    from ..models._site import nearest
    from ..viz._report import plot_curves

    report.section(
        "5. A smaller model that computes the same: interventional-risk pruning",
        "Interventional-risk pruning (Asiaee 2026) removes the units of a site whose removal "
        "changes the task loss least, folding each removed unit into the next layer as a "
        "function of the kept ones. Interchange-intervention accuracy (IIA) then checks the "
        "abstraction: kept units are swapped to their values on another prompt with "
        "probability p, in the model and in the abstraction, and IIA is how often the two "
        "still predict the same token.",
    )
    if args.no_abstraction:
        record["abstraction"] = {"ran": False, "reason": "--no-abstraction"}
        report.paragraph("Skipped (--no-abstraction).", note=True)
        return
    if setup.eval_tokens is None:
        reason = (
            "the prompts have different lengths or answer sets, and IIA reads one "
            "position for every prompt"
        )
        record["abstraction"] = {"ran": False, "reason": reason}
        report.paragraph(f"Not run on this task: {reason}.", note=True)
        return
    site = args.prune_site or _default_site(setup.model)
    sites = unit_sites(setup.model)
    if site not in sites:
        args.parser.error(
            f"argument --prune-site: {setup.name} has no site {site!r} with units"
            f"{nearest(site, sites)}; choose from {', '.join(sites)}"
        )
    key = jax.random.key(args.seed)
    res = prune_model(
        setup.model,
        setup.prune_tokens,
        labels=setup.prune_labels,
        sites=site,
        keep_fraction=args.keep,
        method="fold",
        key=key,
    )
    rep = res.replacements[0]
    ps = (0.1, 0.2, 0.5)
    out = abstraction_iia(
        setup.model,
        rep,
        setup.eval_tokens,
        p=ps,
        n_trials=args.trials,
        key=jax.random.fold_in(key, 1),
        position=setup.position,
        labels=setup.eval_labels,
    )
    kept = [int(i) for i in np.flatnonzero(np.asarray(rep.keep))]
    record["abstraction"] = {
        "ran": True,
        "site": site,
        "keep": args.keep,
        "kept_units": kept,
        "n_units": rep.n_units,
        "p": list(ps),
        "iia": [float(v) for v in out.iia],
        "trials": args.trials,
        "agreement": out.accuracy,
        "kl": out.kl,
        "accuracy_full": out.task_accuracy_full,
        "accuracy_abstraction": out.task_accuracy_abstraction,
        "n_params": [res.n_params_before, res.n_params_after],
    }
    png = plot_curves(
        {f"{site}, keep {len(kept)}/{rep.n_units}": (list(ps), out.iia)},
        figures / "iia.png",
        title="Interchange-intervention accuracy of the abstraction against the swap probability",
        x_label="swap probability p (per kept unit)",
        y_label="IIA (1 = same prediction)",
    )
    report.number(
        "units kept",
        f"{len(kept)} of {rep.n_units}",
        f"Units of {site} kept (indices {kept}); the others are folded away.",
    )
    report.number(
        "parameters",
        res.n_params_after,
        f"The compiled abstraction has this many parameters (the model: {res.n_params_before}).",
    )
    report.number(
        "agreement with the model",
        out.accuracy,
        "Without interventions, the "
        "abstraction predicts the model's token this often on held-out prompts.",
    )
    for p, v in zip(ps, out.iia):
        report.number(
            f"IIA at p = {p:g}",
            v,
            f"With each kept unit swapped with probability "
            f"{p:g}, model and abstraction agree this often ({args.trials} trials).",
        )
    report.figure(
        png,
        "IIA against the swap probability: an abstraction that captures the "
        "mechanism stays near 1 as more units are swapped.",
    )
