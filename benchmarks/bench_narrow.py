"""The compiled abstraction is smaller and faster (issue 6; Asiaee 2026, arXiv 2602.24266;
METHODS.md §1.2): `jaxcirc.models.narrow` vs the masked full model vs the full model (CPU).

A GPT-2-small-shaped random model (`_common.GPT2_SMALL`, weights as in the other benchmarks).
Abstractions: in every layer, the MLP neurons (`blocks.{l}.mlp.hook_post`) kept at 50% or 25%
and the heads (`blocks.{l}.attn.hook_z`) at 50%, the kept sets drawn at random (seeded; the
speed does not depend on which units are kept), every pruned unit replaced by a constant
(`Replacement.constants`, random values). Three models run the same tokens:

- full: the model itself;
- masked: `jaxcirc.methods._units.replace(model, replacements)`, the full architecture with
  each site passed through `Replacement.apply` (what pruning evaluates before compiling);
- narrowed: `jaxcirc.models.narrow(model, replacements)`, pruned units dropped and their
  constants folded into `b_out` / `b_O`.

Each model runs in its own process (`--side`), alternating over `--rounds`: forward of
`jax.vmap(model)` on a batch of tokens under `eqx.filter_jit`, `block_until_ready`, compile
time, then the median of `--repeat` steady-state calls. The narrowed logits must equal the
masked ones (max |diff| printed; the script exits above 1e-3). Usage:
`python benchmarks/bench_narrow.py [--quick] [--batch B] [--seq T] [--repeat N] [--rounds R]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

BATCH, SEQ, SEED = 4, 128, 0
CONFIGS = {"mlp50_heads50": (0.5, 0.5), "mlp25_heads50": (0.25, 0.5)}
ATOL = 1e-3


def titles(name: str) -> str:
    mlp, heads = CONFIGS[name]
    return f"MLP {mlp:.0%}, heads {heads:.0%}"


# ---------------------------------------------------------------- the abstractions (parent)


def replacement_arrays(sz: dict, mlp: float, heads: float, seed: int) -> dict[str, np.ndarray]:
    """Random keep sets (exactly the fraction, per layer) and random constants, by site."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(sz["n_layers"]):
        for site, n, d, frac in (
            (f"blocks.{layer}.mlp.hook_post", sz["d_mlp"], 1, mlp),
            (f"blocks.{layer}.attn.hook_z", sz["n_heads"], sz["d_head"], heads),
        ):
            keep = np.zeros(n, bool)
            keep[rng.choice(n, max(1, round(frac * n)), replace=False)] = True
            out[f"{site}/keep"] = keep
            out[f"{site}/constant"] = (0.1 * rng.standard_normal((n, d))).astype(np.float32)
    return out


def replacements(arrays: dict[str, np.ndarray]) -> list:
    from jaxcirc.methods._replacement import Replacement

    sites = dict.fromkeys(k.split("/")[0] for k in arrays)
    return [Replacement.constants(s, arrays[f"{s}/keep"], arrays[f"{s}/constant"]) for s in sites]


def n_params(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """Parameters in all, and in the blocks (embeddings and final LayerNorm excluded)."""
    total = sum(int(v.size) for v in arrays.values())
    blocks = sum(int(v.size) for k, v in arrays.items() if k.startswith("blocks."))
    return total, blocks


def write_narrowed(sz: dict, workdir: Path) -> dict:
    """Each configuration's replacement arrays and narrowed model, written to `workdir`;
    returns parameter counts."""
    import jaxcirc as jc

    model = c.load_jaxcirc(sz, workdir / "weights.npz")
    counts = {"full": n_params(jc.models.state_dict(model))}
    for i, (name, (mlp, heads)) in enumerate(CONFIGS.items()):
        arrays = replacement_arrays(sz, mlp, heads, SEED + 1 + i)
        np.savez(workdir / f"{name}_replacements.npz", **arrays)
        small = jc.models.narrow(model, replacements(arrays))
        state = jc.models.state_dict(small)
        np.savez(workdir / f"{name}_narrow.npz", **state)
        (workdir / f"{name}_narrow.json").write_text(small.cfg.to_json())
        counts[name] = n_params(state)
        reps = replacements(arrays)
        counts[f"{name}_replacement"] = sum(
            int(r.offset.size + r.mix.size + r.keep.size) for r in reps
        )
    return counts


# ---------------------------------------------------------------- one side: one model


def load_side(sz: dict, workdir: Path, side: str):
    import jaxcirc as jc
    from jaxcirc.methods._units import replace

    if side == "full":
        return c.load_jaxcirc(sz, workdir / "weights.npz")
    kind, name = side.split("_", 1)
    if kind == "masked":
        with np.load(workdir / f"{name}_replacements.npz") as f:
            arrays = {k: f[k] for k in f.files}
        return replace(c.load_jaxcirc(sz, workdir / "weights.npz"), replacements(arrays))
    cfg = jc.models.TransformerConfig.from_json((workdir / f"{name}_narrow.json").read_text())
    with np.load(workdir / f"{name}_narrow.npz") as f:
        return jc.models.from_state_dict(cfg, {k: f[k] for k in f.files})


def side_run(args, sz: dict, workdir: Path) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    baseline = c.peak_rss_mib()
    model = load_side(sz, workdir, args.side)
    tokens = jnp.asarray(np.load(workdir / "tokens.npy"))

    @eqx.filter_jit
    def forward(m, t):
        return jax.vmap(m)(t)

    compile_s = c.compile_clock()
    (first,), _ = c.timed(lambda: jax.block_until_ready(forward(model, tokens)), 1)
    compiled = compile_s()
    steady, logits = c.timed(lambda: jax.block_until_ready(forward(model, tokens)), args.repeat)
    c.finish_side(
        workdir,
        args.side,
        {"logits": np.asarray(logits)},
        baseline_rss_mib=baseline,
        compile_s=compiled,
        first_s=first,
        steady_s=steady,
    )


def side_paired(args, sz: dict, workdir: Path) -> None:
    """The full model and each narrowed one in one process, called in turn (full, narrowed,
    narrowed, full, ...), so each ratio's two calls share the machine's load at that moment."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    names = [f"narrow_{n}" for n in CONFIGS]
    models = {s: load_side(sz, workdir, s) for s in ["full", *names]}
    tokens = jnp.asarray(np.load(workdir / "tokens.npy"))

    @eqx.filter_jit
    def forward(m, t):
        return jax.vmap(m)(t)

    def call(side):
        return c.timed(lambda: jax.block_until_ready(forward(models[side], tokens)), 1)[0][0]

    for side in models:
        call(side)  # compile
    ratios = {n: [] for n in names}
    for _ in range(args.repeat * args.rounds):
        for n in names:
            full = call("full")
            ratios[n].append(full / call(n))
    c.finish_side(workdir, "paired", {}, ratios=ratios)


# ---------------------------------------------------------------- report


def report(sz, args, info, counts, reports, errs) -> str:
    full = reports["full"]
    full_med = statistics.median(full["steady_s"])
    total, blocks = counts["full"]
    unembed = sz["d_vocab"] * sz["d_model"]
    rows = [
        [
            "full",
            f"{total / 1e6:.1f} M",
            f"{blocks / 1e6:.1f} M",
            c.ms(full["compile_s"]),
            c.ms(full_med),
            "1.00×",
            "1.00×",
            f"{full['peak_rss_mib']:,.0f} MiB",
            "—",
        ]
    ]
    for name in CONFIGS:
        for kind in ("masked", "narrow"):
            r = reports[f"{kind}_{name}"]
            med = statistics.median(r["steady_s"])
            paired = "—"
            if kind == "narrow":
                q = np.quantile(reports["paired"]["ratios"][f"narrow_{name}"], [0.25, 0.5, 0.75])
                paired = f"**{q[1]:.2f}×** ({q[0]:.2f}–{q[2]:.2f})"
            if kind == "masked":
                extra = counts[f"{name}_replacement"]
                params = f"{total / 1e6:.1f} M + {extra / 1e6:.1f} M replacement"
                blk, err = f"{blocks / 1e6:.1f} M", "—"
            else:
                t, b = counts[name]
                params, blk = (
                    f"{t / 1e6:.1f} M ({t / total:.0%})",
                    f"{b / 1e6:.1f} M ({b / blocks:.0%})",
                )
                err = f"{errs[name]:.1e}"
            rows.append(
                [
                    f"{titles(name)}: {'masked' if kind == 'masked' else '**narrowed**'}",
                    params,
                    blk,
                    c.ms(r["compile_s"]),
                    c.ms(med),
                    f"{full_med / med:.2f}× ({c.speedups(full, r)})",
                    paired,
                    f"{r['peak_rss_mib']:,.0f} MiB",
                    err,
                ]
            )
    header = [
        "model",
        "parameters",
        "in blocks",
        "compile",
        f"forward, median of {len(full['steady_s'])}",
        "speed vs full: medians (per round)",
        "speed vs full, paired calls: median (quartiles)",
        "peak RSS",
        "max abs logit diff vs masked",
    ]
    shape = (
        f"{sz['n_layers']} layers, d_model {sz['d_model']}, {sz['n_heads']} heads × "
        f"{sz['d_head']}, d_mlp {sz['d_mlp']}, d_vocab {sz['d_vocab']}"
    )
    return "\n\n".join(
        [
            "## Compiled abstraction: `narrow` vs masked vs full model (issue 6, CPU)",
            c.machine_markdown(info),
            f"Random GPT-2-small-shaped weights ({shape}), float32, forward of "
            f"`jax.vmap(model)` on {args.batch} × {args.seq} random tokens under "
            f"`eqx.filter_jit`, `block_until_ready`; {args.rounds} round(s) of one process per "
            f"model (alternating), {args.repeat} steady-state calls each after the first. "
            "Abstractions: in every layer a random kept set of MLP neurons and of heads, each "
            "pruned unit a random constant (`Replacement.constants`). Masked = "
            "`jaxcirc.methods._units.replace(model, replacements)` (same weights, each site "
            "through `Replacement.apply`: a where plus a dense product with the "
            "`[n_units·d_unit]²` mix matrix, which is zero for constants but still multiplied); "
            "narrowed = `jaxcirc.models.narrow(model, replacements)`. The narrowed logits equal "
            f"the masked ones within {ATOL} (required; max |diff| in the table; logits have "
            f"std {errs['logit_std']:.2g}). Paired: one more process holds the full and both "
            "narrowed models and calls them in turn (full, narrowed) "
            f"{args.repeat * args.rounds} times per configuration after compiling; each "
            "ratio's two calls share the machine's load of that moment (this machine is shared, "
            "so the separate-process medians move with other jobs).",
            c.table(header, rows),
            "The embedding and the unembedding (each "
            f"{sz['d_vocab']} × {sz['d_model']}, separate arrays) are not narrowed, so the "
            "whole-model ratios are bounded by them; the unembedding product is a fixed share "
            "of every forward. The masked model multiplies each site by its (zero) mix matrix, "
            "so it is slower than the full model, most with the 3072² MLP mixes. Expected "
            "speed-up from the weights each token multiplies (block weights + unembedding): "
            + ", ".join(
                f"{titles(n)} {(blocks + unembed) / (counts[n][1] + unembed):.2f}×" for n in CONFIGS
            )
            + f". Narrowed vs masked logits within 1e-5: "
            f"{'yes' if max(errs[n] for n in CONFIGS) <= 1e-5 else 'NO'}.",
        ]
    )


def run(args, sz: dict) -> tuple[dict, dict, dict, dict]:
    """Write the inputs, run every side, compare the logits."""
    info = c.machine()
    sides = ["full"] + [f"{k}_{n}" for n in CONFIGS for k in ("masked", "narrow")]
    with tempfile.TemporaryDirectory(prefix="jaxcirc-bench-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        c.write_weights(sz, workdir / "weights.npz", seed=SEED)
        np.save(workdir / "tokens.npy", c.tokens(args.batch, args.seq, sz["d_vocab"], SEED))
        counts = write_narrowed(sz, workdir)
        print(f"weights and narrowed models written in {time.perf_counter() - t:.1f} s")
        print(json.dumps(counts))
        sys.argv += ["--batch", str(args.batch), "--seq", str(args.seq)]
        reports = c.run_sides(__file__, workdir, sides, args.rounds)
        reports.update(c.run_sides(__file__, workdir, ["paired"], 1))
        errs = {}
        for name in CONFIGS:
            masked = c.load_output(workdir, f"masked_{name}", "logits")
            narrowed = c.load_output(workdir, f"narrow_{name}", "logits")
            errs[name] = c.check_close(narrowed, masked, ATOL, f"{name}: narrowed vs masked")
        errs["logit_std"] = float(np.std(c.load_output(workdir, "full", "logits")))
    return info, counts, reports, errs


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--batch", type=int, default=BATCH, help="prompts per forward")
    p.add_argument("--seq", type=int, default=SEQ, help="tokens per prompt")
    p.add_argument("--save", help="write the raw reports (JSON) here")
    p.add_argument("--load", help="render RESULTS from reports saved by --save (no run)")
    args = p.parse_args()
    sz = c.sizes(args.quick)
    if args.side:
        side = side_paired if args.side == "paired" else side_run
        return side(args, sz, Path(args.workdir))
    if args.quick:
        args.batch, args.seq = min(args.batch, 2), min(args.seq, 32)
    if args.load:  # re-render a saved run
        saved = json.loads(Path(args.load).read_text())
        info, counts, reports, errs = (saved[k] for k in ("info", "counts", "reports", "errs"))
        args.batch, args.seq, args.repeat, args.rounds = saved["shape"]
    else:
        info, counts, reports, errs = run(args, sz)
        if args.save:
            shape = [args.batch, args.seq, args.repeat, args.rounds]
            saved = dict(info=info, counts=counts, reports=reports, errs=errs, shape=shape)
            Path(args.save).write_text(json.dumps(saved))
    text = report(sz, args, info, counts, reports, errs)
    c.publish("narrow", text, record=not args.quick)


if __name__ == "__main__":
    main()
