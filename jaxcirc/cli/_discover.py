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

from ._discover_abstraction import _abstraction
from ._discover_find import _methods, _patching
from ._discover_task import METHODS, TASKS, _Setup
from ._discover_verify import _verification
from ._patch import _finite, choice
from ._prune import keep_fraction, probability

SMALL = 10_000_000  # parameters: below this, compilation dominates and XLA's passes are skipped


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
