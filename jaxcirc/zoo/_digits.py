"""The digits MLP: a small ReLU classifier of scikit-learn's 8×8 handwritten digits.

The model of the pruning reproduction (Asiaee 2026, arXiv 2602.24266, where the author's
follow-up prunes the penultimate layer of an MNIST MLP). Architecture
64 → 128 → 128 → 10 with ReLU, a `jaxcirc.models.MLPClassifier`; its hidden layers are the sites
`"hidden.0"` and `"hidden.1"` (post-activation, 128 units each).

Data (`digits_data()`): `sklearn.datasets.load_digits` (1797 images, shipped with scikit-learn,
no download), pixels scaled from [0, 16] to [0, 1], a fixed split by a seeded permutation
(`numpy.random.default_rng(0)`): 1297 train, 500 test. Training: Adam (lr 1e-3), cross-entropy,
minibatches of 64 reshuffled every epoch, 60 epochs, seed 0, about 15 s on 2 CPU cores
(bit-for-bit reproducible on CPU).
Reproduce the shipped weights (`jaxcirc/data/digits_mlp.safetensors` and `.json`) with

    python -m jaxcirc.zoo._digits --out jaxcirc/data/digits_mlp

Shipped model: test accuracy 98.2% (491 / 500), train accuracy 100%, final training loss
0.011.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._atomic import atomic_write
from ..models._mlp_classifier import MLPClassifier

NAME = "digits_mlp"
WIDTHS = (64, 128, 128, 10)
N_TRAIN, N_TEST = 1297, 500


def init(widths=WIDTHS, *, key: PRNGKeyArray) -> MLPClassifier:
    """A fresh `MLPClassifier` (uniform ±1/√fan_in weights and biases, like `eqx.nn.Linear`)."""
    weights, biases = [], []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(widths) - 1), zip(widths, widths[1:])):
        kw, kb = jax.random.split(k)
        lim = 1.0 / np.sqrt(n_in)
        weights.append(jax.random.uniform(kw, (n_out, n_in), minval=-lim, maxval=lim))
        biases.append(jax.random.uniform(kb, (n_out,), minval=-lim, maxval=lim))
    return MLPClassifier(weights, biases)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class DigitsData(NamedTuple):
    """The fixed split of scikit-learn's digits: inputs in [0, 1], integer labels."""

    x_train: Float[Array, "1297 64"]
    y_train: Int[Array, " 1297"]
    x_test: Float[Array, "500 64"]
    y_test: Int[Array, " 500"]


@functools.cache
def digits_data() -> DigitsData:
    """scikit-learn's `load_digits`, scaled to [0, 1] and split 1297 / 500 (seeded, fixed)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover
        raise ImportError(
            "digits_data needs scikit-learn (pip install scikit-learn; it ships the data)"
        ) from None
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x = jnp.asarray(x[order] / 16.0, jnp.float32)
    y = jnp.asarray(y[order], jnp.int32)
    return DigitsData(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


@eqx.filter_jit
def _predict(model: MLPClassifier, x: Float[Array, "n d"]) -> Int[Array, " n"]:
    return jax.vmap(model)(x).argmax(-1)


def digits_accuracy(model: MLPClassifier, x: Float[Array, "n d"], y: Int[Array, " n"]) -> float:
    """Fraction of `x` that `model` classifies as `y`."""
    return float((_predict(model, jnp.asarray(x)) == jnp.asarray(y)).mean())


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save(
    path: str | os.PathLike, model: MLPClassifier, metadata: dict[str, str] | None = None
) -> None:
    """Write `PATH.safetensors` (`layers.{i}.weight/bias`) and `PATH.json` (the widths), each
    atomically. A masked model (with interventions at its sites) must be compiled first."""
    import safetensors.numpy

    carrying = [site.name for site in model.hidden if site.intervention is not None]
    if carrying:
        raise ValueError(
            f"this MLPClassifier carries interventions at {carrying}; compile it first "
            "(jaxcirc.models.narrow) to save a plain network"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        arrays[f"layers.{i}.weight"] = np.asarray(w)
        arrays[f"layers.{i}.bias"] = np.asarray(b)
    atomic_write(
        path.with_name(path.name + ".safetensors"),
        lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata=metadata),
    )
    config = json.dumps({"kind": "mlp_classifier", "widths": list(model.widths)})
    atomic_write(
        path.with_name(path.name + ".json"), lambda tmp: Path(tmp).write_text(config + "\n")
    )


def _read(weights, config) -> MLPClassifier:
    import safetensors.numpy

    widths = json.loads(config.read_text())["widths"]
    arrays = safetensors.numpy.load(weights.read_bytes())
    n = len(widths) - 1
    model = MLPClassifier(
        [arrays[f"layers.{i}.weight"] for i in range(n)],
        [arrays[f"layers.{i}.bias"] for i in range(n)],
    )
    if list(model.widths) != list(widths):
        raise ValueError(f"{weights}: weights have widths {model.widths}; {config} says {widths}")
    return model


@functools.cache
def _shipped() -> MLPClassifier:
    data = importlib.resources.files("jaxcirc").joinpath("data")
    return _read(data / f"{NAME}.safetensors", data / f"{NAME}.json")


def digits_mlp(path: str | os.PathLike | None = None) -> MLPClassifier:
    """The shipped digits classifier (module docstring: how it was made and how good it is).

    `path` loads another `MLPClassifier` written by `save` (or by
    `python -m jaxcirc.zoo._digits --out PATH`): the files `PATH.safetensors` and `PATH.json`.
    """
    if path is None:
        return _shipped()
    weights, config = Path(f"{os.fspath(path)}.safetensors"), Path(f"{os.fspath(path)}.json")
    for file in (weights, config):
        if not file.is_file():
            raise FileNotFoundError(f"no MLP classifier file {file} (write one with --out {path})")
    return _read(weights, config)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _loss(model: MLPClassifier, x: Float[Array, "b d"], y: Int[Array, " b"]) -> Float[Array, ""]:
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@eqx.filter_jit
def _epoch(model, opt_state, key, x, y, optim, batch_size):
    """One pass over the training set in a fresh order (a `lax.scan` over minibatches)."""
    n_batches = x.shape[0] // batch_size
    order = jax.random.permutation(key, x.shape[0])[: n_batches * batch_size]
    batches = order.reshape(n_batches, batch_size)
    params, static = eqx.partition(model, eqx.is_array)

    def step(carry, idx):
        params, opt_state = carry
        m = eqx.combine(params, static)
        loss, grads = eqx.filter_value_and_grad(_loss)(m, x[idx], y[idx])
        updates, opt_state = optim.update(grads, opt_state, params)
        return (eqx.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
    return eqx.combine(params, static), opt_state, losses.mean()


def train(
    *, seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 1e-3, log_every: int = 0
) -> tuple[MLPClassifier, list[float]]:
    """Train the digits MLP from `seed`; return it and each epoch's mean training loss."""
    data = digits_data()
    key_init, key_data = jax.random.split(jax.random.key(seed))
    model = init(WIDTHS, key=key_init)
    optim = optax.adam(lr)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    losses = []
    for epoch in range(epochs):
        key = jax.random.fold_in(key_data, epoch)
        model, opt_state, loss = _epoch(
            model, opt_state, key, data.x_train, data.y_train, optim, batch_size
        )
        losses.append(float(loss))
        if log_every and (epoch + 1) % log_every == 0:
            print(f"epoch {epoch + 1:4d}  loss {losses[-1]:.4f}", flush=True)
    return model, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcirc.zoo._digits", description="Train the shipped digits MLP."
    )
    parser.add_argument(
        "--out", required=True, help="path without suffix: writes PATH.safetensors and PATH.json"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, losses = train(
        seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, log_every=10
    )
    seconds = time.perf_counter() - start
    data = digits_data()
    info = dict(
        seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        final_loss=round(losses[-1], 5), train_seconds=round(seconds, 1),
        train_accuracy=round(digits_accuracy(model, data.x_train, data.y_train), 4),
        test_accuracy=round(digits_accuracy(model, data.x_test, data.y_test), 4),
    )  # fmt: skip
    save(args.out, model, metadata={k: json.dumps(v) for k, v in info.items()})
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
