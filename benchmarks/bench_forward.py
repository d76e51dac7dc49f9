"""Forward pass: jaxcirc vs Hugging Face `transformers` GPT2LMHeadModel on PyTorch CPU.

Same random GPT-2-small-shaped weights, same 8 × 128 tokens. The logits must agree to 1e-3
before any timing is reported. Usage: `python benchmarks/bench_forward.py [--quick]`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

BATCH, SEQ = 8, 128
ATOL = 1e-3


def hf_state_dict(arrays, sz: dict) -> dict:
    """jaxcirc GPT-2 weights as a `GPT2LMHeadModel` state dict (Conv1D weights are `x @ W`)."""
    import torch

    H, D, M = sz["n_heads"], sz["d_head"], sz["d_model"]

    def heads(W):  # [n_heads, d_model, d_head] -> [d_model, n_heads * d_head]
        return W.transpose(1, 0, 2).reshape(M, H * D)

    sd = {
        "transformer.wte.weight": arrays["embed.W_E"],
        "transformer.wpe.weight": arrays["pos_embed.W_pos"],
        "transformer.ln_f.weight": arrays["ln_final.w"],
        "transformer.ln_f.bias": arrays["ln_final.b"],
        "lm_head.weight": arrays["embed.W_E"],  # tied
    }
    for layer in range(sz["n_layers"]):
        hf, jc = f"transformer.h.{layer}.", f"blocks.{layer}."
        for hf_ln, jc_ln in (("ln_1", "ln1"), ("ln_2", "ln2")):
            sd[f"{hf}{hf_ln}.weight"] = arrays[f"{jc}{jc_ln}.w"]
            sd[f"{hf}{hf_ln}.bias"] = arrays[f"{jc}{jc_ln}.b"]
        sd[f"{hf}attn.c_attn.weight"] = np.concatenate(
            [heads(arrays[f"{jc}attn.W_{x}"]) for x in "QKV"], axis=1
        )
        sd[f"{hf}attn.c_attn.bias"] = np.concatenate(
            [arrays[f"{jc}attn.b_{x}"].ravel() for x in "QKV"]
        )
        sd[f"{hf}attn.c_proj.weight"] = arrays[f"{jc}attn.W_O"].reshape(H * D, M)
        sd[f"{hf}attn.c_proj.bias"] = arrays[f"{jc}attn.b_O"]
        for hf_name, jc_name in (("c_fc", "in"), ("c_proj", "out")):
            sd[f"{hf}mlp.{hf_name}.weight"] = arrays[f"{jc}mlp.W_{jc_name}"]
            sd[f"{hf}mlp.{hf_name}.bias"] = arrays[f"{jc}mlp.b_{jc_name}"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def side_jax(args, sz: dict, workdir: Path) -> None:
    import jax
    import jax.numpy as jnp

    baseline = c.peak_rss_mib()
    model = c.load_jaxcirc(sz, workdir / "weights.npz")
    tokens = jnp.asarray(np.load(workdir / "tokens.npy"))
    # the model is an argument, not a closure: its weights are not baked in as constants
    forward = jax.jit(lambda m, t: jax.vmap(m)(t))
    run = lambda: forward(model, tokens).block_until_ready()
    compile_s = c.compile_clock()
    (first,), _ = c.timed(run, 1)
    steady, logits = c.timed(run, args.repeat)
    c.finish_side(
        workdir,
        "jax",
        {"logits": logits},
        baseline_rss_mib=baseline,
        compile_s=compile_s(),
        first_s=first,
        steady_s=steady,
    )


def side_torch(args, sz: dict, workdir: Path) -> None:
    torch = c.setup_torch()
    from transformers import GPT2Config, GPT2LMHeadModel

    baseline = c.peak_rss_mib()
    cfg = GPT2Config(
        n_layer=sz["n_layers"],
        n_embd=sz["d_model"],
        n_head=sz["n_heads"],
        n_inner=sz["d_mlp"],
        vocab_size=sz["d_vocab"],
        n_positions=sz["n_ctx"],
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with np.load(workdir / "weights.npz") as arrays:
        model.load_state_dict(hf_state_dict(arrays, sz), strict=True)
    tokens = torch.from_numpy(np.load(workdir / "tokens.npy"))
    with torch.no_grad():
        run = lambda: model(tokens).logits
        (first,), _ = c.timed(run, 1)
        steady, logits = c.timed(run, args.repeat)
    c.finish_side(
        workdir,
        "torch",
        {"logits": logits.numpy()},
        baseline_rss_mib=baseline,
        first_s=first,
        steady_s=steady,
        attn_implementation=cfg._attn_implementation,
    )


def forward_flops(sz: dict, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward pass (attention scores over all key positions)."""
    d, L = sz["d_model"], sz["n_layers"]
    per_token = L * (2 * 4 * d * d + 2 * 2 * d * sz["d_mlp"]) + 2 * d * sz["d_vocab"]
    return batch * seq * per_token + batch * L * 4 * seq * seq * d


def report(sz: dict, info: dict, jx: dict, pt: dict, err: float) -> str:
    n = len(jx["steady_s"])
    j_med, t_med = statistics.median(jx["steady_s"]), statistics.median(pt["steady_s"])
    j_best, t_best = min(jx["steady_s"]), min(pt["steady_s"])
    flops, ceiling = forward_flops(sz, BATCH, SEQ), c.sgemm_gflops()

    def rate(t):
        return f"{flops / t / 1e9:.0f} GFLOP/s ({flops / t / 1e9 / ceiling:.0%} of sgemm)"

    def mib(report, key):
        return f"{report[key]:,.0f} MiB"

    rows = [
        ["compile (trace + lower + XLA)", c.ms(jx["compile_s"]), "—", ""],
        ["first call (jaxcirc: incl. compile)", c.ms(jx["first_s"]), c.ms(pt["first_s"]), ""],
        [f"steady state, median of {n}", c.ms(j_med), c.ms(t_med), f"**{t_med / j_med:.2f}×**"],
        [f"steady state, best of {n}", c.ms(j_best), c.ms(t_best), f"{t_best / j_best:.2f}×"],
        ["steady state, per round", "", "", c.speedups(pt, jx)],
        ["throughput (median)", rate(j_med), rate(t_med), ""],
        [
            "peak RSS (own process)",
            mib(jx, "peak_rss_mib"),
            mib(pt, "peak_rss_mib"),
            f"{pt['peak_rss_mib'] / jx['peak_rss_mib']:.2f}× less",
        ],
        ["RSS after imports", mib(jx, "baseline_rss_mib"), mib(pt, "baseline_rss_mib"), ""],
    ]
    verdict = "met" if j_med <= t_med else "MISSED"
    return "\n\n".join(
        [
            "## Forward pass: jaxcirc vs `transformers` GPT2LMHeadModel (CPU)",
            c.machine_markdown(info),
            f"GPT-2-small-shaped random model ({sz['n_layers']} layers, d_model {sz['d_model']}, "
            f"{sz['n_heads']} heads, d_mlp {sz['d_mlp']}, d_vocab {sz['d_vocab']}, "
            f"n_ctx {sz['n_ctx']}), "
            f"float32, batch {BATCH} × {SEQ} tokens. jaxcirc: `jax.jit(lambda m, t: "
            "jax.vmap(m)(t))`; "
            f"transformers: `GPT2LMHeadModel` (attention `{pt['attn_implementation']}`), eval, "
            f"`torch.no_grad`, `torch.set_num_threads({c.CORES})`. Each side runs in its own "
            "process; "
            f"the sides' processes alternate, steady-state samples are pooled over rounds. "
            f"Logits agree: max |diff| = {err:.1e} (required ≤ {ATOL}). sgemm = best 2048³ float32 "
            f"torch matmul on this machine, {ceiling:.0f} GFLOP/s.",
            c.table(["", "jaxcirc", "transformers", "speed-up (torch / jax)"], rows),
            f"**Target (jaxcirc not slower in steady state): {verdict}** — jaxcirc "
            f"{c.ms(j_med)} vs "
            f"transformers {c.ms(t_med)} per forward (jaxcirc {t_med / j_med:.2f}× the speed).",
        ]
    )


def main() -> None:
    args = c.parser(__doc__).parse_args()
    sz = c.sizes(args.quick)
    if args.side:
        return {"jax": side_jax, "torch": side_torch}[args.side](args, sz, Path(args.workdir))
    info = c.machine()
    with tempfile.TemporaryDirectory(prefix="jaxcirc-bench-") as tmp:
        workdir = Path(tmp)
        c.write_weights(sz, workdir / "weights.npz")
        np.save(workdir / "tokens.npy", c.tokens(BATCH, SEQ, sz["d_vocab"], seed=0))
        reports = c.run_sides(__file__, workdir, ["jax", "torch"], args.rounds)
        err = c.check_close(
            c.load_output(workdir, "jax", "logits"),
            c.load_output(workdir, "torch", "logits"),
            ATOL,
            "logits",
        )
    text = report(sz, info, reports["jax"], reports["torch"], err)
    c.publish("bench_forward", text, record=not args.quick)


if __name__ == "__main__":
    main()
