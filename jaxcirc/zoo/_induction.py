"""The embedded induction model: a 2-layer attention-only transformer trained on repeats.

Architecture: `jaxcirc.models.attn_only(d_model=64, n_heads=4, d_head=16, d_vocab=64,
n_ctx=48)`, LayerNorm, learned positions. Training data (`sample_batch`): a run of
`L ~ U[2, 24]` distinct random tokens, either repeated periodically over the whole context or
repeated once at a random offset among random filler tokens; the loss is the cross-entropy of
every next-token prediction. Adam, 1500 steps of 32 sequences, seed 0. Reproduce the shipped
weights bit for bit (1-2 minutes on 2 CPU cores):

    python -m jaxcirc.zoo._induction --out jaxcirc/data/induction_attn_only_2l

Shipped model on `induction_task(1024, 16, seed=1234)`: second-half accuracy 100.0%;
first-half accuracy 0.1% (chance is 1/64 = 1.6%; inside a run of distinct tokens its guess,
an earlier token, is never right); mean log-prob of the induction token -0.10 clean, -4.2
corrupt. All four layer-1 heads are induction heads (attention from `i` to `i - L + 1`:
0.89-0.96); layer-0 heads 0 and 2 are previous-token heads (0.65, 0.78).

The model with MLPs (`induction_mlp_model()`):
`jaxcirc.models.gpt2(d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=64, n_ctx=48,
tied_embeddings=False)`, GELU MLPs, same data, optimiser, steps and seed (about 2 minutes on 2
shared CPU cores; with tied embeddings it had learnt only 24% second-half accuracy by then).
A second run reproduced the shipped weights bit for bit:

    python -m jaxcirc.zoo._induction --mlp --out jaxcirc/data/induction_mlp_2l

Shipped model on `induction_task(1024, 16, seed=1234)`: second-half accuracy 100.0% (also at
`half_len` 8 and 24), first-half 0.6%, corrupt second half 0.4%; mean log-prob of the
induction token -0.11 clean, -4.18 corrupt. All four layer-1 heads are induction heads
(0.93-0.96); layer-0 heads 0, 1 and 2 attend to the previous token (0.64, 0.54, 0.78).
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._atomic import atomic_write
from ..models import (
    Transformer,
    TransformerConfig,
    attn_only,
    build,
    from_state_dict,
    gpt2,
    state_dict,
)
from ..tasks._induction import MIN_LEN, induction_task
from ..tasks._induction import InductionMetric as InductionMetric  # jaxcirc.zoo re-exports them
from ..tasks._induction import InductionTask as InductionTask

NAME = "induction_attn_only_2l"
CONFIG = attn_only(d_model=64, n_heads=4, d_head=16, d_vocab=64, n_ctx=48)
NAME_MLP = "induction_mlp_2l"
CONFIG_MLP = gpt2(
    d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=64, n_ctx=48, tied_embeddings=False
)


# ---------------------------------------------------------------------------------------------
# The task (prompts and metric: jaxcirc.tasks._induction)
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _correct(model: Transformer, tokens: Int[Array, "batch seq"]) -> Array:
    return jax.vmap(model)(tokens)[:, :-1].argmax(-1) == tokens[:, 1:]


def induction_accuracy(
    model: Transformer, tokens: Int[Array, "batch seq"], half_len: int
) -> tuple[float, float]:
    """Top-1 accuracy of next-token predictions inside the first half and in the second half."""
    tokens = jnp.asarray(tokens)
    correct = np.asarray(_correct(model, tokens))
    return float(correct[:, : half_len - 1].mean()), float(correct[:, half_len:].mean())


# ---------------------------------------------------------------------------------------------
# The shipped weights
# ---------------------------------------------------------------------------------------------


def _read(weights, config) -> Transformer:
    import safetensors.numpy

    cfg = TransformerConfig.from_json(config.read_text())
    return from_state_dict(cfg, safetensors.numpy.load(weights.read_bytes()))


@functools.cache
def _shipped(name: str = NAME) -> Transformer:
    data = importlib.resources.files("jaxcirc").joinpath("data")
    return _read(data / f"{name}.safetensors", data / f"{name}.json")


def induction_model(path: str | os.PathLike | None = None) -> Transformer:
    """The shipped 2-layer attention-only induction model (module docstring: how it was made).

    `path` loads another one written by `python -m jaxcirc.zoo._induction --out PATH`
    (the files `PATH.safetensors` and `PATH.json`).
    """
    if path is None:
        return _shipped()
    return _load(path)


def induction_mlp_model(path: str | os.PathLike | None = None) -> Transformer:
    """The shipped 2-layer induction transformer *with* MLPs (module docstring: how it was made).

    `jaxcirc.models.gpt2(d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=64, n_ctx=48)`
    (tied embeddings, GELU MLPs of 256 neurons), trained like `induction_model()` on the same
    data; the units that interventional-risk pruning (Asiaee 2026, arXiv 2602.24266) removes
    are its MLP neurons and heads. `path` loads another one written by
    `python -m jaxcirc.zoo._induction --mlp --out PATH`.
    """
    if path is None:
        return _shipped(NAME_MLP)
    return _load(path)


def _load(path: str | os.PathLike) -> Transformer:
    weights, config = Path(f"{os.fspath(path)}.safetensors"), Path(f"{os.fspath(path)}.json")
    for file in (weights, config):
        if not file.is_file():
            raise FileNotFoundError(f"no induction model file {file} (write one with --out {path})")
    return _read(weights, config)


def save(
    path: str | os.PathLike, model: Transformer, metadata: dict[str, str] | None = None
) -> None:
    """Write `PATH.safetensors` (the state dict) and `PATH.json` (the config), each atomically."""
    import safetensors.numpy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = state_dict(model)
    atomic_write(
        path.with_name(path.name + ".safetensors"),
        lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata=metadata),
    )
    atomic_write(
        path.with_name(path.name + ".json"),
        lambda tmp: Path(tmp).write_text(model.cfg.to_json() + "\n"),
    )


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def sample_batch(
    key: PRNGKeyArray, batch: int, cfg: TransformerConfig = CONFIG
) -> Int[Array, "batch seq"]:
    """Training sequences: a run of `L ~ U[2, min(n_ctx, d_vocab) // 2]` distinct tokens, either
    repeated periodically over the whole context or repeated once at a random offset among
    random filler tokens (each with probability 1/2)."""

    def one(key):
        k_fill, k_len, k_off, k_run, k_mode = jax.random.split(key, 5)
        seq, max_len = cfg.n_ctx, min(cfg.n_ctx, cfg.d_vocab) // 2
        length = jax.random.randint(k_len, (), MIN_LEN, max_len + 1)
        run = jnp.argsort(jax.random.uniform(k_run, (cfg.d_vocab,)))  # distinct tokens
        periodic = run[jnp.arange(seq) % length]
        filler = jax.random.randint(k_fill, (seq,), 0, cfg.d_vocab)
        rel = jnp.arange(seq) - jax.random.randint(k_off, (), 0, seq - 2 * length + 1)
        once = jnp.where((rel >= 0) & (rel < 2 * length), run[jnp.clip(rel, 0) % length], filler)
        return jnp.where(jax.random.bernoulli(k_mode), periodic, once)

    return jax.vmap(one)(jax.random.split(key, batch)).astype(jnp.int32)


def _loss(model: Transformer, tokens: Int[Array, "batch seq"]) -> Float[Array, ""]:
    logits = jax.vmap(model)(tokens)[:, :-1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@functools.cache
def _optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    warmup = min(100, steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr / 20)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


@eqx.filter_jit
def _step(model, opt_state, key_data, i, optim, batch_size):
    tokens = sample_batch(jax.random.fold_in(key_data, i), batch_size, model.cfg)
    loss, grads = eqx.filter_value_and_grad(_loss)(model, tokens)
    updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def train(
    *,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    log_every: int = 0,
    mlp: bool = False,
) -> tuple[Transformer, list[float]]:
    """Train the induction model from `seed`; return it and the loss of every step.

    Adam with a warmup-cosine schedule and gradient clipping; one compiled step function.
    `mlp=True` trains `CONFIG_MLP` (with MLPs) instead of the attention-only `CONFIG`.
    """
    key_init, key_data = jax.random.split(jax.random.key(seed))
    model = build(CONFIG_MLP if mlp else CONFIG, key=key_init)
    optim = _optimizer(lr, steps)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    losses = []
    for i in range(steps):
        model, opt_state, loss = _step(model, opt_state, key_data, jnp.int32(i), optim, batch_size)
        losses.append(float(loss))
        if log_every and (i + 1) % log_every == 0:
            print(f"step {i + 1:5d}  loss {losses[-1]:.4f}", flush=True)
    return model, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcirc.zoo._induction", description="Train the embedded induction model."
    )
    parser.add_argument(
        "--out", required=True, help="path without suffix: writes PATH.safetensors and PATH.json"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--mlp", action="store_true", help="train the model with MLPs (induction_mlp_model)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, losses = train(
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        log_every=250,
        mlp=args.mlp,
    )
    seconds = time.perf_counter() - start
    task = induction_task(1024, 16, seed=1234, d_vocab=model.cfg.d_vocab)
    first, second = induction_accuracy(model, task.clean, task.half_len)
    info = dict(
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        mlp=args.mlp,
        final_loss=round(losses[-1], 4) if losses else None,
        train_seconds=round(seconds, 1),
        accuracy_first_half=round(first, 4),
        accuracy_second_half=round(second, 4),
    )
    save(args.out, model, metadata={k: json.dumps(v) for k, v in info.items()})
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
