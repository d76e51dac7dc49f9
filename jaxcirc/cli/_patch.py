"""`jaxcirc patch`: an activation-patching sweep, drawn as a heatmap and saved as JSON.

By default it runs on the embedded induction model (`jaxcirc.zoo.induction_model`) and task
(`jaxcirc.zoo.induction_task`: clean `[A, A]`, corrupt `[A', A]`, metric the mean
log-probability of the induction token over the second half); `--model PATH` runs the same
task, on random token ids, on any model `jaxcirc.load` reads. The PNG shows the fraction of
the clean - corrupt metric gap each patch restores; the JSON holds the raw values as well.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

SITES = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "q",
    "k",
    "v",
    "z",
    "pattern",
)
PERS = ("position", "head", "position_head", "head_position")
HEAD_SITES = ("q", "k", "v", "z", "pattern")
METRIC = "mean log-prob of the induction token over the second half"


def choice(kind: str, choices: tuple[str, ...]):
    """An argparse `type` accepting `choices`, whose error names the nearest valid one."""
    from ..models._site import nearest

    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid {kind} {value!r}{nearest(value, choices)}; "
                f"choose from {', '.join(choices)}"
            )
        return value

    parse.__name__ = kind
    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "patch",
        help="activation-patching sweep: heatmap (PNG) and values (JSON)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--site",
        type=choice("site", SITES),
        default="resid_pre",
        help=f"site kind to patch: {', '.join(SITES)}",
    )
    parser.add_argument(
        "--per",
        type=choice("per", PERS),
        default=None,
        help="units: position (residual sites), head / position_head (q k v z), "
        "head / head_position (pattern); default: position, or head",
    )
    parser.add_argument(
        "--n-prompts", type=int, default=8, help="number of clean/corrupt prompt pairs"
    )
    parser.add_argument(
        "--half-len", type=int, default=16, help="length of the repeated half of a prompt"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--out", type=Path, default=Path("patch-out"), help="output folder")
    parser.add_argument(
        "--model",
        default=None,
        help="a model for jaxcirc.load instead of the embedded induction model; "
        "prompts are random token ids, so no tokenizer is needed",
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="units evaluated at once")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run, parser=parser)
    return parser


def _check(args, parser: argparse.ArgumentParser) -> None:
    if args.per is None:
        args.per = "head" if args.site in HEAD_SITES else "position"
    from ..patching import PER

    valid = tuple(PER[args.site]) if args.site in PER else ("position",)
    if args.per not in valid:
        parser.error(
            f"argument --per: site {args.site!r} is swept per {' or '.join(valid)}; "
            f"got {args.per!r} (did you mean {valid[0]!r}?)"
        )
    for name in ("n_prompts", "half_len", "chunk_size"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "half_len" else 1):
            parser.error(
                f"argument --{name.replace('_', '-')}: must be at least "
                f"{2 if name == 'half_len' else 1}; got {value}"
            )


def _load_model(args, parser):
    from .. import zoo
    from .._finite import check_finite_weights
    from ..interventions import sites
    from ..models._site import nearest

    if args.model is None:
        model, name = zoo.induction_model(), "embedded induction_attn_only_2l"
    else:
        try:
            from .. import load

            model = load(args.model)
        except ImportError as e:
            parser.error(
                f"argument --model: loading models needs jaxcirc.io, which this install "
                f"lacks ({e}); run without --model for the embedded induction model"
            )
        name = str(args.model)
    check_finite_weights(model, f"model {name}")  # names the tensor; exit 1 via main
    present = sorted({ref.kind for ref in sites(model)} & set(SITES))
    if args.site not in present:
        parser.error(
            f"argument --site: this {model.cfg.family} model has no site {args.site!r}"
            f"{nearest(args.site, present)}; its sites: {', '.join(present)}"
        )
    limit = min(model.cfg.n_ctx, model.cfg.d_vocab) // 2
    if args.half_len > limit:
        parser.error(
            f"argument --half-len: {args.half_len} is too long for this model "
            f"(n_ctx={model.cfg.n_ctx}, d_vocab={model.cfg.d_vocab}); at most {limit}"
        )
    return model, name


def _finite(x):
    """Nested lists of floats with NaN/inf as `None`, for strict JSON."""
    return [_finite(v) for v in x] if isinstance(x, list) else (x if math.isfinite(x) else None)


def run(args) -> int:
    import equinox as eqx
    import jax
    from tqdm.auto import tqdm

    from .. import __version__, zoo
    from .._atomic import atomic_write
    from .._finite import check_finite
    from ..patching import sweep
    from ..viz._heatmap import patching_heatmap, patching_labels

    parser = args.parser
    _check(args, parser)
    show = not args.no_progress
    start = time.perf_counter()
    timing = {}
    model, model_name = _load_model(args, parser)
    timing["load_s"] = time.perf_counter() - start
    with tqdm(total=4, desc="jaxcirc patch", unit="stage", disable=not show, leave=False) as stages:
        stages.set_postfix_str("making prompts")
        task = zoo.induction_task(
            args.n_prompts, args.half_len, args.seed, d_vocab=model.cfg.d_vocab
        )
        score = eqx.filter_jit(lambda model, tokens, metric: metric(jax.vmap(model)(tokens)))
        clean_value = float(score(model, task.clean, task.metric))
        corrupt_value = float(score(model, task.corrupt, task.metric))
        check_finite({"clean": clean_value, "corrupt": corrupt_value}, "metric of the run",
                     diagnose=lambda: model.nonfinite_report(task.clean))  # fmt: skip
        stages.update()

        stages.set_postfix_str(f"sweeping {args.site} per {args.per}")
        t = time.perf_counter()
        values = np.asarray(
            sweep(
                model,
                task.clean,
                task.corrupt,
                task.metric,
                args.site,
                args.per,
                chunk_size=args.chunk_size,
                progress=show,
            )
        )
        timing["sweep_s"] = time.perf_counter() - t
        check_finite(values, f"patching sweep of {args.site} per {args.per}",
                     axes=("layer", *args.per.split("_")))  # fmt: skip
        stages.update()

        stages.set_postfix_str("drawing heatmap")
        gap = clean_value - corrupt_value
        restored = (values - corrupt_value) / gap if abs(gap) > 1e-6 else values * np.nan
        stem = args.out / f"patch_{args.site}_{args.per}"
        png = patching_heatmap(
            restored,
            args.per,
            path=stem.with_suffix(".png"),
            position_labels=task.labels,
            title=f"patching {args.site} per {args.per}: {model_name}, {args.n_prompts} prompts",
            metric_label="fraction restored",
        )
        stages.update()

        stages.set_postfix_str("writing JSON")
        _, axes, _, _ = patching_labels(values, args.per, position_labels=task.labels)
        timing["total_s"] = time.perf_counter() - start
        record = {
            "jaxcirc_version": __version__,
            "model": model_name,
            "site": args.site,
            "per": args.per,
            "axes": axes,
            "shape": list(values.shape),
            "values": _finite(values.tolist()),
            "restored": _finite(restored.tolist()),
            "metric": METRIC,
            "metric_clean": clean_value,
            "metric_corrupt": corrupt_value,
            "n_prompts": args.n_prompts,
            "half_len": args.half_len,
            "seed": args.seed,
            "timing": {k: round(v, 3) for k, v in timing.items()},
        }
        out = atomic_write(
            stem.with_suffix(".json"),
            lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"),
        )
        stages.update()

    print(
        f"jaxcirc patch: {model_name}, {args.n_prompts} prompts of {2 * args.half_len} tokens, "
        f"site {args.site} per {args.per} ({timing['sweep_s']:.1f}s)"
    )
    print(f"{METRIC}: clean {clean_value:.3f}, corrupt {corrupt_value:.3f}")
    if np.isfinite(restored).any():
        print("top units (fraction of the clean − corrupt gap restored):")
        order = np.argsort(np.where(np.isfinite(restored), restored, -np.inf), axis=None)[::-1][:5]
        for flat in order:
            index = np.unravel_index(flat, values.shape)
            unit = " ".join(
                f"pos {i} ({axes[a][i]})" if a == "position" else axes[a][i]
                for a, i in zip(axes, index)
            )
            print(f"  {unit:<16} {restored[index]:+.3f}")
    print(f"wrote {png} and {out}")
    return 0
