"""Export a jaxcirc model, prompts and jaxcirc's EAP scores for the auto-circuit comparison.

Runs in the system python (with jaxcirc). Writes to `--out`:

- `config.json`: the `transformer_lens.HookedTransformerConfig` keyword arguments of the model,
  the metric (`"logit_diff"` of answer vs wrong-answer tokens, or `"logit"` of one token, at
  the last position, averaged over the batch) and jaxcirc's timings and peak memory;
- `weights.npz`: the weights under TransformerLens state-dict names (jaxcirc's names are
  TransformerLens's; `unembed.b_U` is added as zeros when the model has none);
- `data.npz`: `clean`, `corrupt` tokens `[batch, seq]`, `answers`, `wrong` `[batch, 1]`,
  jaxcirc's logits on `clean`, and its EAP scores: `sources`, `targets` (jaxcirc names), the
  score matrix `eap [n_sources, n_targets]` and `valid`.

Cases: a shipped tracr program (`--case reverse`, `frac_prevs`, ...; `jaxcirc.io.tracr_case`,
converted by `jaxcirc.io.from_tracr`) or `--case random`, a small
random GPT-2-style model with LayerNorm, every edge non-zero.

    python benchmarks/auto_circuit/export.py --case reverse --out /tmp/eap_export
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parents[1]))  # run from a checkout without installing jaxcirc
sys.path.insert(1, str(HERE.parent))  # benchmarks/_common

from _common import peak_rss_mib  # noqa: E402

# ----------------------------------------------------------------------------- models


def random_case(n: int, seed: int):
    """Random GPT-2-style weights (LayerNorm off 1/0, biases off 0), random prompt pairs."""
    import jax

    import jaxcirc as jc

    cfg = jc.models.gpt2(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16,
        tied_embeddings=False,
    )  # fmt: skip
    model = jc.models.build(cfg, key=jax.random.key(seed))
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, x in jc.models.state_dict(model).items():
        if name.endswith(".w"):
            x = x + 0.1 * rng.standard_normal(x.shape, np.float32)
        elif name.endswith(".b") or ".b_" in name:
            x = x + 0.05 * rng.standard_normal(x.shape, np.float32)
        else:  # weights larger than GPT-2's init so attention patterns are far from uniform
            x = 5 * x
        arrays[name] = x
    model = jc.models.from_state_dict(cfg, arrays)
    clean = rng.integers(0, cfg.d_vocab, (n, 10))
    corrupt = rng.integers(0, cfg.d_vocab, (n, 10))
    return model, clean, corrupt, "categorical"


def tracr_case(name: str, n: int, seed: int):
    """The shipped converted tracr model for `name` (`jaxcirc.io.tracr_case`, converted by
    `jaxcirc.io.from_tracr`) and `n` clean/corrupt prompt pairs (BOS first)."""
    from jaxcirc.io import tracr_case as shipped

    try:
        model, _circuit, info = shipped(name)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    clean, corrupt = info.sample(n, seed=seed)
    return model, clean, corrupt, info.case.output


def tl_config(cfg) -> dict:
    """`HookedTransformerConfig` keyword arguments for a jaxcirc config (the families used here:
    learned positions, LayerNorm or none, no GQA/rotary/gating)."""
    if cfg.positional != "learned" or cfg.gated_mlp or cfg.kv_heads != cfg.n_heads:
        raise SystemExit(f"export supports learned-position MHA models; got {cfg}")
    return dict(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
        d_mlp=cfg.d_mlp if cfg.block != "attn_only" else None, d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx, act_fn=cfg.act_fn, eps=cfg.norm_eps,
        normalization_type={"layernorm": "LN", "none": None}[cfg.norm],
        attn_only=cfg.block == "attn_only", parallel_attn_mlp=cfg.block == "parallel",
        attention_dir="causal" if cfg.causal else "bidirectional",
        positional_embedding_type="standard", original_architecture="jaxcirc",
        default_prepend_bos=False, device="cpu",
    )  # fmt: skip


def answers_for(model, clean, corrupt, output: str):
    """Answer and wrong-answer ids `[batch, 1]` at the last position, and the metric kind.

    Categorical: the answer is the clean prediction, the wrong answer the corrupt prompt's
    prediction (the clean run's runner-up where the two agree). Numerical (tracr): logit 0."""
    import jax

    if output == "numerical":
        zeros = np.zeros((len(clean), 1), np.int64)
        return zeros, zeros, "logit"
    last = lambda t: np.asarray(jax.vmap(model)(t))[:, -1]  # noqa: E731
    lc, lk = last(clean), last(corrupt)
    answers = lc.argmax(-1)
    wrong = lk.argmax(-1)
    runner_up = np.argsort(-lc, axis=-1, kind="stable")[:, 1]
    wrong = np.where(wrong == answers, runner_up, wrong)
    return answers[:, None], wrong[:, None], "logit_diff"


def make_metric(kind: str, answers, wrong):
    import jax.numpy as jnp

    import jaxcirc as jc

    a, w = jnp.asarray(answers), jnp.asarray(wrong)
    if kind == "logit_diff":
        return lambda logits: jc.metrics.logit_diff(logits, a, w, position=-1)
    return lambda logits: jnp.take_along_axis(logits[:, -1], a, axis=-1).mean()


def export(case: str, out: Path, n: int = 16, seed: int = 0, repeat: int = 5) -> dict:
    import jax

    import jaxcirc as jc

    t0 = time.perf_counter()
    if case == "random":
        model, clean, corrupt, output = random_case(n, seed)
    else:
        model, clean, corrupt, output = tracr_case(case, n, seed)
    clean, corrupt = np.asarray(clean, np.int64), np.asarray(corrupt, np.int64)
    answers, wrong, kind = answers_for(model, clean, corrupt, output)
    metric = make_metric(kind, answers, wrong)

    def run():
        scores = jc.methods.eap(model, clean, corrupt, metric)
        return jax.block_until_ready(scores.signed)

    t = time.perf_counter()
    scores = np.asarray(run())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    g = jc.graph.graph(model)

    out.mkdir(parents=True, exist_ok=True)
    sd = jc.models.state_dict(model)
    if "unembed.b_U" not in sd:
        sd["unembed.b_U"] = np.zeros(model.cfg.d_vocab, np.float32)
    np.savez(out / "weights.npz", **{k: np.asarray(v, np.float32) for k, v in sd.items()})
    logits = np.asarray(jax.vmap(model)(clean))
    np.savez(
        out / "data.npz", clean=clean, corrupt=corrupt, answers=answers, wrong=wrong,
        logits=logits, eap=scores, valid=g.valid, sources=np.asarray(g.sources),
        targets=np.asarray(g.targets),
    )  # fmt: skip
    info = {
        "case": case,
        "tl_config": tl_config(model.cfg),
        "metric": kind,
        "position": -1,
        "batch": int(clean.shape[0]),
        "seq": int(clean.shape[1]),
        "n_edges": int(g.n_edges),
        "jaxcirc": {
            "first_call_s": first,
            "steady_s": times,
            "peak_rss_mib": peak_rss_mib(),
            "export_s": time.perf_counter() - t0,
        },
    }
    (out / "config.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="reverse", help="tracr case name, or 'random'")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=16, help="prompt pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5, help="timed EAP runs after the first")
    a = p.parse_args(argv)
    info = export(a.case, a.out, a.n, a.seed, a.repeat)
    print(json.dumps({"case": info["case"], "n_edges": info["n_edges"], **info["jaxcirc"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
