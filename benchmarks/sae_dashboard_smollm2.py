"""The feature dashboard of a SmolLM2-135M SAE trained by `train_sae_smollm2.py`, on held-out text.

Reads `benchmarks/data/saes/smollm2/MANIFEST.json`, loads the SAE of `--layer` (`jaxcirc.sae.load`)
and runs SmolLM2-135M over standard-library text (`jaxcirc.tasks._corpus`) that the training
script never read: the rows after its first `--skip` (its 2,000 training and 64 evaluation rows).
Shows the most frequently firing features and a seeded sample of features that fire on 0.1-2 %
of tokens (the range where single features tend to be readable), BOS left out of the numbers.
Writes `benchmarks/dashboards/smollm2_resid_post_L{layer}/dashboard.{html,png,json}` and a
section of `RESULTS.md` with where they are and how long they took.

    python benchmarks/sae_dashboard_smollm2.py [--layer 5] [--rows 96]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _common as C

SAES = C.HERE / "data" / "saes" / "smollm2"
OUT = C.HERE / "dashboards"


def _marked(ctx) -> str:
    """The context's text with its maximum token in ⟦ ⟧."""
    s, i = ctx.strings, ctx.center
    return "".join(s[:i]) + "⟦" + s[i] + "⟧" + "".join(s[i + 1 :])


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--layer", type=int, default=None, help="default: the middle trained layer")
    p.add_argument("--sae", type=Path, default=None, help="an SAE folder instead of the manifest's")
    p.add_argument("--rows", type=int, default=96, help="held-out rows of 128 tokens")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--skip", type=int, default=2064, help="corpus rows the training read")
    p.add_argument("--frequent", type=int, default=4, help="most frequent features shown")
    p.add_argument("--sampled", type=int, default=8, help="features sampled at 0.1-2 %% firing")
    args = p.parse_args()
    info = C.machine()

    import numpy as np

    import jaxcirc as jc
    from jaxcirc._atomic import atomic_write
    from jaxcirc.io import load_sae
    from jaxcirc.io._gguf import smollm2_gguf_path
    from jaxcirc.tasks._corpus import token_sequences
    from jaxcirc.viz._dashboard import feature_dashboard, plot_dashboard, write_html

    entry = {}
    if args.sae is None:
        manifest = json.loads((SAES / "MANIFEST.json").read_text())
        layers = [e["layer"] for e in manifest["saes"]]
        layer = args.layer if args.layer is not None else layers[len(layers) // 2]
        entry = next(e for e in manifest["saes"] if e["layer"] == layer)
        args.sae = SAES / entry["path"]
    sae = load_sae(args.sae)
    name = f"smollm2_{args.sae.name}"
    path = smollm2_gguf_path()
    model, tokenizer = jc.load(path), jc.io.load_tokenizer(path)
    rows = 8 if args.quick else args.rows
    t0 = time.perf_counter()
    tokens = token_sequences(tokenizer, args.seq, rows, skip=args.skip)
    t_tok = time.perf_counter() - t0

    t0 = time.perf_counter()
    first = feature_dashboard(model, sae, tokens, tokenizer=tokenizer, start=1,
                              n_features=args.frequent, progress=True)  # fmt: skip
    t_first = time.perf_counter() - t0
    freq = first.frequency
    band = np.flatnonzero((freq >= 1e-3) & (freq <= 2e-2))
    rng = np.random.default_rng(0)
    sampled = rng.choice(band, min(args.sampled, band.size), replace=False) if band.size else []
    features = [c.feature for c in first.cards] + sorted(int(f) for f in sampled)
    t0 = time.perf_counter()
    dash = feature_dashboard(model, sae, tokens, tokenizer=tokenizer, start=1,
                             features=features, progress=True)  # fmt: skip
    t_second = time.perf_counter() - t0
    title = f"SmolLM2-135M {sae.site}: {sae.architecture} SAE, d_sae {sae.d_sae}"
    folder = OUT / name
    if args.quick:
        folder = C.HERE / "out" / "sae_dashboard_quick"
    t0 = time.perf_counter()
    html = write_html(dash, folder / "dashboard.html", title=title)
    png = plot_dashboard(dash, folder / "dashboard.png", title=title, max_features=6)
    record = {"sae": str(args.sae.relative_to(C.HERE.parent)) if args.sae.is_absolute()
              and C.HERE.parent in args.sae.parents else str(args.sae),
              "corpus_rows": rows, "skip_rows": args.skip, **dash.to_dict()}  # fmt: skip
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    js = atomic_write(folder / "dashboard.json", lambda t: Path(t).write_text(text, "utf-8"))
    t_write = time.perf_counter() - t0
    sizes = {p.name: p.stat().st_size for p in (html, png, js)}
    print(json.dumps({"seconds": [t_tok, t_first, t_second, t_write], "bytes": sizes}))
    if args.quick:
        return
    rel = folder.relative_to(C.HERE.parent)
    live = freq > 0
    cell = lambda s: "`" + s.replace("|", "\\|").replace("`", "'") + "`"  # noqa: E731
    table_rows = [[c.feature, f"{100 * c.frequency:.3g}%", f"{c.max_activation:.3g}",
                   cell(", ".join(repr(s) for s, _, _ in c.logits_up[:3])),
                   cell(repr(_marked(c.contexts[0]))) if c.contexts else "-"]
                  for c in dash.cards]  # fmt: skip
    metrics = ""
    if entry:
        metrics = (f"FVU {entry['fvu']:.3f}, L0 {entry['l0']:.1f}, loss recovered "
                   f"{entry['loss_recovered']:.3f} (from MANIFEST.json); ")  # fmt: skip
    body = "\n".join([
        f"## Feature dashboard: {title} (issue 14)",
        "",
        f"`{rel}/dashboard.html` (one self-contained page, {sizes['dashboard.html'] / 1e3:.0f} "
        f"kB), `dashboard.png` (summary of the first 6), `dashboard.json` (the numbers). "
        f"SAE `{record['sae']}`: {metrics}on {dash.n_tokens:,} held-out tokens ({rows} rows "
        f"of {args.seq} after the {args.skip} rows the training script read; BOS left out) "
        f"{int(live.sum())} of {sae.d_sae} features fire, median firing rate of the live ones "
        f"{100 * float(np.median(freq[live])):.2g}%. Shown: the {args.frequent} most frequent "
        f"and {len(sampled)} sampled among the {band.size} firing on 0.1-2 % of tokens. "
        f"Time: {t_first:.0f} s for the first pass (SmolLM2 compile and run, every feature's "
        f"statistics), {t_second:.0f} s for the second (cached program), {t_write:.1f} s to "
        f"write.",
        "",
        C.table(["feature", "fires on", "max", "top logit effects",
                 "top context (⟦max token⟧)"], table_rows),
        "",
        C.machine_markdown(info),
    ])  # fmt: skip
    print(body)
    C.write_section("sae_dashboard_smollm2", body)


if __name__ == "__main__":
    main()
