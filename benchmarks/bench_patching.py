"""Activation patching: `resid_pre` at every layer × position, jaxcirc vs TransformerLens.

jaxcirc's `patching.sweep` against `transformer_lens.patching.get_act_patch_resid_pre` on the
same random GPT-2-small-shaped weights, 8 clean/corrupt prompt pairs of 16 tokens, metric the
logit difference of two tokens at the last position. jaxcirc runs twice: like for like (a plain
metric function: every position is unembedded, as TransformerLens does), and with a metric that
declares the one position it reads (position 15, as `jaxcirc.tasks` metrics declare theirs), so
only that position is unembedded. The sweeps must agree to 1e-3 before any timing is reported.
Usage: `python benchmarks/bench_patching.py [--quick] [--repeat N] [--tl-repeat N]`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

BATCH, SEQ = 8, 16
ANSWER, WRONG = 11, 22
ATOL = 1e-3
JAX_SIDES = {
    "jax": "jaxcirc `sweep`, full logits",
    "jax_read": "jaxcirc `sweep`, metric reads position 15",
}


def logit_diff(logits):
    """Mean logit difference at the last position; works on torch and jax arrays alike."""
    return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()


def last_position_metric():
    """`logit_diff` as a metric that declares it reads position `SEQ - 1` only: the sweep
    unembeds that position and calls `on_positions(logits [batch, 1, d_vocab])`."""
    import equinox as eqx
    import jax.numpy as jnp

    class LastPosition(eqx.Module):
        def positions(self, batch, seq):
            return jnp.full((batch, 1), seq - 1)

        def on_positions(self, logits):
            return (logits[:, 0, ANSWER] - logits[:, 0, WRONG]).mean()

        def __call__(self, logits):
            return logit_diff(logits)

    return LastPosition()


def load_pair(workdir: Path, to):
    return tuple(to(np.load(workdir / f"{name}.npy")) for name in ("clean", "corrupt"))


def side_jax(args, sz: dict, workdir: Path) -> None:
    import jax.numpy as jnp

    import jaxcirc as jc

    baseline = c.peak_rss_mib()
    model = c.load_jaxcirc(sz, workdir / "weights.npz")
    clean, corrupt = load_pair(workdir, jnp.asarray)
    metric = logit_diff
    if args.side == "jax_read":
        metric = last_position_metric()
        _, how = jc.patching._sweep._read_plan(metric, None, BATCH, SEQ)
        if how != "declared":
            sys.exit(f"the sweep does not read the metric's declared positions ({how})")
    run = lambda: jc.patching.sweep(model, clean, corrupt, metric)  # blocks
    compile_s = c.compile_clock()
    (first,), _ = c.timed(run, 1)
    steady, out = c.timed(run, args.repeat)
    c.finish_side(
        workdir,
        args.side,
        {"sweep": out},
        baseline_rss_mib=baseline,
        compile_s=compile_s(),
        first_s=first,
        steady_s=steady,
    )


def side_torch(args, sz: dict, workdir: Path) -> None:
    torch = c.setup_torch()
    from transformer_lens import patching

    baseline = c.peak_rss_mib()
    model = c.load_tl(sz, workdir / "weights.npz")
    clean, corrupt = load_pair(workdir, torch.from_numpy)

    def run():  # the clean run is timed too: jaxcirc's sweep includes it
        _, cache = model.run_with_cache(clean)
        return patching.get_act_patch_resid_pre(model, corrupt, cache, logit_diff)

    with torch.no_grad():
        model(corrupt)  # warm-up
        steady, out = c.timed(run, args.tl_repeat)
    c.finish_side(
        workdir, "torch", {"sweep": out.numpy()}, baseline_rss_mib=baseline, steady_s=steady
    )


def report(sz: dict, info: dict, reports: dict, errs: dict) -> str:
    tl = reports["torch"]
    tl_med = statistics.median(tl["steady_s"])
    med = {s: statistics.median(reports[s]["steady_s"]) for s in JAX_SIDES}

    def row(label, cell, tl_cell="—"):
        return [label, *(cell(s) for s in JAX_SIDES), tl_cell]

    def mib(key):
        return lambda s: f"{reports[s][key]:,.0f} MiB"

    runs = f"{len(reports['jax']['steady_s'])} jaxcirc / {len(tl['steady_s'])} TL runs"
    rows = [
        row("compile (trace + lower + XLA)", lambda s: c.ms(reports[s]["compile_s"])),
        row("first call (incl. compile)", lambda s: c.ms(reports[s]["first_s"])),
        row(f"steady state, median ({runs})", lambda s: c.ms(med[s]), c.ms(tl_med)),
        row("**speed-up vs TL, steady state**", lambda s: f"**{tl_med / med[s]:.1f}×**", "1×"),
        row(
            "speed-up vs TL, best run of each",
            lambda s: f"{min(tl['steady_s']) / min(reports[s]['steady_s']):.1f}×",
            "1×",
        ),
        row("speed-up vs TL, per round", lambda s: c.speedups(tl, reports[s], digits=1)),
        row(
            "speed-up vs TL, jaxcirc incl. compile",
            lambda s: f"{tl_med / reports[s]['first_s']:.1f}×",
            "1×",
        ),
        row("peak RSS (own process)", mib("peak_rss_mib"), f"{tl['peak_rss_mib']:,.0f} MiB"),
        row("RSS after imports", mib("baseline_rss_mib"), f"{tl['baseline_rss_mib']:,.0f} MiB"),
        row("max abs diff vs TL", lambda s: f"{errs[s]:.1e}"),
    ]
    ratio, ratio_read = tl_med / med["jax"], tl_med / med["jax_read"]
    return "\n\n".join(
        [
            "## Activation patching: jaxcirc `patching.sweep` vs TransformerLens "
            "`get_act_patch_resid_pre` (CPU)",
            c.machine_markdown(info),
            f"Random GPT-2-small-shaped weights ({sz['n_layers']} layers, d_model {sz['d_model']}, "
            f"{sz['n_heads']} heads, d_mlp {sz['d_mlp']}, d_vocab {sz['d_vocab']}), float32; "
            f"{BATCH} "
            f"clean/corrupt prompt pairs of {SEQ} tokens; `resid_pre` patched at every layer × "
            f"position ({sz['n_layers'] * SEQ} patched runs of the batch); metric: mean logit "
            f"difference of tokens {ANSWER} and {WRONG} at the last position. jaxcirc's default "
            "sweep: position buckets (a patch at position p recomputes positions from its "
            "bucket's "
            f"first on), the layers unrolled as `from_state_dict` builds the model (block by "
            f'block). "full logits": a plain metric '
            f'function, so every position is unembedded as in TL (like for like); "metric reads '
            f'position {SEQ - 1}": the metric declares that position (`positions` / '
            f"`on_positions`), so only it is unembedded. TL's timing includes the clean "
            "`run_with_cache` (jaxcirc's `sweep` does its clean run itself); TL is warmed up "
            "by one "
            "forward. Each column runs in its own process (alternated over rounds, samples "
            "pooled); "
            f"`torch.set_num_threads({c.CORES})`. Both jaxcirc sweeps agree with TL within {ATOL}.",
            c.table(["", *JAX_SIDES.values(), "TransformerLens"], rows),
            f"**Target (≥ 8× faster than TL on CPU, steady state, with the metric's positions): "
            f"{'met' if ratio_read >= 8 else 'MISSED'}** — {ratio_read:.1f}× "
            f"({c.ms(med['jax_read'])} vs {c.ms(tl_med)}). Like for like (every position "
            f"unembedded, as TL): {ratio:.1f}×.",
        ]
    )


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--tl-repeat", type=int, default=1, help="timed TransformerLens sweeps")
    p.set_defaults(repeat=1)  # a full-size sweep takes minutes on a laptop CPU, either side
    args = p.parse_args()
    sz = c.sizes(args.quick)
    if args.side:
        side = side_torch if args.side == "torch" else side_jax
        return side(args, sz, Path(args.workdir))
    info = c.machine()
    with tempfile.TemporaryDirectory(prefix="jaxcirc-bench-") as tmp:
        workdir = Path(tmp)
        c.write_weights(sz, workdir / "weights.npz")
        np.save(workdir / "clean.npy", c.tokens(BATCH, SEQ, sz["d_vocab"], seed=0))
        np.save(workdir / "corrupt.npy", c.tokens(BATCH, SEQ, sz["d_vocab"], seed=1))
        reports = c.run_sides(__file__, workdir, [*JAX_SIDES, "torch"], args.rounds)
        expected = c.load_output(workdir, "torch", "sweep")
        errs = {
            s: c.check_close(c.load_output(workdir, s, "sweep"), expected, ATOL, JAX_SIDES[s])
            for s in JAX_SIDES
        }
    text = report(sz, info, reports, errs)
    c.publish("bench_patching", text, record=not args.quick)


if __name__ == "__main__":
    main()
