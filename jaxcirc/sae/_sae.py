"""Sparse autoencoders: `x ≈ decode(encode(x)) = f(x) W_dec + b_dec` with a sparse code `f`.

Four activation functions, one module each, sharing the affine maps of `SAE`:

- `ReLUSAE`: `f = relu(pre)`, trained with an L1 penalty weighted by the decoder row norms
  (Bricken et al. 2023, "Towards monosemanticity"; Conerly et al. 2024).
- `TopKSAE`: the `k` largest pre-activations of each example, then ReLU (Gao et al. 2024,
  arXiv 2406.04093).
- `BatchTopKSAE`: in training, the `k · batch` largest pre-activations of the whole batch;
  at inference a single threshold estimated in training (Bussmann et al. 2024,
  arXiv 2412.06410).
- `JumpReLUSAE`: `f = pre · H(pre − θ)` with a learned threshold per feature, trained through
  straight-through estimators of the threshold's gradient (Rajamanoharan et al. 2024,
  arXiv 2407.14435).

`pre = (x − b_dec) W_enc + b_enc` when `center` (SAELens's `apply_b_dec_to_input`), otherwise
`x W_enc + b_enc`. Every function takes one activation `[..., d_in]` (any leading axes).
"""

from __future__ import annotations

import abc
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_float, check_int

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")


class SAE(eqx.Module):
    """The affine maps every sparse autoencoder shares; subclasses choose the activation.

    **Fields:** `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`;
    `site` (static): the TransformerLens name of the activation it reads, e.g.
    `"blocks.3.hook_resid_post"` (`""` when it belongs to no model); `center` (static):
    subtract `b_dec` before encoding.
    """

    W_enc: Float[Array, "d_in d_sae"]
    b_enc: Float[Array, " d_sae"]
    W_dec: Float[Array, "d_sae d_in"]
    b_dec: Float[Array, " d_in"]
    site: str = eqx.field(static=True, default="", kw_only=True)
    center: bool = eqx.field(static=True, default=True, kw_only=True)

    architecture: str = eqx.field(static=True, init=False, default="")
    """`"relu"`, `"topk"`, `"batchtopk"` or `"jumprelu"`: the on-disk tag of the subclass."""

    def __check_init__(self):
        d_in, d_sae = self.W_enc.shape
        shapes = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"{type(self).__name__}.{name} has shape {getattr(self, name).shape}; "
                    f"W_enc is [d_in={d_in}, d_sae={d_sae}], so {name} must be {list(shape)}"
                )

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def pre(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """The pre-activations `(x − b_dec) W_enc + b_enc` (`x W_enc + b_enc` without
        `center`)."""
        self.check_width(x)
        if self.center:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    @abc.abstractmethod
    def encode(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_sae"]:
        """The sparse code of `x` (inference form)."""

    def encode_batch(self, x: Float[Array, "batch d_in"]) -> Float[Array, "batch d_sae"]:
        """The code used in training on a batch (only `BatchTopKSAE` couples the rows)."""
        return self.encode(x)

    def decode(self, f: Float[Array, "... d_sae"]) -> Float[Array, "... d_in"]:
        if f.shape[-1] != self.d_sae:
            raise ValueError(
                f"a code of width {f.shape[-1]} cannot be decoded by an SAE with d_sae="
                f"{self.d_sae} features"
            )
        return f @ self.W_dec + self.b_dec

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_in"]:
        """The reconstruction `decode(encode(x))`."""
        return self.decode(self.encode(x))

    def error(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_in"]:
        """What the SAE misses: `x − decode(encode(x))` (the error node of a splice)."""
        return x - self(x)

    def penalty(self, f: Float[Array, "batch d_sae"]) -> Float[Array, ""]:
        """The sparsity penalty of a batch's code, before its coefficient (mean over rows);
        none for the k-sparse architectures."""
        return jnp.zeros((), f.dtype)

    def check_width(self, x) -> None:
        if x.shape[-1] != self.d_in:
            where = f" at site {self.site}" if self.site else ""
            raise ValueError(
                f"{type(self).__name__}{where} reads activations of width d_in={self.d_in}; got "
                f"an activation of shape {tuple(x.shape)} (last axis {x.shape[-1]})"
            )


class ReLUSAE(SAE):
    """`f = relu(pre)`; penalty `Σ_i f_i ‖W_dec[i]‖` (Conerly et al. 2024's L1 weighted by the
    decoder norms, so shrinking the code while growing the decoder does not pay)."""

    architecture: str = eqx.field(static=True, init=False, default="relu")

    def encode(self, x):
        return jax.nn.relu(self.pre(x))

    def penalty(self, f):
        return jnp.mean(jnp.sum(f * jnp.linalg.norm(self.W_dec, axis=1), axis=-1))


class TopKSAE(SAE):
    """`f` keeps the `k` largest pre-activations of each example, then ReLU (Gao et al. 2024)."""

    k: int = eqx.field(static=True, kw_only=True)

    architecture: str = eqx.field(static=True, init=False, default="topk")

    def __check_init__(self):
        check_int(self.k, "k", 1, self.W_enc.shape[1])

    def encode(self, x):
        pre = self.pre(x)
        values, index = jax.lax.top_k(pre, self.k)
        return _scatter_last(jnp.zeros_like(pre), index, jax.nn.relu(values))


class BatchTopKSAE(SAE):
    """In training the `k · batch` largest pre-activations of the batch survive (so examples
    share a budget of `k` on average); at inference `f = pre · (pre > threshold)`, with the
    `threshold` estimated in training as the running mean of the smallest kept activation
    (Bussmann et al. 2024)."""

    threshold: Float[Array, ""]
    k: int = eqx.field(static=True, kw_only=True)

    architecture: str = eqx.field(static=True, init=False, default="batchtopk")

    def __check_init__(self):
        check_int(self.k, "k", 1, self.W_enc.shape[1])

    def encode(self, x):
        pre = jax.nn.relu(self.pre(x))  # never negative, whatever the threshold
        return jnp.where(pre > self.threshold, pre, 0.0)

    def encode_batch(self, x):
        pre = jax.nn.relu(self.pre(x))
        flat = pre.reshape(-1)
        values, index = jax.lax.top_k(flat, self.k * x.shape[0])
        return jnp.zeros_like(flat).at[index].set(values).reshape(pre.shape)


class JumpReLUSAE(SAE):
    """`f = pre · H(pre − θ)` with `θ = exp(log_threshold)` per feature. Training sees the
    threshold's gradient through a rectangle-kernel straight-through estimator of bandwidth
    `bandwidth`; the penalty is the expected L0 `Σ_i H(pre_i − θ_i)` (Rajamanoharan et al.
    2024)."""

    log_threshold: Float[Array, " d_sae"]
    bandwidth: float = eqx.field(static=True, default=1e-3, kw_only=True)

    architecture: str = eqx.field(static=True, init=False, default="jumprelu")

    def __check_init__(self):
        if self.log_threshold.shape != self.b_enc.shape:
            raise ValueError(
                f"JumpReLUSAE.log_threshold has shape {self.log_threshold.shape}; it needs one "
                f"value per feature, shape ({self.b_enc.shape[0]},)"
            )
        check_float(self.bandwidth, "bandwidth", 0.0, low_open=True)

    @property
    def threshold(self) -> Float[Array, " d_sae"]:
        return jnp.exp(self.log_threshold)

    def encode(self, x):
        pre = jax.nn.relu(self.pre(x))
        return _jump_relu(pre, self.threshold, self.bandwidth)

    def penalty(self, f):
        # `f` is not enough for the straight-through L0: recomputed in `l0_penalty`
        return jnp.zeros((), f.dtype)

    def l0_penalty(self, x: Float[Array, "batch d_in"]) -> Float[Array, ""]:
        """Mean number of active features per row, with the straight-through gradient that
        reaches the threshold."""
        pre = jax.nn.relu(self.pre(x))
        return jnp.mean(jnp.sum(_step(pre, self.threshold, self.bandwidth), axis=-1))


def _scatter_last(zeros, index, values):
    """`zeros` with `values` put at `index` along the last axis (any leading axes)."""
    lead = zeros.shape[:-1]
    flat = zeros.reshape(-1, zeros.shape[-1])
    rows = jnp.arange(flat.shape[0])[:, None]
    out = flat.at[rows, index.reshape(flat.shape[0], -1)].set(values.reshape(flat.shape[0], -1))
    return out.reshape(*lead, zeros.shape[-1])


def _rectangle(u):
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _jump_relu(z, theta, bandwidth):
    return z * (z > theta)


def _jump_relu_fwd(z, theta, bandwidth):
    return _jump_relu(z, theta, bandwidth), (z, theta)


def _jump_relu_bwd(bandwidth, residuals, g):
    z, theta = residuals
    dz = g * (z > theta)
    dtheta = -(theta / bandwidth) * _rectangle((z - theta) / bandwidth) * g
    return dz, _sum_to(dtheta, theta.shape)


_jump_relu.defvjp(_jump_relu_fwd, _jump_relu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _step(z, theta, bandwidth):
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, bandwidth):
    return _step(z, theta, bandwidth), (z, theta)


def _step_bwd(bandwidth, residuals, g):
    z, theta = residuals
    dtheta = -(1.0 / bandwidth) * _rectangle((z - theta) / bandwidth) * g
    return jnp.zeros_like(z), _sum_to(dtheta, theta.shape)


_step.defvjp(_step_fwd, _step_bwd)


def _sum_to(x, shape):
    return x.reshape(-1, *shape).sum(0) if x.shape != shape else x


# architecture tag -> class (`init`, the checkpoint reader)
CLASSES = {"relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpReLUSAE}


def init(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    key: PRNGKeyArray,
    site: str = "",
    k: int | None = None,
    threshold: float = 1e-3,
    bandwidth: float = 1e-3,
    center: bool = True,
    dtype=jnp.float32,
) -> SAE:
    """A new SAE: decoder rows random with unit norm, encoder their transpose (the tied
    initialisation of Conerly et al. 2024 and Gao et al. 2024), zero biases.

    `k` is required (and only allowed) for `"topk"` and `"batchtopk"`; `threshold` is the
    initial threshold of `"jumprelu"` and `"batchtopk"`.
    """
    if architecture not in CLASSES:
        from .._checks import nearest_word

        raise ValueError(
            f"unknown SAE architecture {architecture!r}{nearest_word(architecture, CLASSES)}; "
            f"choices: {list(CLASSES)}"
        )
    d_in = check_int(d_in, "d_in", 1)
    d_sae = check_int(d_sae, "d_sae (dictionary size)", 1)
    needs_k = architecture in ("topk", "batchtopk")
    if needs_k and k is None:
        raise ValueError(f"a {architecture!r} SAE needs k (active features per example)")
    if not needs_k and k is not None:
        raise ValueError(f"a {architecture!r} SAE takes no k; k applies to 'topk', 'batchtopk'")
    if needs_k:
        k = check_int(k, "k (active features per example)", 1, d_sae)
    W_dec = jax.random.normal(key, (d_sae, d_in), dtype)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=1, keepdims=True)
    maps = dict(
        W_enc=W_dec.T,
        b_enc=jnp.zeros(d_sae, dtype),
        W_dec=W_dec,
        b_dec=jnp.zeros(d_in, dtype),
        site=site,
        center=center,
    )
    if architecture == "relu":
        return ReLUSAE(**maps)
    if architecture == "topk":
        return TopKSAE(**maps, k=k)
    if architecture == "batchtopk":
        return BatchTopKSAE(**maps, threshold=jnp.asarray(threshold, dtype), k=k)
    check_float(threshold, "threshold", 0.0, low_open=True)
    log_threshold = jnp.full(d_sae, np.log(threshold), dtype)
    return JumpReLUSAE(**maps, log_threshold=log_threshold, bandwidth=bandwidth)
