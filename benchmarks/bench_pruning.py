"""Interventional-risk pruning (Asiaee 2026, arXiv 2602.24266; METHODS.md §1.8–1.9): the
reproduction of issue 6 on the zoo's digits MLP and MLP induction transformer (CPU).

(a) Digits: `jaxcirc.zoo.digits_mlp()` (64 → 128 → 128 → 10), site `hidden.1` (the
penultimate layer, as in the author's follow-up on an MNIST MLP), calibration = the training
split (1297 images), evaluation = the test split (500). Curvature: the exact Gauss–Newton
diagonal of the task cross-entropy (`unit_curvature(..., method="ggn")`; `hidden.1` feeds a
linear softmax readout, so the GGN is the exact Hessian diagonal, checked against
`method="exact"`), plus the KL-to-the-full-model loss (`g = 0`) for the constant method.

(b) Induction: `jaxcirc.zoo.induction_mlp_model()` (2 layers, 4 heads of 16, 256 GELU
neurons), each of the sites `blocks.{l}.mlp.hook_post` (neurons) and `blocks.{l}.attn.hook_z`
(heads as units of 16 coordinates) pruned on its own. Calibration: `induction_task(128, 16,
seed=0)`, clean prompts, labels = the next token at the second-half positions 16..30 (the
others ignored), loss = task cross-entropy summed over those positions; rows of the pruning
arrays are (prompt, position) pairs, so a constant is one value for every position. The
curvature is the Monte-Carlo Fisher (16 labels sampled from the model per prompt, unbiased
for the GGN): the exact GGN would take one backward per logit (32 × 64) per prompt.
Evaluation: `induction_task(512, 16, seed=1234)`; IIA read at position 30 (predicting the
last token of the repeat), task accuracy and KL over all second-half positions 16..30.

Methods (`jaxcirc.methods._risk_pruning.prune`, one-shot unless stated): `constant` (damped,
the default), `constant, undamped` (`damping=None, clip=False`: the follow-up code's formula),
`constant, KL loss` (digits), `fold`, `fold, iterative` (digits; re-scored every tenth of the
removals), `auto`, `variance`, `random` (digits: mean of 5 seeds). IIA:
`jaxcirc.methods._abstraction_iia.abstraction_iia` (base/source pairs, each kept unit swapped
with probability p, the same trials for every p). Each part runs in its own process (peak RSS
its own). Usage: `python benchmarks/bench_pruning.py [--quick] [--parts digits,induction]
[--trials N] [--ind-trials N]`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PARTS = ("digits", "induction")
KEEPS = (0.75, 0.5, 0.25, 0.125, 0.0625)
PS = (0.1, 0.2, 0.5)
DIGITS_SITE = "hidden.1"
HALF = 16
READ_POS = 2 * HALF - 2  # IIA read-out: the prediction of the repeat's last token
N_CAL, N_EVAL, FISHER_PROBES = 128, 512, 16
RANDOM_SEEDS = 5
METHOD_ORDER = (
    "constant",
    "constant, undamped",
    "constant, KL loss",
    "fold",
    "fold, iterative",
    "auto",
    "variance",
    "random",
)
CIF = {  # METHODS.md §1.9: the follow-up's MNIST MLP (512 units), IIA at p = 0.1 / 0.2 / 0.5
    "fold": {
        0.75: (0.989, 0.973, 0.695),
        0.5: (0.984, 0.952, 0.558),
        0.25: (0.956, 0.901, 0.484),
        0.125: (0.929, 0.858, 0.462),
        0.0625: (0.824, 0.728, 0.409),
    },
    "variance": {
        0.75: (0.997, 0.992, 0.897),
        0.5: (0.990, 0.969, 0.682),
        0.25: (0.917, 0.839, 0.493),
        0.125: (0.633, 0.578, 0.358),
        0.0625: (0.494, 0.447, 0.285),
    },
    "random": {0.5: (0.954, 0.895, 0.526), 0.125: (0.497, 0.450, 0.279)},
    "constant, undamped": {k: (0.10, 0.10, 0.10) for k in (0.75, 0.5, 0.25, 0.125, 0.0625)},
}


def methods(part: str) -> list[tuple[str, dict, str]]:
    """`(label, prune keyword arguments, curvature)`; curvature "ce" or "kl"."""
    out = [
        ("constant", {}, "ce"),
        ("constant, undamped", dict(damping=None, clip=False), "ce"),
        ("fold", dict(method="fold"), "ce"),
        ("auto", dict(method="auto"), "ce"),
        ("variance", dict(method="variance"), "ce"),
        ("random", dict(method="random"), "ce"),
    ]
    if part == "digits":
        out.insert(2, ("constant, KL loss", {}, "kl"))
        out.insert(4, ("fold, iterative", dict(method="fold", schedule="iterative"), "ce"))
    return out


# ---------------------------------------------------------------- (a) the digits MLP


def side_digits(args, workdir: Path) -> None:
    import jax
    import jax.numpy as jnp

    from jaxcirc import zoo
    from jaxcirc.methods._abstraction_iia import abstraction_iia
    from jaxcirc.methods._risk_pruning import prune
    from jaxcirc.methods._units import compile_abstraction, downstream, replace, unit_activations
    from jaxcirc.solvers._curvature import unit_curvature

    baseline = c.peak_rss_mib()
    model, data = zoo.digits_mlp(), zoo.digits_data()
    site = DIGITS_SITE
    t = time.perf_counter()
    a = unit_activations(model, data.x_train, site)
    fn = downstream(model, site)
    curv = {
        "ce": unit_curvature(fn, a, labels=data.y_train, method="ggn"),
        "kl": unit_curvature(fn, a, method="ggn"),
    }
    curvature_s = time.perf_counter() - t
    exact = unit_curvature(fn, a, labels=data.y_train, method="exact")
    ggn_vs_exact = float(jnp.abs(exact.curv - curv["ce"].curv).max())

    logits = jax.jit(jax.vmap(lambda m, x: m(x), in_axes=(None, 0)))
    keeps = (0.5, 0.125) if args.quick else KEEPS
    seeds = 1 if args.quick else RANDOM_SEEDS
    rows, prune_s, iia_s, compiled_err = [], 0.0, 0.0, 0.0
    for kf in keeps:
        for label, kw, loss in methods("digits"):
            runs = []
            for seed in range(seeds if label == "random" else 1):
                extra = dict(key=jax.random.key(seed)) if label == "random" else {}
                t = time.perf_counter()
                cv = curv[loss]
                rep = prune(a, cv.grad, cv.curv, kf, site=site, **kw, **extra)
                prune_s += time.perf_counter() - t
                t = time.perf_counter()
                res = abstraction_iia(
                    model, rep, data.x_test, p=PS, n_trials=args.trials,
                    key=jax.random.key(1), labels=data.y_test,
                )  # fmt: skip
                iia_s += time.perf_counter() - t
                small = compile_abstraction(model, rep)
                masked = replace(model, rep)
                err = float(jnp.abs(logits(small, data.x_test) - logits(masked, data.x_test)).max())
                compiled_err = max(compiled_err, err)
                runs.append(
                    dict(
                        iia=[float(v) for v in res.iia],
                        agree=res.accuracy,
                        acc=res.task_accuracy_abstraction,
                        kl=res.kl,
                        kinds=rep.summary(),
                        params=small.n_params,
                    )
                )
            rows.append(_mean_row("digits", site, label, kf, rep.n_kept, runs))
    c.finish_side(
        workdir,
        "digits",
        {},
        rows=rows,
        full_acc=float(res.task_accuracy_full),
        full_params=model.n_params,
        n_units=int(a.shape[1]),
        n_cal=int(a.shape[0]),
        n_eval=int(data.x_test.shape[0]),
        ggn_vs_exact=ggn_vs_exact,
        compiled_vs_masked=compiled_err,
        curvature_s=curvature_s,
        prune_s=prune_s,
        iia_s=iia_s,
        baseline_rss_mib=baseline,
    )


def _mean_row(part, site, label, kf, n_kept, runs) -> dict:
    """One table row: the run's numbers, averaged over runs (random's seeds)."""
    row = dict(part=part, site=site, method=label, keep=kf, n_kept=int(n_kept), runs=len(runs))
    row["iia"] = [float(np.mean([r["iia"][i] for r in runs])) for i in range(len(PS))]
    if len(runs) > 1:
        row["iia_std"] = [float(np.std([r["iia"][i] for r in runs])) for i in range(len(PS))]
    for key in ("agree", "acc", "kl", "params"):
        row[key] = float(np.mean([r[key] for r in runs]))
    row["kinds"] = runs[0]["kinds"]
    return row


# ---------------------------------------------------------------- (b) the induction transformer


def task_labels(task) -> np.ndarray:
    """Next-token targets at the second-half positions `HALF .. 2 HALF − 2`, −1 elsewhere."""
    targets, weights = np.asarray(task.metric.targets), np.asarray(task.metric.weights)
    return np.where(weights[None] > 0, targets, -1)


def side_induction(args, workdir: Path) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxcirc import zoo
    from jaxcirc.methods._abstraction_iia import abstraction_iia
    from jaxcirc.methods._risk_pruning import prune
    from jaxcirc.methods._units import downstream, replace, unit_activations
    from jaxcirc.solvers._curvature import unit_curvature

    baseline = c.peak_rss_mib()
    model = zoo.induction_mlp_model()
    n_cal = 32 if args.quick else N_CAL
    cal = zoo.induction_task(n_cal, HALF, seed=0)
    ev = zoo.induction_task(N_EVAL, HALF, seed=1234)
    cal_labels = jnp.asarray(task_labels(cal))
    ev_targets = jnp.asarray(np.asarray(ev.metric.targets))
    second = np.asarray(ev.metric.weights) > 0  # positions 16..30

    @eqx.filter_jit
    def second_half(m, full_logp):
        """Task accuracy and mean KL(full ‖ m) over the second-half positions."""
        logp = jax.nn.log_softmax(jax.vmap(m)(ev.clean), -1)[:, second]
        acc = (logp.argmax(-1) == ev_targets[:, second]).mean()
        kl = (jnp.exp(full_logp) * (full_logp - logp)).sum(-1).mean()
        return acc, kl

    full_logp = jax.nn.log_softmax(jax.vmap(model)(ev.clean), -1)[:, second]
    full_acc = float(second_half(model, full_logp)[0])

    if args.quick:
        sites, keeps = ["blocks.0.mlp.hook_post", "blocks.1.attn.hook_z"], (0.5, 0.25)
    else:
        sites = [f"blocks.{i}.{s}" for i in range(2) for s in ("mlp.hook_post", "attn.hook_z")]
        keeps = KEEPS
    rows, curvature_s, prune_s, iia_s = [], 0.0, 0.0, 0.0
    for site in sites:
        t = time.perf_counter()
        acts = unit_activations(model, cal.clean, site)
        cv = unit_curvature(
            downstream(model, site), acts, cal.clean, cal_labels, method="fisher",
            probes=FISHER_PROBES, key=jax.random.key(0), batch_size=32,
        )  # fmt: skip
        curvature_s += time.perf_counter() - t
        n, seq, u, d = acts.shape
        a, g, h = (x.reshape(n * seq, u, d) for x in (acts, cv.grad, cv.curv))
        done = set()
        for kf in keeps:
            n_keep = min(u, max(1, int(round(kf * u))))
            if n_keep in done:  # 4 heads: 12.5% and 6.25% both keep one head
                continue
            done.add(n_keep)
            for label, kw, _ in methods("induction"):
                extra = dict(key=jax.random.key(0)) if label == "random" else {}
                t = time.perf_counter()
                rep = prune(a, g, h, kf, site=site, **kw, **extra)
                prune_s += time.perf_counter() - t
                t = time.perf_counter()
                res = abstraction_iia(
                    model, rep, ev.clean, p=PS, n_trials=args.ind_trials, key=jax.random.key(1),
                    position=READ_POS, labels=ev.clean[:, READ_POS + 1],
                )  # fmt: skip
                iia_s += time.perf_counter() - t
                acc, kl = second_half(replace(model, rep), full_logp)
                run = dict(
                    iia=[float(v) for v in res.iia],
                    agree=res.accuracy,
                    acc=float(acc),
                    kl=float(kl),
                    kinds=rep.summary(),
                    params=0.0,
                )
                rows.append(_mean_row("induction", site, label, kf, rep.n_kept, [run]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    c.finish_side(
        workdir,
        "induction",
        {},
        rows=rows,
        full_acc=full_acc,
        n_cal=n_cal,
        n_eval=N_EVAL,
        curvature_s=curvature_s,
        prune_s=prune_s,
        iia_s=iia_s,
        baseline_rss_mib=baseline,
    )


# ---------------------------------------------------------------- report


def pct(kf: float) -> str:
    return f"{kf * 100:g}%"


def pivot(rows: list[dict], cell) -> str:
    """Methods × keep fractions, one cell per (method, keep)."""
    keeps = sorted({r["keep"] for r in rows}, reverse=True)
    order = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    n_kept = {r["keep"]: r["n_kept"] for r in rows}
    header = ["method"] + [f"keep {pct(k)} ({n_kept[k]})" for k in keeps]
    body = []
    for m in order:
        by = {r["keep"]: r for r in rows if r["method"] == m}
        body.append([m] + [cell(by[k]) if k in by else "—" for k in keeps])
    return c.table(header, body)


def iia_cell(r: dict) -> str:
    return " / ".join(f"{v:.3f}" for v in r["iia"])


def acc_cell(r: dict) -> str:
    return f"{r['acc']:.3f} ({r['kl']:.3g})"


def kinds(r: dict) -> str:
    k = r["kinds"]
    return f"{k['constant']} const, {k['fold']} fold" if k["fold"] and k["constant"] else ""


def cif_table(rows: list[dict]) -> str:
    """Ours (digits, 128 units) next to the follow-up's MNIST numbers (512 units)."""
    body = []
    for m in ("fold", "variance", "random", "constant, undamped", "constant"):
        by = {r["keep"]: r for r in rows if r["method"] == m}
        for k in sorted(by, reverse=True):
            theirs = CIF.get(m, {}).get(k)
            body.append(
                [
                    m,
                    pct(k),
                    iia_cell(by[k]),
                    cif_cell(m, theirs),
                ]
            )
    return c.table(
        ["method", "keep", "ours: IIA p=0.1 / 0.2 / 0.5", "follow-up (CIF), MNIST"], body
    )


def cif_cell(method: str, theirs) -> str:
    if not theirs:
        return "—"
    if method == "constant, undamped":  # METHODS.md §1.9: "≈0.10" at every keep <= 384
        return "≈ 0.10 (chance) at every p"
    return " / ".join(f"{v:.3f}" for v in theirs)


def digits_logit_absmax() -> float:
    import jax

    from jaxcirc import zoo

    return float(abs(jax.vmap(zoo.digits_mlp())(zoo.digits_data().x_test)).max())


def report_digits(rep: dict, info: dict, args) -> str:
    rows = rep["rows"]
    auto = [f"{pct(r['keep'])}: {kinds(r)}" for r in rows if r["method"] == "auto" and kinds(r)]
    spread = [
        f"{pct(r['keep'])} ±{max(r['iia_std']):.3f}"
        for r in rows
        if r["method"] == "random" and "iia_std" in r
    ]
    return "\n\n".join(
        [
            "## Interventional-risk pruning, digits MLP (issue 6 reproduction, part a)",
            c.machine_markdown(info),
            f"`jaxcirc.zoo.digits_mlp()` (64 → 128 → 128 → 10 ReLU, {rep['full_params']:,} "
            f"parameters, test accuracy {rep['full_acc']:.3f}); site `{DIGITS_SITE}` "
            f"({rep['n_units']} units), calibration = the {rep['n_cal']} training images, "
            f"evaluation = the {rep['n_eval']} test images. Curvature: exact GGN diagonal of the "
            f"task cross-entropy (`unit_curvature(method='ggn')`; equal to the exact Hessian "
            f"diagonal here, max |GGN − `method='exact'`| = {rep['ggn_vs_exact']:.1e}); "
            f"`constant, KL loss` uses the KL to the full model instead (`g = 0`). "
            f"IIA: {args.trials:,} trials per p on the test split (`abstraction_iia`, key 1); "
            f"random: mean of {RANDOM_SEEDS} seeds (largest std of an IIA over seeds: "
            f"{', '.join(spread) or '—'}). The compiled abstraction "
            f"(`compile_abstraction`, a narrower `MLPClassifier`) equals the masked model to "
            f"{rep['compiled_vs_masked']:.1e} (max |logit diff| over every row and test image; "
            f"the full model's test logits reach {digits_logit_absmax():.0f} in magnitude). "
            f"Time: curvature {rep['curvature_s']:.1f} s, pruning {rep['prune_s']:.1f} s, "
            f"IIA {rep['iia_s']:.1f} s; peak RSS {rep['peak_rss_mib']:,.0f} MiB.",
            "**IIA at p = 0.1 / 0.2 / 0.5** (kept units in brackets):",
            pivot(rows, iia_cell),
            "**Test accuracy of the abstraction (mean KL(full ‖ abstraction) on the test split):**",
            pivot(rows, acc_cell),
            "`auto` chose " + ("; ".join(auto) if auto else "only folds or only constants") + ".",
            "**Next to the follow-up's numbers** (METHODS.md §1.9: the CIF repository's MNIST MLP, "
            "512 units, keep 384/256/128/64/32 = the same fractions; their `hard` constant is "
            "the undamped formula):",
            cif_table(rows),
        ]
    )


def report_induction(rep: dict, info: dict, args) -> str:
    rows = rep["rows"]
    parts = [
        "## Interventional-risk pruning, MLP induction transformer (issue 6 reproduction, part b)",
        c.machine_markdown(info),
        f"`jaxcirc.zoo.induction_mlp_model()` (2 layers, 4 heads × 16, 256 neurons per MLP; "
        f"second-half accuracy {rep['full_acc']:.3f} on the evaluation prompts). Each site "
        f"pruned on its own. Calibration: {rep['n_cal']} clean prompts of "
        f"`induction_task(n, {HALF}, seed=0)` (rows = prompt × position, {rep['n_cal'] * 2 * HALF} "
        f"rows), task cross-entropy of the next token at positions {HALF}..{2 * HALF - 2}; "
        f"curvature = Monte-Carlo Fisher, {FISHER_PROBES} sampled labels per prompt (unbiased for "
        f"the GGN; the exact GGN needs {2 * HALF * 64} backward passes per prompt). Evaluation: "
        f"{rep['n_eval']} prompts of `induction_task(n, {HALF}, seed=1234)`; IIA "
        f"({args.ind_trials:,} trials per p, the same kept units swapped at every position) read "
        f"at position {READ_POS} (predicting the repeat's last token); accuracy and KL over "
        f"positions {HALF}..{2 * HALF - 2}. Random: one seed. Heads: 4 per layer, so 12.5% and "
        f"6.25% both keep 1 head (shown once). Time: curvature {rep['curvature_s']:.1f} s, "
        f"pruning {rep['prune_s']:.1f} s, IIA {rep['iia_s']:.1f} s; peak RSS "
        f"{rep['peak_rss_mib']:,.0f} MiB.",
    ]
    for site in dict.fromkeys(r["site"] for r in rows):
        sub = [r for r in rows if r["site"] == site]
        parts += [
            f"**`{site}`: IIA at p = 0.1 / 0.2 / 0.5**",
            pivot(sub, iia_cell),
            f"**`{site}`: second-half accuracy (mean KL(full ‖ abstraction) per position)**",
            pivot(sub, acc_cell),
        ]
    return "\n\n".join(parts)


def reading(reports: dict) -> str:
    """Automatic comparisons (fold vs variance, damped vs undamped), then NOTES."""
    lines = []
    for part, rep in reports.items():
        rows = rep["rows"]
        for site in dict.fromkeys(r["site"] for r in rows):
            by = {(r["method"], r["keep"]): r for r in rows if r["site"] == site}
            keeps = sorted({k for (_, k) in by}, reverse=True)
            wins = []
            for k in keeps:
                if ("fold", k) in by and ("variance", k) in by:
                    f, v = by[("fold", k)]["iia"], by[("variance", k)]["iia"]
                    wins.append(f"{pct(k)}: {sum(a > b for a, b in zip(f, v))}/3")
            lines.append(
                f"- `{site}`: fold's IIA above variance's (p = 0.1, 0.2, 0.5) at keep "
                + ", ".join(wins)
                + "."
            )
            damp = [
                f"{pct(k)}: {by[('constant', k)]['acc']:.3f} vs "
                f"{by[('constant, undamped', k)]['acc']:.3f}"
                for k in keeps
                if ("constant", k) in by and ("constant, undamped", k) in by
            ]
            lines.append(f"  Accuracy, damped vs undamped constant: {', '.join(damp)}.")
    return "\n".join(lines) + ("\n\n" + NOTES.strip() if NOTES.strip() else "")


NOTES = """
**Does folding beat variance at aggressive sparsity?**

- *Digits, `hidden.1`: yes, clearly, as the follow-up found.* From keep 25% down, fold keeps
  IIA (p = 0.1) at 0.92 / 0.82 / 0.63 (25 / 12.5 / 6.25%) and test accuracy 0.97 / 0.95 / 0.78,
  where variance falls to 0.66 / 0.24 / 0.10 (accuracy 0.75 / 0.28 / 0.11) and every
  constant-based method to near chance. At keep 75% variance is level or slightly ahead at
  p = 0.5 (0.851 vs 0.837), also the follow-up's pattern (variance best at mild sparsity and
  strong interventions). Our baselines fall earlier than the follow-up's because the layer is
  4× narrower (keep 12.5% = 16 units here, 64 there). Re-scoring (`fold, iterative`) adds
  0.02–0.08 IIA at keep ≤ 25% and loses at 75% (0.633 vs 0.837 at p = 0.5).
- *Induction transformer: mixed.* Layer-1 heads (four redundant induction heads): yes at keep
  ≤ 50%; with one head kept fold has IIA 0.88 / 0.79 / 0.51 and accuracy 0.999, variance
  0.25 / 0.22 / 0.15 and 0.28 (both keep head 2; the folds rebuild the other three from it).
  Layer-0 MLP neurons: not on IIA, where variance is above fold from keep 25% down (6.25%:
  0.990 / 0.990 / 0.980 vs 0.978 / 0.972 / 0.906; at 75–50% they are within 0.004), but fold
  wins on the task (6.25%: accuracy 0.998 vs 0.968, KL 0.28 vs 1.67). A plausible cause (not
  tested): a folded unit follows its
  swapped parents to the source in the abstraction, while in the full model a pruned unit keeps
  its base value, so folding moves the abstraction away from the full model under interchange
  even where it matches it observationally. Layer-0 heads: the informed methods tie (random
  drops the previous-token heads and fails). Layer-1 MLP: IIA and accuracy are 1.000 for every
  method and keep (this MLP does not change the argmax at position 30); only the KL separates
  them: fold 0.018 at keep 6.25%, variance 0.20, damped constant 1.09.

**Damping.** The undamped closed form collapses on the transformer's layer-0 MLP — accuracy
0.60 / 0.33 / 0.17 / 0.13 / 0.11 at keep 75% … 6.25% against 1.00 / 1.00 / 1.00 / 0.98 / 0.93
damped: the follow-up's collapse, and the damping fixes it. On digits undamped is worse at
every keep (accuracy 0.908 / 0.762 / 0.274 vs 0.974 / 0.884 / 0.566 at 75 / 50 / 25%) but does
not fall to chance at mild sparsity as in the follow-up's MNIST CSVs. On the layer-1 heads the
damping hurts: damped keeps the highest-variance head 2 (as variance and fold do), undamped
keeps head 1 (its full Newton step makes head 2's constant look cheap), and head 1 with
constants for the rest is the better pair (accuracy 0.72 vs 0.30). With 4 units and 3 removed
at once, the one-unit-at-a-time expansion says little about the joint removal of redundant
heads.

**The curvature constant vs variance.** Pruning by the damped task-CE constant (its ranking
and its constants) does worse than plain variance (variance ranking, mean constants) on digits
at every keep (keep 50%: IIA 0.866 vs 0.957, accuracy 0.884 vs 0.978);
with the KL loss (`g = 0`) it does better (0.935) but stays below variance. On the
transformer's layer-1 MLP it keeps accuracy 1.000 yet has KL 0.71 at keep 75% (variance
0.0009): most likely the first-order term moves constants to lower the task loss on data the model
already fits, not to match the full model. `auto` (per unit, the smaller predicted risk) is
not better than `fold` beyond noise anywhere: it takes CE constants for 19–32 units on digits
and ends 0.006–0.016 below fold (IIA at p = 0.1 and accuracy) at keep ≤ 25%, and on the
layer-1 MLP its KL is 0.55–0.64 against fold's 0.003–0.018. In these runs the second-order
score earns its keep as the *selection* for folds, not through its constants.

Noise: digits IIA from 10,000 trials (standard error ≤ 0.005); induction IIA from 500 trials
(≤ 0.022 at IIA ≈ 0.5, ≈ 0.005 at 0.99); random is one seed on the transformer.
"""


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated: digits, induction")
    p.add_argument("--trials", type=int, default=10_000, help="IIA trials per p (digits)")
    p.add_argument("--ind-trials", type=int, default=500, help="IIA trials per p (induction)")
    p.add_argument("--save", help="write the raw reports (JSON) here")
    p.add_argument("--load", help="render RESULTS from reports saved by --save (no run)")
    args = p.parse_args()
    if args.side:
        return {"digits": side_digits, "induction": side_induction}[args.side](
            args, Path(args.workdir)
        )
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = [s for s in parts if s not in PARTS]
    if bad:
        sys.exit(f"--parts: unknown part {bad[0]!r}; choose from {', '.join(PARTS)}")
    if args.quick:
        args.trials, args.ind_trials = min(args.trials, 1000), min(args.ind_trials, 100)
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        info, reports, args.trials, args.ind_trials = (
            saved["info"],
            saved["reports"],
            saved["trials"],
            saved["ind_trials"],
        )
        parts = list(reports)
    else:
        info = c.machine()
        with tempfile.TemporaryDirectory(prefix="jaxcirc-bench-") as tmp:
            sys.argv += ["--trials", str(args.trials), "--ind-trials", str(args.ind_trials)]
            reports = c.run_sides(__file__, Path(tmp), parts, 1)
        if args.save:
            Path(args.save).write_text(
                json.dumps(
                    dict(info=info, reports=reports, trials=args.trials, ind_trials=args.ind_trials)
                )
            )
    texts = []
    for part in parts:
        fn = report_digits if part == "digits" else report_induction
        texts.append(fn(reports[part], info, args))
    texts.append("### Reading\n\n" + reading(reports))
    text = "\n\n".join(texts)
    c.publish("pruning", text, record=not args.quick and set(parts) == set(PARTS))


if __name__ == "__main__":
    main()
