"""Hutchinson curvature of every MLP neuron: jaxcirc `unit_curvature` vs `torch.func` (CPU).

The workload (METHODS.md §1.4 at GPT-2 scale): a GPT-2-small-shaped random model, 16 prompts
× 64 random tokens, next-token cross-entropy summed over positions (the last position is
ignored). The units are every MLP neuron of every layer at once,
`acts = {"blocks.{l}.mlp.hook_post": [16, 64, 3072]}` (2.4 M units per prompt). The function
from activations to logits moves each site by an additive perturbation,
`jc.intervene(model, {site: jc.Add(a[site] - acts[site])})`, so a change of one neuron runs
through every later layer, its MLPs included. Diagonal curvature by Hutchinson with 8 Rademacher
probes, `mean v ⊙ Hv`, one forward-over-reverse HVP of the batch-summed loss per probe.

- jaxcirc: `jaxcirc.solvers.unit_curvature(fn, acts, (tokens, acts), labels,
  method="hutchinson", probes=8, key=key)` (one compiled program: the primal pass is
  linearised once and each probe runs the tangent pass).
- PyTorch: a hand-written functional GPT-2 forward on the same float32 weights (its logits
  must match jaxcirc's to 1e-4 first), `delta` added after the MLP activation, and per probe
  `torch.func.jvp(torch.func.grad(loss), (delta,), (v,))` (forward-over-reverse, as jaxcirc;
  its forward+backward is `torch.autograd.grad`),
  with jaxcirc's probe vectors (the same ±1 signs, passed as bits), so the two diagonal
  estimates must agree.

Reported: each side's time for one forward+backward of the same loss (loss and gradient
w.r.t. all the activations), the 8-probe Hutchinson time, the time per probe as a multiple
of that forward+backward (target ≤ 3×), the time ratio, and each side's peak RSS (its own
process). Usage: `python benchmarks/bench_curvature.py [--quick] [--batch B] [--seq T]
[--probes P] [--repeat N] [--rounds R]`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

BATCH, SEQ, PROBES, SEED = 16, 64, 8, 0
LOGITS_ATOL = 1e-4
SIDES = ("jax", "torch")


def site(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def next_token_labels(tokens: np.ndarray) -> np.ndarray:
    """`labels[n, t] = tokens[n, t + 1]`; the last position has no target (-1)."""
    return np.concatenate([tokens[:, 1:], np.full((len(tokens), 1), -1)], axis=1)


# ---------------------------------------------------------------- the jaxcirc side


def side_jax(args, sz: dict, workdir: Path) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import jaxcirc as jc
    from jaxcirc.solvers import unit_curvature
    from jaxcirc.solvers._curvature import rademacher

    class Downstream(eqx.Module):
        """Logits on `tokens` with each site moved to `a[site]` (an additive perturbation)."""

        model: jc.Transformer

        def __call__(self, a, x):
            tokens, base = x
            return jc.intervene(self.model, {s: jc.Add(a[s] - base[s]) for s in a})(tokens)

    baseline = c.peak_rss_mib()
    model = c.load_jaxcirc(sz, workdir / "weights.npz")
    tokens = jnp.asarray(np.load(workdir / "tokens.npy"))
    labels = jnp.asarray(next_token_labels(np.load(workdir / "tokens.npy")))
    sites = [site(layer) for layer in range(sz["n_layers"])]

    @eqx.filter_jit
    def clean(model, tokens):
        logits, acts = jax.vmap(model.run)(tokens)
        return logits, {s: acts[s] for s in sites}

    logits, acts = clean(model, tokens)
    fn = Downstream(model)
    inputs = (tokens, acts)

    # one forward+backward of the same loss: its value and gradient w.r.t. every activation
    @eqx.filter_jit
    def loss_and_grad(fn, a, inputs, labels):
        def total(a):
            z = jax.vmap(fn)(a, inputs).astype(jnp.float32)
            logq = jax.nn.log_softmax(z)
            nll = -jnp.take_along_axis(logq, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
            return jnp.sum(jnp.where(labels >= 0, nll, 0.0))

        return jax.value_and_grad(total)(a)

    def fwd_bwd():
        return jax.block_until_ready(loss_and_grad(fn, acts, inputs, labels))

    key = jax.random.key(SEED)

    def hutchinson(probes):
        return lambda: unit_curvature(
            fn, acts, inputs, labels, method="hutchinson", probes=probes, key=key
        )

    compile_s = c.compile_clock()
    (fb_first,), _ = c.timed(fwd_bwd, 1)
    fb_steady, (fb_loss, fb_grad) = c.timed(fwd_bwd, args.repeat)
    fb_compile = compile_s()
    (first,), _ = c.timed(hutchinson(args.probes), 1)
    hut_compile = compile_s() - fb_compile
    steady, result = c.timed(hutchinson(args.probes), args.repeat)
    one_steady = []
    if args.probes > 1:  # the marginal cost of a probe: (t(P) - t(1)) / (P - 1)
        c.timed(hutchinson(1), 1)
        one_steady, _ = c.timed(hutchinson(1), args.repeat)

    # the probe vectors, as bits in the torch side's layout [probe, layer, batch, seq, d_mlp]
    like = {s: acts[s][0] for s in sites}
    unravel = jax.flatten_util.ravel_pytree(like)[1]
    size = sum(x.size for x in like.values())

    @jax.jit
    def probe_bits(s):
        v = jax.vmap(lambda n: unravel(rademacher(key, n, s, size)))(jnp.arange(len(tokens)))
        return jnp.stack([v[name] for name in sites]) > 0

    bits = np.stack([np.packbits(np.asarray(probe_bits(s))) for s in range(args.probes)])
    np.save(workdir / "probe_bits.npy", bits)

    stack = lambda tree: np.stack([np.asarray(tree[s]) for s in sites])
    g_err = max(float(jnp.max(jnp.abs(fb_grad[s] - result.grad[s]))) for s in sites)
    c.finish_side(
        workdir,
        "jax",
        {
            "logits": logits[:2],
            "curv": stack(result.curv),
            "grad": stack(result.grad),
            "loss": result.loss,
        },
        baseline_rss_mib=baseline,
        fb_first_s=fb_first,
        fb_steady_s=fb_steady,
        fb_compile_s=fb_compile,
        hut_first_s=first,
        hut_compile_s=hut_compile,
        steady_s=steady,
        one_probe_s=one_steady,
        fb_vs_curvature_grad_maxdiff=g_err,
        fb_loss=float(fb_loss),
    )


# ---------------------------------------------------------------- the PyTorch side


def gpt2_logits(P: dict, tokens, delta, sz: dict, eps: float = 1e-5):
    """GPT-2 (jaxcirc's layout and numerics) with `delta[l]` added after layer `l`'s MLP
    activation: `[batch, seq] -> [batch, seq, d_vocab]`, a pure function of `delta`."""
    import torch
    import torch.nn.functional as F

    d_model, seq = sz["d_model"], tokens.shape[1]
    ln = lambda x, name: F.layer_norm(x, (d_model,), P[f"{name}.w"], P[f"{name}.b"], eps)
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    x = P["embed.W_E"][tokens] + P["pos_embed.W_pos"][:seq]
    for layer in range(sz["n_layers"]):
        p = lambda name, layer=layer: P[f"blocks.{layer}.{name}"]
        h = ln(x, f"blocks.{layer}.ln1")
        q, k, v = (
            torch.einsum("btm,hmd->bthd", h, p(f"attn.W_{n}")) + p(f"attn.b_{n}") for n in "QKV"
        )
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / sz["d_head"] ** 0.5
        scores = scores.masked_fill(~causal, torch.finfo(torch.float32).min)
        z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
        x = x + torch.einsum("bqhd,hdm->bqm", z, p("attn.W_O")) + p("attn.b_O")
        h = ln(x, f"blocks.{layer}.ln2")
        post = F.gelu(h @ p("mlp.W_in") + p("mlp.b_in"), approximate="tanh") + delta[layer]
        x = x + post @ p("mlp.W_out") + p("mlp.b_out")
    return ln(x, "ln_final") @ P["unembed.W_U"]


def side_torch(args, sz: dict, workdir: Path) -> None:
    torch = c.setup_torch()
    import torch.nn.functional as F
    from torch.func import grad, jvp

    baseline = c.peak_rss_mib()
    with np.load(workdir / "weights.npz") as arrays:
        P = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    tokens_np = np.load(workdir / "tokens.npy")
    tokens = torch.from_numpy(tokens_np)
    labels = torch.from_numpy(next_token_labels(tokens_np))
    batch, seq = tokens.shape
    shape = (sz["n_layers"], batch, seq, sz["d_mlp"])
    delta = torch.zeros(shape)

    with torch.no_grad():  # the forward must match jaxcirc's before anything is timed
        ours = torch.from_numpy(c.load_output(workdir, "jax", "logits"))
        err = float((gpt2_logits(P, tokens[:2], delta[:, :2], sz) - ours).abs().max())
    if not err <= LOGITS_ATOL:
        sys.exit(f"torch forward: logits differ from jaxcirc's by {err:.2e} > {LOGITS_ATOL}")

    def loss(delta):
        logits = gpt2_logits(P, tokens, delta, sz)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
            ignore_index=-1, reduction="sum",
        )  # fmt: skip

    bits = np.load(workdir / "probe_bits.npy")
    n_units = int(np.prod(shape))

    def probe(s):
        signs = np.unpackbits(bits[s], count=n_units).reshape(shape)
        return torch.from_numpy(signs).float() * 2 - 1

    def fwd_bwd():
        d = delta.clone().requires_grad_()
        value = loss(d)
        return torch.autograd.grad(value, d)[0], value.detach()

    hvp = lambda v: jvp(grad(loss), (delta,), (v,))[1]

    def hutchinson(probes):
        def run():
            h = torch.zeros(shape)
            for s in range(probes):
                v = probe(s)
                h += v * hvp(v)
            return h / probes

        return run

    fb_steady, (g, value) = c.timed(fwd_bwd, args.repeat + 1)
    fb_steady = fb_steady[1:]  # the first call warms up the allocator
    steady, curv = c.timed(hutchinson(args.probes), args.repeat)
    one_steady = c.timed(hutchinson(1), args.repeat)[0] if args.probes > 1 else []
    per_sample = F.cross_entropy(
        gpt2_logits(P, tokens, delta, sz).detach().transpose(1, 2), labels,
        ignore_index=-1, reduction="none",
    ).sum(1)  # fmt: skip
    c.finish_side(
        workdir,
        "torch",
        {"curv": curv.numpy(), "grad": g.numpy(), "loss": per_sample.numpy()},
        baseline_rss_mib=baseline,
        logits_maxdiff=err,
        fb_steady_s=fb_steady,
        steady_s=steady,
        one_probe_s=one_steady,
        fb_loss=float(value),
    )


# ---------------------------------------------------------------- the parent


def compare(workdir: Path) -> dict[str, float]:
    """Relative max differences of jaxcirc's and torch's curvature, gradient and losses."""
    errs = {}
    for name in ("curv", "grad", "loss"):
        a, b = c.load_output(workdir, "jax", name), c.load_output(workdir, "torch", name)
        if a.shape != b.shape:
            sys.exit(f"{name}: shapes differ, {a.shape} vs {b.shape}")
        errs[name] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    return errs


def report(args, sz, info, jx, pt, errs) -> str:
    med = statistics.median
    j_fb, t_fb = med(jx["fb_steady_s"]), med(pt["fb_steady_s"])
    j_h, t_h = med(jx["steady_s"]), med(pt["steady_s"])
    P = args.probes

    def marginal(r, total):
        return (total - med(r["one_probe_s"])) / (P - 1) if r["one_probe_s"] else float("nan")

    j_m, t_m = marginal(jx, j_h), marginal(pt, t_h)
    j_per, t_per = j_h / P, t_h / P
    rows = [
        ["forward+backward (loss and its gradient w.r.t. all MLP acts)", c.ms(j_fb), c.ms(t_fb)],
        [f"Hutchinson, {P} probes (grad, loss and curvature)", c.ms(j_h), c.ms(t_h)],
        ["Hutchinson, 1 probe", c.ms(med(jx["one_probe_s"])), c.ms(med(pt["one_probe_s"]))]
        if jx["one_probe_s"]
        else None,
        [
            f"**time per probe ({P}-probe time / {P}) ÷ forward+backward**",
            f"**{j_per / j_fb:.2f}×**",
            f"{t_per / t_fb:.2f}×",
        ],  # fmt: skip
        [
            "marginal probe ((t(P) − t(1)) / (P − 1)) ÷ forward+backward",
            f"{j_m / j_fb:.2f}×",
            f"{t_m / t_fb:.2f}×",
        ],  # fmt: skip
        [
            "compile: forward+backward / Hutchinson program",
            f"{c.ms(jx['fb_compile_s'])} / {c.ms(jx['hut_compile_s'])}",
            "—",
        ],  # fmt: skip
        ["Hutchinson first call (incl. compile)", c.ms(jx["hut_first_s"]), "—"],
        ["**speed-up vs torch.func, Hutchinson steady state**", f"**{t_h / j_h:.2f}×**", "1×"],
        [
            "peak RSS (own process)",
            f"{jx['peak_rss_mib']:,.0f} MiB",
            f"{pt['peak_rss_mib']:,.0f} MiB",
        ],  # fmt: skip
        [
            "RSS after imports",
            f"{jx['baseline_rss_mib']:,.0f} MiB",
            f"{pt['baseline_rss_mib']:,.0f} MiB",
        ],  # fmt: skip
    ]
    rows = [r for r in rows if r is not None]
    ratio = j_per / j_fb
    units = sz["n_layers"] * args.seq * sz["d_mlp"]
    return "\n\n".join(
        [
            "## Hutchinson curvature of every MLP neuron: jaxcirc `unit_curvature` vs "
            "`torch.func` (CPU)",
            c.machine_markdown(info),
            f"Random GPT-2-small-shaped weights ({sz['n_layers']} layers, d_model "
            f"{sz['d_model']}, d_mlp {sz['d_mlp']}, d_vocab {sz['d_vocab']}); {args.batch} "
            f"prompts × {args.seq} random tokens; next-token cross-entropy summed over "
            f"positions; units: `blocks.{{l}}.mlp.hook_post` of every layer ({units:,} per "
            f"prompt), moved by `jc.Add` so each change runs through every later layer; "
            f"{P} Rademacher probes, one forward-over-reverse HVP of the batch-summed loss per "
            f"probe. torch: a hand-written functional GPT-2 (logits match jaxcirc's within "
            f"{pt['logits_maxdiff']:.1e}), `torch.func.jvp(torch.func.grad(loss))` per probe "
            f"on jaxcirc's probe vectors, `torch.set_num_threads({c.CORES})`. Medians of "
            f"{len(jx['steady_s'])} steady-state runs per side, each side in its own process.",
            c.table(["", "jaxcirc", "torch.func"], rows),
            f"The two diagonal estimates agree (same probes): max |Δ| / max |h| = "
            f"{errs['curv']:.1e}; gradients {errs['grad']:.1e}; per-prompt losses "
            f"{errs['loss']:.1e} (relative). jaxcirc's gradient equals the forward+backward's "
            f"within {jx['fb_vs_curvature_grad_maxdiff']:.1e}.",
            f"Target (time per probe ≤ 3× one forward+backward of the same loss): "
            f"**{'met' if ratio <= 3 else 'MISSED'}** — {ratio:.2f}× "
            f"({c.ms(j_per)} per probe vs {c.ms(j_fb)}).",
        ]
    )


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=BATCH, help="prompts")
    p.add_argument("--seq", type=int, default=SEQ, help="tokens per prompt")
    p.add_argument("--probes", type=int, default=PROBES, help="Rademacher probes")
    p.set_defaults(repeat=2, rounds=1)
    args = p.parse_args()
    sz = c.sizes(args.quick)
    if args.side:
        side = side_jax if args.side == "jax" else side_torch
        return side(args, sz, Path(args.workdir))
    info = c.machine()
    with tempfile.TemporaryDirectory(prefix="jaxcirc-bench-") as tmp:
        workdir = Path(tmp)
        c.write_weights(sz, workdir / "weights.npz", seed=SEED)
        np.save(workdir / "tokens.npy", c.tokens(args.batch, args.seq, sz["d_vocab"], seed=1))
        reports = c.run_sides(__file__, workdir, list(SIDES), args.rounds)
        errs = compare(workdir)
    text = report(args, sz, info, reports["jax"], reports["torch"], errs)
    c.publish("curvature", text, record=not args.quick)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    if "--side" not in sys.argv:
        print(f"total {time.perf_counter() - t0:.0f} s")
