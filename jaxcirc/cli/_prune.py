"""`jaxcirc prune`: interventional-risk pruning of a model into a smaller abstraction, checked
by interchange interventions (Asiaee 2026, arXiv 2602.24266).

Runs on the shipped models by default, no download: `digits` (the zoo's digits MLP,
calibrated on training images with their labels, evaluated on the test split) or
`induction-mlp` (the zoo's 2-layer induction transformer with MLPs, calibrated on repeated
random-token prompts with the second-half next tokens as labels, evaluated on fresh prompts,
read out at the last predicted position); or `PATH`, a saved model (a `jaxcirc.save`
checkpoint or Hugging Face folder, calibrated and evaluated on random tokens with the KL to
itself; or a digits-shaped MLP written by the zoo's `save`). For every method and keep
fraction it prunes the sites (`jaxcirc.methods.prune_model`) and measures, on the evaluation
inputs, IIA at each swap probability `p` per site (`abstraction_iia` against the full model),
task accuracy, agreement with the full model and the KL from it. Writes, each atomically:

- `OUT/prune.json`: settings and one record per (method, keep);
- `OUT/iia.png`: IIA against sparsity (one line per `p` and method, one panel per site);
- `OUT/abstraction`: the compiled abstraction of the first method at the last keep fraction
  (`jaxcirc.save`, read by `jaxcirc.load`, for the transformer and the MLP alike);
  `prune.json`'s `checkpoint` lists what was written and the call that reads it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

from ._patch import choice

METHODS = ("fold", "constant", "auto", "variance", "random")
CURVATURES = ("ggn", "exact", "fisher", "hutchinson")
SHIPPED = ("digits", "induction-mlp")
HALF_LEN = 16  # induction prompts: [A, A] with |A| = 16


def keep_fraction(value: str) -> float:
    """An argparse `type`: a number in (0, 1]."""
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1]; got {value!r}") from None
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise argparse.ArgumentTypeError(
            f"must be in (0, 1] (the fraction of units kept); got {value}"
        )
    return f


def probability(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1]; got {value!r}") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1]; got {value}")
    return f


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prune",
        help="interventional-risk pruning into a smaller model, checked by IIA",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", default="digits", help="digits, induction-mlp, or PATH to a saved model"
    )
    parser.add_argument(
        "--site", action="append", default=None,
        help="site to prune, repeatable (default: hidden.1 / blocks.{last}.mlp.hook_post)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="append", type=keep_fraction, default=None,
        help="fraction of units kept, in (0, 1], repeatable (default: 0.5, 0.25, 0.125)",
    )  # fmt: skip
    parser.add_argument(
        "--method", action="append", type=choice("method", METHODS), default=None,
        help=f"pruning method, repeatable: {', '.join(METHODS)} (default fold)",
    )  # fmt: skip
    parser.add_argument(
        "--curvature", type=choice("curvature", CURVATURES), default=None,
        help="curvature (default: ggn for the MLP, fisher for a transformer)",
    )  # fmt: skip
    parser.add_argument("--schedule", type=choice("schedule", ("one-shot", "iterative")),
                        default="one-shot", help="one-shot or iterative (re-scored)")  # fmt: skip
    parser.add_argument("--p", type=probability, nargs="+", default=[0.1, 0.2, 0.5],
                        help="swap probabilities of the interchange interventions")  # fmt: skip
    parser.add_argument("--trials", type=int, default=2000, help="IIA trials per p")
    parser.add_argument(
        "--n", type=int, default=None,
        help="calibration inputs (default: 500 images / 16 prompts / 16 random sequences)",
    )  # fmt: skip
    parser.add_argument("--n-eval", type=int, default=64, help="evaluation prompts (transformers)")
    parser.add_argument("--seq", type=int, default=16, help="tokens per random sequence (PATH)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the trials")
    parser.add_argument("--out", type=Path, default=Path("prune-out"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, parser=parser)
    return parser


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------


class _Setup:
    """The model, its calibration and evaluation data, and how to score an abstraction."""

    def __init__(self, args):
        import jax.numpy as jnp
        import numpy as np

        from .. import zoo
        from .._finite import check_finite_weights
        from ..zoo._digits import MLPClassifier

        name = args.model
        self.name = name
        if name == "digits" or _is_mlp_file(name):
            model = zoo.digits_mlp() if name == "digits" else zoo.digits_mlp(name)
            data = zoo.digits_data()
            if model.widths[0] != data.x_train.shape[1]:
                args.parser.error(
                    f"argument --model: {name} reads {model.widths[0]} inputs; the digits "
                    f"data has {data.x_train.shape[1]}"
                )
            n = 500 if args.n is None else args.n
            self.model = model
            self.cal, self.cal_labels = data.x_train[:n], data.y_train[:n]
            self.eval, self.eval_labels = data.x_test, data.y_test
            self.position, self.task = -1, "digits test accuracy"
        elif name == "induction-mlp":
            self.model = zoo.induction_mlp_model()
            n = 16 if args.n is None else args.n
            cal = zoo.induction_task(n, HALF_LEN, seed=args.seed)
            self.cal = cal.clean
            self.cal_labels = jnp.where(cal.metric.weights[None] > 0, cal.metric.targets, -1)
            self.eval = zoo.induction_task(args.n_eval, HALF_LEN, seed=args.seed + 1).clean
            # read out at the last predicted position: the token there predicts the last token
            self.eval_labels, self.position = self.eval[:, -1], -2
            self.task = "second-half next-token accuracy"
        else:
            from .. import load

            self.model = load(name)
            if args.seq < 1 or (
                self.model.pos_embed is not None and args.seq > self.model.cfg.n_ctx
            ):
                args.parser.error(f"argument --seq: need 1..{self.model.cfg.n_ctx}; got {args.seq}")
            n = 16 if args.n is None else args.n
            rng = np.random.default_rng(args.seed)
            d_vocab = self.model.cfg.d_vocab
            self.cal = jnp.asarray(rng.integers(0, d_vocab, (n, args.seq)), jnp.int32)
            self.eval = jnp.asarray(rng.integers(0, d_vocab, (args.n_eval, args.seq)), jnp.int32)
            self.cal_labels = self.eval_labels = None
            self.position, self.task = -1, None
        check_finite_weights(self.model, f"model {name}")
        self.is_mlp = isinstance(self.model, MLPClassifier)
        if n < 2 or n > self.cal.shape[0]:
            args.parser.error(f"argument --n: need 2..{self.cal.shape[0]}; got {n}")
        if not self.is_mlp and args.n_eval < 2:
            args.parser.error(f"argument --n-eval: need at least 2 prompts; got {args.n_eval}")

    def default_site(self) -> str:
        if self.is_mlp:
            return self.model.sites[-1]
        return f"blocks.{self.model.cfg.n_layers - 1}.mlp.hook_post"

    def metrics(self, abstraction) -> dict:
        """Task accuracy, agreement with the full model and KL(full ‖ abstraction)."""
        import jax
        import numpy as np

        full, small = _logits(self.model, self.eval), _logits(abstraction, self.eval)
        logp, logq = jax.nn.log_softmax(full, -1), jax.nn.log_softmax(small, -1)
        kl = float((np.exp(logp) * (logp - logq)).sum(-1).mean())
        out = {
            "agreement": round(float((full.argmax(-1) == small.argmax(-1)).mean()), 6),
            "kl": kl,
        }
        if self.is_mlp:
            y = np.asarray(self.eval_labels)
            out["accuracy_full"] = float((np.asarray(full.argmax(-1)) == y).mean())
            out["accuracy"] = float((np.asarray(small.argmax(-1)) == y).mean())
        elif self.name == "induction-mlp":
            target = np.asarray(self.eval[:, HALF_LEN + 1 :])
            second = slice(HALF_LEN, -1)
            out["accuracy_full"] = float((np.asarray(full[:, second].argmax(-1)) == target).mean())
            out["accuracy"] = float((np.asarray(small[:, second].argmax(-1)) == target).mean())
        return out


def _is_mlp_file(name: str) -> bool:
    config = Path(f"{name}.json")
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("kind") == "mlp_classifier"
    except (OSError, ValueError, AttributeError):
        return False


@functools.cache
def _batched():
    import equinox as eqx
    import jax

    return eqx.filter_jit(lambda m, x: jax.vmap(m)(x))


def _logits(model, x):
    return _batched()(model, x)


# ---------------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------------


def plot_iia_sparsity(records: list[dict], sites: list[str], ps: list[float], path, *, title):
    """IIA against sparsity (1 − keep): one panel per site, one line per `p` (colour) and
    method (line style). Written atomically; returns the `Path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .._atomic import atomic_write

    methods = list(dict.fromkeys(r["method"] for r in records))
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    fig = Figure(figsize=(5.5 * len(sites), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(sites), squeeze=False)[0]
    for ax, site in zip(axes, sites):
        for m_i, method in enumerate(methods):
            rows = sorted((r for r in records if r["method"] == method), key=lambda r: -r["keep"])
            x = [1.0 - r["keep"] for r in rows]
            for p_i, p in enumerate(ps):
                y = [r["iia"][site][p_i] for r in rows]
                ax.plot(
                    x, y, linestyle=styles[m_i % len(styles)], marker="o",
                    color=colors[p_i % len(colors)], label=f"{method}, p={p:g}",
                )  # fmt: skip
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("sparsity (fraction of units pruned)")
        ax.set_ylabel("interchange-intervention accuracy")
        ax.set_title(site, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def run(args) -> int:
    import jax
    from tqdm.auto import tqdm

    from .._atomic import atomic_write
    from ..methods._abstraction_iia import abstraction_iia
    from ..methods._prune import prune_model
    from ..methods._units import unit_sites
    from ..models._site import nearest

    if args.trials < 1:
        args.parser.error(f"argument --trials: need at least 1; got {args.trials}")
    setup = _Setup(args)
    sites = args.site or [setup.default_site()]
    valid = unit_sites(setup.model)
    for s in sites:
        if s not in valid:
            args.parser.error(
                f"argument --site: {args.model} has no site {s!r} with units{nearest(s, valid)}; "
                f"choose from {', '.join(valid)}"
            )
    if len(set(sites)) != len(sites):
        args.parser.error("argument --site: a site is given twice")
    keeps = args.keep or [0.5, 0.25, 0.125]
    methods = list(dict.fromkeys(args.method or ["fold"]))
    key = jax.random.key(args.seed)
    records, saved = [], None
    runs = [(m, k) for m in methods for k in keeps]
    with tqdm(total=len(runs), desc="jaxcirc prune", unit="run", disable=args.no_progress) as bar:
        for method, keep in runs:
            bar.set_postfix_str(f"{method} keep={keep:g}")
            res = prune_model(
                setup.model, setup.cal, labels=setup.cal_labels, sites=sites, keep_fraction=keep,
                method=method, curvature=args.curvature, schedule=args.schedule,
                key=jax.random.fold_in(key, 1),
            )  # fmt: skip
            iia = {}
            for rep in res.replacements:
                out = abstraction_iia(
                    setup.model, rep, setup.eval, p=args.p, n_trials=args.trials,
                    key=jax.random.fold_in(key, 2), position=setup.position,
                )  # fmt: skip
                iia[rep.site] = [round(float(v), 6) for v in out.iia]
            records.append(
                {
                    "method": method,
                    "keep": keep,
                    "kept": {r.site: r.n_kept for r in res.replacements},
                    "units": {r.site: r.n_units for r in res.replacements},
                    "kinds": {r.site: r.summary() for r in res.replacements},
                    "iia": iia,
                    "n_params": res.n_params_after,
                    **setup.metrics(res.abstraction),
                }
            )
            if method == methods[0] and keep == keeps[-1]:
                saved = res
            bar.update(1)
    out = args.out
    ckpt = out / "abstraction"
    from .. import save

    save(ckpt, saved.abstraction)  # a transformer or the MLP classifier: one folder
    written, reader = [ckpt], f"jaxcirc.load({str(ckpt)!r})"
    record = {
        "model": args.model,
        "sites": sites,
        "methods": methods,
        "keeps": keeps,
        "p": list(args.p),
        "trials": args.trials,
        "schedule": args.schedule,
        "curvature": saved.curvature,
        "loss": saved.loss,
        "calibration": int(setup.cal.shape[0]),
        "evaluation": int(setup.eval.shape[0]),
        "task": setup.task,
        "n_params_full": saved.n_params_before,
        "checkpoint": {
            "path": str(ckpt),
            "files": [str(f) for f in written],
            "load": reader,
            "method": methods[0],
            "keep": keeps[-1],
        },  # fmt: skip
        "results": records,
    }
    js = atomic_write(
        out / "prune.json", lambda t: Path(t).write_text(json.dumps(record, indent=1) + "\n")
    )
    png = plot_iia_sparsity(
        records, sites, list(args.p), out / "iia.png",
        title=f"{Path(args.model).name}: IIA of the pruned abstraction ({args.trials} trials)",
    )  # fmt: skip
    for r in records:
        acc = f", accuracy {r['accuracy']:.3f}" if "accuracy" in r else ""
        iia = "; ".join(
            f"{s} IIA " + "/".join(f"{v:.3f}" for v in vals) for s, vals in r["iia"].items()
        )
        print(f"{r['method']:>8} keep {r['keep']:<6g} {iia}{acc}, KL {r['kl']:.4g}")
    print(saved.summary())
    print(f"wrote {js}, {png} and {' + '.join(map(str, written))} (read it with {reader})")
    return 0
