"""`jaxcirc discover`: the library's story on one behaviour, as an HTML report and JSON.

By default it runs on the embedded induction model (`jaxcirc.zoo.induction_model`, 2 layers,
attention only) and its task (clean `[A, A]`, corrupt `[A', A]`; metric: the mean
log-probability of the induction token over the second half), with no download:

1. the task and its metric, clean and corrupt;
2. activation patching of every head's output (`z`) and of the residual stream per position
   (Meng et al. 2022; Heimersheim & Nanda 2024);
3. circuits on the shared edge graph by EAP (Syed et al. 2023), EAP-IG (Hanna et al. 2024),
   ACDC (Conmy et al. 2023) and CircuitLasso (Yin et al. 2026);
4. verification: faithfulness and completeness against circuit size (Wang et al. 2023), the
   chosen circuit (the smallest EAP-IG circuit reaching `--target-faithfulness`) and its own
   logits against the model's;
5. an abstraction by interventional-risk pruning with its interchange-intervention accuracy
   (Asiaee 2026, arXiv 2602.24266).

Writes `OUT/report.html` (self-contained: figures embedded), `OUT/report.json` and the
figures as `OUT/figures/*.png`. `--model PATH` (anything `jaxcirc.load` reads) and `--task`
(`induction` on random token ids; `ioi` or `greater-than` with the model's tokenizer) run it
on your model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np

from ._patch import _finite, choice
from ._prune import keep_fraction, probability

METHODS = ("eap", "eap-ig", "acdc", "circuit-lasso")
LABELS = {"eap": "EAP", "eap-ig": "EAP-IG", "acdc": "ACDC", "circuit-lasso": "CircuitLasso"}
TASKS = ("induction", "ioi", "greater-than")
CALIBRATION = 16  # induction prompts the pruning is calibrated on, at least
SMALL = 10_000_000  # parameters: below this, compilation dominates and XLA's passes are skipped
METRICS = {
    "induction": "mean log-probability of the induction token over the second half",
    "ioi": "logit difference, indirect object minus subject, at the last token",
    "greater-than": "probability of the years above the start year minus those at or below it",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "discover",
        help="the whole story on one behaviour: patching, four circuits, verification, "
        "an abstraction; an HTML report and JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--model", default=None, help="a model for jaxcirc.load (default: the embedded one)")
    add("--task", type=choice("task", TASKS), default="induction", help=", ".join(TASKS))
    add("--tokenizer", default=None, help="for ioi / greater-than (default: the --model path)")
    add("--n-prompts", type=int, default=16, help="clean/corrupt prompt pairs (default 16)")
    add("--half-len", type=int, default=8, help="induction: tokens in each half (default 8)")
    add("--seed", type=int, default=0, help="seed of the prompts and the IIA trials")
    add(
        "--method",
        action="append",
        type=choice("method", METHODS),
        default=None,
        help=f"discovery method, repeatable: {', '.join(METHODS)} (default: all)",
    )
    add("--ig-steps", type=int, default=5, help="EAP-IG integration steps (default 5)")
    add("--acdc-threshold", type=float, default=0.05, help="ACDC's tau (default 0.05)")
    add(
        "--target-faithfulness",
        type=probability,
        default=0.9,
        help="the chosen circuit is the smallest EAP-IG top-n reaching it (default 0.9)",
    )
    add(
        "--prune-site",
        default=None,
        help="site pruned for the abstraction (default: the last layer's MLP neurons, or its "
        "heads in an attention-only model)",
    )
    add("--keep", type=keep_fraction, default=0.5, help="fraction of units kept (default 0.5)")
    add("--trials", type=int, default=1000, help="IIA trials per swap probability (default 1000)")
    add("--no-abstraction", action="store_true", help="skip the pruning step")
    add("--out", type=Path, default=Path("discover-out"), help="output folder")
    add("--no-progress", action="store_true", help="hide progress output")
    parser.set_defaults(run=run, parser=parser)
    return parser


def command_line(args) -> str:
    """The exact `jaxcirc discover ...` command that reproduces a run, every setting spelled."""
    words = ["jaxcirc", "discover", "--task", args.task]
    for flag in ("model", "tokenizer", "prune_site"):
        if getattr(args, flag) is not None:
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for flag in (
        "n_prompts",
        "half_len",
        "seed",
        "ig_steps",
        "acdc_threshold",
        "target_faithfulness",
        "keep",
        "trials",
    ):
        words += [f"--{flag.replace('_', '-')}", f"{getattr(args, flag):g}"]
    for m in args.methods:
        words += ["--method", m]
    if args.no_abstraction:
        words.append("--no-abstraction")
    words += ["--out", str(args.out)]
    return shlex.join(words)


# ---------------------------------------------------------------------------------------------
# The model and the task
# ---------------------------------------------------------------------------------------------


class _Setup:
    """The model, the task (clean, corrupt, metric), position labels, and the data the
    abstraction is calibrated and evaluated on."""

    def __init__(self, args):
        import jax.numpy as jnp

        from .. import zoo
        from .._finite import check_finite_weights

        parser = args.parser
        if args.model is None:
            self.model, self.name = zoo.induction_model(), "embedded induction_attn_only_2l"
        else:
            from .. import load

            self.model, self.name = load(args.model), str(args.model)
        check_finite_weights(self.model, f"model {self.name}")
        cfg = self.model.cfg
        self.metric_text = METRICS[args.task]
        if args.task == "induction":
            limit = min(cfg.n_ctx, cfg.d_vocab) // 2
            if not 2 <= args.half_len <= limit:
                parser.error(
                    f"argument --half-len: need 2..{limit} for this model (n_ctx={cfg.n_ctx}, "
                    f"d_vocab={cfg.d_vocab}); got {args.half_len}"
                )
            task = zoo.induction_task(args.n_prompts, args.half_len, args.seed, d_vocab=cfg.d_vocab)
            held = zoo.induction_task(
                args.n_prompts, args.half_len, args.seed + 1, d_vocab=cfg.d_vocab
            )
            L = args.half_len
            self.labels = [f"{1 + i // L}:A{i % L}" for i in range(2 * L)]
            self.position_title = "position (copy:token; copy 1 differs in the corrupt run)"
            weights = task.metric.weights[None] > 0
            # calibration prompts of the pruning (folding needs enough rows) and their labels:
            # the next token wherever the metric reads, else ignored (-1)
            cal = zoo.induction_task(
                max(args.n_prompts, CALIBRATION), L, args.seed + 2, d_vocab=cfg.d_vocab
            )
            self.prune_tokens = cal.clean
            self.prune_labels = jnp.where(weights, cal.metric.targets, -1)
            self.eval_tokens, self.eval_labels = held.clean, held.clean[:, -1]
            self.position = -2  # the last predicted position: it predicts the last token
            self.read = np.asarray(weights[0])  # positions the metric reads
        else:
            from .. import tasks
            from ..io import load_tokenizer

            source = args.tokenizer or args.model
            if source is None:
                parser.error(
                    f"argument --task: {args.task!r} needs a tokenizer; give --model PATH "
                    "(a Hugging Face folder or .gguf) or --tokenizer PATH, or use --task induction"
                )
            tokenizer = load_tokenizer(source)
            make = {"ioi": tasks.ioi, "greater-than": tasks.greater_than}[args.task]
            task = make(tokenizer, args.n_prompts, seed=args.seed)
            self.labels = list(task.labels) or [str(i) for i in range(task.clean.shape[1])]
            self.position_title = "position (token of the first clean prompt)"
            lengths = np.asarray(task.lengths)
            same = bool((lengths == lengths[0]).all())
            answer = np.asarray(task.answer)
            self.position = -1
            self.read = np.zeros(task.clean.shape[1], bool)
            self.read[-1] = True
            if same and answer.ndim == 1:
                labels = np.full(task.clean.shape, -1, np.int32)
                labels[:, -1] = answer
                self.prune_tokens, self.prune_labels = task.clean, jnp.asarray(labels)
                self.eval_tokens, self.eval_labels = task.clean, jnp.asarray(answer)
            else:  # the abstraction reads one position for every prompt
                self.prune_labels = self.eval_tokens = self.eval_labels = None
                self.prune_tokens = None
        if args.n_prompts < 2:
            parser.error(f"argument --n-prompts: need at least 2; got {args.n_prompts}")
        self.task = task


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def run(args) -> int:
    import equinox as eqx
    import jax

    parser = args.parser
    for name, low in (("ig_steps", 1), ("trials", 1)):
        if getattr(args, name) < low:
            parser.error(
                f"argument --{name.replace('_', '-')}: need at least {low}; "
                f"got {getattr(args, name)}"
            )
    if args.acdc_threshold < 0:
        parser.error(f"argument --acdc-threshold: need >= 0; got {args.acdc_threshold}")
    args.methods = list(dict.fromkeys(args.method or METHODS))
    command = command_line(args)
    say = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    timing = {}

    def lap(stage):
        timing[stage] = round(time.perf_counter() - start - sum(timing.values()), 3)
        say(f"jaxcirc discover: {stage} done ({timing[stage]:.1f}s)")

    setup = _Setup(args)
    arrays = jax.tree.leaves(eqx.filter(setup.model, eqx.is_array))
    small = sum(x.size for x in arrays) < SMALL
    previous = jax.config.read("jax_disable_most_optimizations")
    # a small model runs in milliseconds and compiles in seconds: skip XLA's slow passes
    jax.config.update("jax_disable_most_optimizations", previous or small)
    try:
        return _run(args, setup, command, say, start, timing, lap)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def _run(args, setup, command, say, start, timing, lap) -> int:
    import equinox as eqx
    import jax

    from .. import __version__
    from .._atomic import atomic_write
    from .._finite import check_finite
    from ..viz._report import Report

    task, model = setup.task, setup.model
    score = eqx.filter_jit(lambda m, t, metric: metric(jax.vmap(m)(t)))
    clean = float(score(model, task.clean, task.metric))
    corrupt = float(score(model, task.corrupt, task.metric))
    check_finite({"clean": clean, "corrupt": corrupt}, "metric of the task")
    figures = args.out / "figures"
    record = {
        "jaxcirc_version": __version__,
        "command": command,
        "model": setup.name,
        "task": {
            "name": args.task,
            "metric": setup.metric_text,
            "metric_clean": clean,
            "metric_corrupt": corrupt,
            "n_prompts": int(task.clean.shape[0]),
            "seq": int(task.clean.shape[1]),
        },
        "xla_optimizations": not jax.config.read("jax_disable_most_optimizations"),
    }
    report = Report(
        f"jaxcirc discover: {args.task} on {setup.name}",
        command,
        "The library's story on one behaviour: the task, where it is computed (patching), "
        "which edges carry it (four discovery methods), whether that circuit is the mechanism "
        "(faithfulness, completeness, its own logits), and a smaller model that computes the "
        "same (pruning, checked by interchange interventions).",
    )
    report.section(
        "1. The task and its metric",
        f"{task.clean.shape[0]} clean/corrupt prompt pairs of {task.clean.shape[1]} "
        f"tokens. Metric: the {setup.metric_text}.",
    )
    report.number("metric, clean", clean, "The metric on the clean prompts: the behaviour.")
    report.number(
        "metric, corrupt", corrupt, "The metric on the corrupt prompts, where the cue is removed."
    )
    report.number(
        "gap",
        clean - corrupt,
        "Clean minus corrupt: the behaviour every later "
        "fraction (restored, faithfulness, completeness) is measured against.",
    )
    if abs(clean - corrupt) < 1e-6:
        raise ValueError(
            f"the metric is {clean:.6g} on both the clean and the corrupt prompts: there is no "
            f"behaviour to find a circuit for (try another --task or more --n-prompts)"
        )
    lap("task")
    _patching(setup, args, figures, report, record)
    lap("patching")
    circuits = _methods(setup, args, report, record)
    lap("discovery")
    _verification(setup, args, circuits, figures, report, record)
    lap("verification")
    _abstraction(setup, args, figures, report, record)
    lap("abstraction")
    timing["total"] = round(time.perf_counter() - start, 3)
    record["timing_s"] = timing
    report.section(
        "Timing", "Wall-clock seconds of each stage on this machine (compilation included)."
    )
    report.table(["stage", "seconds"], [[k, v] for k, v in timing.items()])
    out = args.out
    js = atomic_write(
        out / "report.json",
        lambda t: Path(t).write_text(json.dumps(_clean(record), indent=1) + "\n"),
    )
    html = report.write(out / "report.html")
    c = record["circuit"]
    print(
        f"jaxcirc discover: {setup.name}, task {args.task}; metric clean {clean:.3f}, "
        f"corrupt {corrupt:.3f}"
    )
    print(
        f"circuit: {c['n_edges']} edges ({c['rule']}), faithfulness {c['faithfulness']:.3f}, "
        f"completeness {c['completeness']:.3f}"
    )
    print(
        "K-composition edges: " + (", ".join(f"{s}->{t}" for s, t in c["k_composition"]) or "none")
    )
    print(f"wrote {html} and {js} in {timing['total']:.1f}s")
    return 0


def _clean(x):
    """`x` with NumPy values as Python ones and non-finite floats as `None` (strict JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _finite(float(x))
    return x
