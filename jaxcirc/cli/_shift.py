"""`jaxcirc shift`: SHIFT on templated biographies (Marks et al. 2025, arXiv 2403.19647, §5).

A probe on the mean-pooled residual stream at `--probe-layer` (one of the SAEs' sites) is
trained on bios where gender and profession coincide (`jaxcirc.tasks.bios`). Its output is
attributed to the SAE features of every site up to the probe's (integrated gradients, zero
ablation); of the `--top` features, those whose mean activation differs between men's and
women's profession-free bios by at least `--threshold` standard deviations are flagged as
gender features (the automatic stand-in for a person's judgement) and zeroed; the probe is
evaluated on balanced held-out bios, then retrained. Baselines: random features, a neuron
skyline, an oracle probe; and the CircuitLasso route (Yin et al. 2026). Writes
`OUT/shift.json` (the table, the flagged features, the top features with their effects and
gender scores) and `OUT/shift.png`.

`--saes` names folders of SAE folders (jaxcirc's `sae.json` or SAELens's `cfg.json`), e.g. those
`benchmarks/train_sae_smollm2.py` writes, or SAE folders; every site is read by one SAE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "shift",
        help="SHIFT: remove a spurious gender cue from a probe by ablating SAE features",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--saes", type=Path, nargs="+", required=True, help="folders of SAE folders (or SAEs)"
    )
    parser.add_argument(
        "--probe-layer", type=int, default=None, help="layer of the probe (default: deepest SAE)"
    )
    parser.add_argument("--model", type=Path, default=None, help="model (default: SmolLM2-135M)")
    parser.add_argument("--n-train", type=int, default=256, help="training bios (per set)")
    parser.add_argument("--n-test", type=int, default=256, help="balanced held-out test bios")
    parser.add_argument("--n-attribution", type=int, default=64, help="bios attributed (IG)")
    parser.add_argument("--n-neutral", type=int, default=128, help="bios for the gender proxy")
    parser.add_argument("--top", type=int, default=50, help="top features inspected")
    parser.add_argument("--threshold", type=float, default=1.0, help="gender score to flag")
    parser.add_argument("--steps", type=int, default=10, help="integrated-gradient steps")
    parser.add_argument("--rounds", type=int, default=1,
                        help="SHIFT rounds (> 1 adds iterated SHIFT: attribute the retrained "
                        "probe again, flag more)")  # fmt: skip
    parser.add_argument("--C", type=float, default=1e-3, help="probe inverse L2 strength")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bios and baselines")
    parser.add_argument("--out", type=Path, default=Path("shift-out"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run, parser=parser)
    return parser


def run(args) -> int:
    from .. import load
    from .._finite import check_finite_weights
    from ..io import load_saes, load_tokenizer
    from ..methods._shift import _layer, shift

    for name in ("n_train", "n_test", "n_attribution", "n_neutral", "top", "steps", "rounds"):
        if getattr(args, name) < 1:
            args.parser.error(f"argument --{name.replace('_', '-')}: must be at least 1")
    saes = load_saes(args.saes, what="--saes")
    probe_site = None
    if args.probe_layer is not None:
        layers = {_layer(s.site): s.site for s in saes}
        if args.probe_layer not in layers:
            raise ValueError(
                f"--probe-layer {args.probe_layer} has no SAE; SAE layers: {sorted(layers)}"
            )
        probe_site = layers[args.probe_layer]
    if args.model is None:
        from ..io._gguf import smollm2_gguf_path

        args.model = Path(smollm2_gguf_path())
    model = load(args.model)
    check_finite_weights(model, f"model {args.model}")
    tokenizer = load_tokenizer(args.model)
    res = shift(
        model, saes, tokenizer, probe_site=probe_site, n_train=args.n_train, n_test=args.n_test,
        n_attribution=args.n_attribution, n_neutral=args.n_neutral, top=args.top,
        threshold=args.threshold, steps=args.steps, C=args.C, rounds=args.rounds, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    record = {"model": str(args.model), "saes": [str(p) for p in args.saes], **res.to_json()}
    js, png = write(record, args.out)
    for name, row in res.rows.items():
        groups = "/".join(f"{v:.0f}" for v in row["groups"].values())
        print(f"{name:28s} profession {row['profession']:5.1f}  gender {row['gender']:5.1f}  "
              f"worst group {row['worst_group']:5.1f} (groups {groups}; training wording "
              f"{row['familiar']['worst_group']:5.1f})  features {row['features']}")  # fmt: skip
    print("groups: male professor / female professor / male nurse / female nurse (%); training "
          "wording: the worst group on balanced bios in the training split's names, frames "
          "and activities")  # fmt: skip
    print(f"wrote {js} and {png}")
    return 0


def write(record: dict, out: Path) -> tuple[Path, Path]:
    """`OUT/shift.json` and `OUT/shift.png` (bars of the three accuracies per run), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .._atomic import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    js = atomic_write(
        out / "shift.json", lambda t: Path(t).write_text(json.dumps(record, indent=1) + "\n")
    )
    rows = record["rows"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(names))
    for i, (key, label) in enumerate(
        (("profession", "profession"), ("gender", "gender"), ("worst_group", "worst group"))
    ):
        ax.bar(x + (i - 1) * 0.27, [rows[n][key] for n in names], 0.27, label=label)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy on balanced test bios (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("SHIFT (Marks et al. 2025) on templated bios")
    fig.tight_layout()
    png = atomic_write(out / "shift.png", lambda t: fig.savefig(t, format="png", dpi=110))
    plt.close(fig)
    return js, png
