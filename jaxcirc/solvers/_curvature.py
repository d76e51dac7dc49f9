"""Gradient and diagonal curvature of a per-sample loss with respect to unit activations.

The second-order expansion of Asiaee 2026 (arXiv 2602.24266): replacing unit `j`'s
activation on sample `n` by `a_nj + δ` changes that sample's loss by about
`g_nj δ + ½ h_nj δ²`, with `g_nj = ∂ℓ_n/∂a_nj` and `h_nj = ∂²ℓ_n/∂a_nj²`
(or its Gauss–Newton / Fisher surrogate).
`unit_curvature` computes `g`, `h` and `ℓ` for every unit of every sample, for any function
from activations to logits, by one of four methods:

| method | `h` | cost per chunk of samples |
|---|---|---|
| `"exact"` | Hessian diagonal | one HVP per unit (at most `EXACT_MAX_UNITS`) |
| `"ggn"` | Gauss–Newton diagonal | one backward per logit (at most `GGN_MAX_LOGITS`) |
| `"fisher"` | Monte-Carlo Fisher, unbiased for the GGN | one backward per probe |
| `"hutchinson"` | `mean v ⊙ Hv`, v Rademacher, unbiased | one HVP per probe |

Per-sample losses are independent, so the Hessian of the chunk's summed loss is block diagonal
over samples: one HVP (or one backward) of the summed loss gives every sample's column at once.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._progress import progress_bar, tick
from ..models._site import nearest

METHODS = ("exact", "ggn", "fisher", "hutchinson")
LOSSES = ("ce", "kl")
EXACT_MAX_UNITS = 4096  # units per sample: "exact" runs one HVP per unit
GGN_MAX_LOGITS = 4096  # positions × classes per sample: "ggn" runs one backward per logit
_VMAP_ELEMENTS = 1 << 22  # probes / basis vectors run together: this many (chunk × units) at once
_MAX_WIDTH = 32  # probes or logits vmapped together (their sum is unrolled, see `_sum_map`)


class Curvature(eqx.Module):
    """What `unit_curvature` returns.

    **Fields:**

    - `grad`: `∂ℓ_n/∂a`, the same pytree and shapes as `acts` (`[n, ...]` per leaf).
    - `curv`: the diagonal curvature `h`, same pytree and shapes as `acts`.
    - `loss`: `[n]`, each sample's loss `ℓ_n` at `acts`.

    The second-order change of sample `n`'s loss when one unit moves by `δ` is
    `grad · δ + ½ curv · δ²` (Asiaee 2026).
    """

    grad: PyTree[Float[Array, "n ..."]]
    curv: PyTree[Float[Array, "n ..."]]
    loss: Float[Array, " n"]


def unit_curvature(
    fn: Callable,
    acts: PyTree[Float[Array, "n ..."]],
    inputs: PyTree[Array] | None = None,
    labels: Int[Array, "n ..."] | None = None,
    *,
    loss: str | None = None,
    method: str = "exact",
    probes: int = 8,
    key: PRNGKeyArray | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Curvature:
    """Per-sample gradient and diagonal curvature of a loss w.r.t. unit activations.

    **Arguments:**

    - `fn`: `fn(a, x) -> logits [..., C]` for ONE sample, where `a = acts[n]` and
      `x = inputs[n]` (`None` when `inputs` is). An `eqx.Module` (e.g.
      `eqx.Partial(f, model)`) has its arrays traced; a plain function is held static, so
      pass the same object each time to reuse the compiled program.
    - `acts`: `[n, ...]` activations, an array or a pytree of arrays (e.g.
      `{site: [n, seq, d_mlp]}`); the point at which derivatives are taken.
    - `inputs`: a pytree of `[n, ...]` arrays passed to `fn` per sample, or `None`.
    - `labels`: `[n, *logits.shape[:-1]]` integer targets for `loss="ce"`; `-1` marks a
      position to ignore.
    - `loss`: `"ce"` (default with `labels`): cross-entropy with `labels[n]`, **summed** over
      positions (not averaged). `"kl"` (default without): `KL(p_full ‖ softmax(fn(a, x)))`
      summed over positions, with `p_full = softmax(fn(acts[n], x_n))` held fixed, so `grad`
      is 0 and the Hessian equals the Gauss–Newton matrix at `acts`.
    - `method`: `"exact"` (Hessian diagonal, one forward-over-reverse HVP per unit; at most
      `EXACT_MAX_UNITS` units per sample), `"ggn"` (exact Gauss–Newton diagonal
      `Σ_c p_c J_c² − (Σ_c p_c J_c)²` per position, `J = ∂logits/∂a`; one backward per
      (position, class), at most `GGN_MAX_LOGITS`), `"fisher"` (Monte-Carlo Fisher with
      `probes` labels sampled from the model, unbiased for the GGN), or `"hutchinson"`
      (`mean v ⊙ Hv` over `probes` Rademacher vectors, unbiased for the Hessian diagonal).
    - `probes`: random probes for `"fisher"` and `"hutchinson"`.
    - `key`: PRNG key for `"fisher"` and `"hutchinson"`. Sample `n`'s probe `s` uses
      `fold_in(fold_in(key, n), s)` (see `rademacher`), so results do not depend on
      `batch_size`.
    - `batch_size`: samples per compiled chunk (default: all `n` at once); chunks run in
      sequence under one `lax.map`, a progress bar ticks per chunk when `progress=True`.

    **Returns:** a `Curvature` with `grad`, `curv` (shaped like `acts`) and `loss` (`[n]`).

    Raises `ValueError` for an unknown method or loss, mismatched shapes, a problem too large
    for `"exact"` / `"ggn"`, a label that is no class of the logits (found inside the compiled
    program, so after it ran), or a non-finite gradient or curvature (naming the unit and
    sample).

    ```python
    # the hidden layer of a 2-layer MLP, CE with integer labels
    fn = lambda a, x: a @ W2 + b2
    c = unit_curvature(fn, hidden, labels=y, method="ggn")
    ```
    """
    acts, inputs, labels, loss, n = _check(
        acts, inputs, labels, loss, method, probes, key, batch_size
    )
    b = n if batch_size is None else min(int(batch_size), n)
    n_chunks = -(-n // b)
    desc = f"curvature ({method})"
    with progress_bar(progress, total=n_chunks, desc=desc, unit="chunk"):
        out, finite, bad_label = _curvature(
            fn, acts, inputs, labels, key,
            loss=loss, method=method, probes=int(probes), batch_size=b, progress=bool(progress),
        )  # fmt: skip
        out = jax.block_until_ready(out)
    if int(bad_label) >= 0:
        index = np.unravel_index(int(bad_label), labels.shape)
        raise ValueError(
            f"label {int(labels[index])} at {tuple(int(i) for i in index)} is not a class of "
            f"fn's logits (0 <= label < C) nor -1 (ignored)"
        )
    if not bool(finite):
        _raise_nonfinite(out)
    return out


# ---------------------------------------------------------------- checks (Python level)


def _leading(tree, what: str) -> int | None:
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in jax.tree_util.tree_leaves(tree)}
    if None in sizes or len(sizes) > 1:
        shapes = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)]
        raise ValueError(
            f"every array of {what} needs the same leading sample axis n; got {shapes}"
        )
    return sizes.pop() if sizes else None


def _check(acts, inputs, labels, loss, method, probes, key, batch_size):
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}{nearest(method, METHODS)}; choose from {METHODS}"
        )
    if loss is None:
        loss = "kl" if labels is None else "ce"
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}{nearest(loss, LOSSES)}; choose from {LOSSES}")
    if loss == "ce" and labels is None:
        raise ValueError("loss='ce' needs labels (use loss='kl' to compare with the model itself)")
    if loss == "kl" and labels is not None:
        raise ValueError("loss='kl' takes no labels; pass loss='ce' (or drop labels)")
    acts = jax.tree_util.tree_map(jnp.asarray, acts)
    leaves = jax.tree_util.tree_leaves(acts)
    if not leaves:
        raise ValueError("acts has no arrays")
    for x in leaves:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"acts must be floating-point arrays; got dtype {x.dtype}")
    n = _leading(acts, "acts")
    if n == 0:
        raise ValueError("acts has no samples (leading axis n = 0)")
    if inputs is not None:
        inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
        m = _leading(inputs, "inputs")
        if m is not None and m != n:
            raise ValueError(f"inputs have {m} samples (leading axis); acts have {n}")
    if method in ("fisher", "hutchinson"):
        if key is None:
            raise ValueError(f"method={method!r} draws random probes: pass key=jax.random.key(...)")
        if not isinstance(probes, (int, np.integer)) or probes < 1:
            raise ValueError(f"probes must be an int >= 1; got {probes!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or None; got {batch_size!r}")

    if labels is not None:
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"labels must be integers (class ids, -1 to ignore); got {labels.dtype}"
            )
    return acts, inputs, labels, loss, n


def _check_logits(fn, acts, inputs, labels, method: str) -> jax.ShapeDtypeStruct:
    """Shape checks that need `fn`'s output, run while `_curvature` is traced (once per
    compile, so a repeated call pays no extra trace of `fn`); one sample's logits' shape."""
    one = jax.tree_util.tree_map(lambda x: x[0], (acts, inputs))
    z = eqx.filter_eval_shape(fn, *one)
    if not isinstance(z, jax.ShapeDtypeStruct) or z.ndim < 1:
        raise ValueError(f"fn(a, x) must return logits of shape [..., C] for one sample; got {z}")
    n = jax.tree_util.tree_leaves(acts)[0].shape[0]
    if labels is not None and labels.shape != (n, *z.shape[:-1]):
        raise ValueError(
            f"labels have shape {labels.shape}; expected [n, *logits.shape[:-1]] = "
            f"{(n, *z.shape[:-1])} (fn returns logits of shape {z.shape} for one sample)"
        )
    units = sum(int(np.prod(x.shape[1:])) for x in jax.tree_util.tree_leaves(acts))
    if method == "exact" and units > EXACT_MAX_UNITS:
        raise ValueError(
            f"method='exact' runs one Hessian-vector product per unit: {units} units per sample "
            f"exceed EXACT_MAX_UNITS={EXACT_MAX_UNITS}; use method='hutchinson' (unbiased, "
            f"`probes` HVPs) or 'ggn'/'fisher' (Gauss-Newton)"
        )
    n_logits = int(np.prod(z.shape))
    if method == "ggn" and n_logits > GGN_MAX_LOGITS:
        raise ValueError(
            f"method='ggn' runs one backward pass per logit: {n_logits} logits per sample "
            f"(shape {z.shape}) exceed GGN_MAX_LOGITS={GGN_MAX_LOGITS}; use method='fisher' "
            f"(Monte-Carlo GGN, `probes` backward passes) or 'hutchinson'"
        )
    return z


def _raise_nonfinite(out: Curvature) -> None:
    """Name the first sample, then leaf and unit, whose gradient or curvature is not finite."""
    n = out.loss.shape[0]
    per_leaf = jax.tree_util.tree_leaves_with_path(out.grad)
    curv = jax.tree_util.tree_leaves(out.curv)
    for sample in range(n):  # the first sample, then the first leaf and unit within it
        for (path, g), h in zip(per_leaf, curv):
            for what, x in (("gradient", g), ("curvature", h)):
                row = np.asarray(x[sample]).reshape(-1)
                bad = np.flatnonzero(~np.isfinite(row))
                if bad.size:
                    where = jax.tree_util.keystr(path, simple=True, separator=".")
                    index = np.unravel_index(bad[0], x.shape[1:])
                    leaf = f" of leaf {where!r}" if where else ""
                    raise ValueError(
                        f"non-finite {what} ({row[bad[0]]}) at unit {int(bad[0])} (flat index; "
                        f"index {tuple(int(i) for i in index)}){leaf}, sample {sample}; check "
                        f"fn and acts there (a saturated softmax or an inf activation?)"
                    )


# ---------------------------------------------------------------- the compiled core


def rademacher(key: PRNGKeyArray, sample, probe, size: int) -> Float[Array, " size"]:
    """The `±1` probe vector (flattened units, `ravel_pytree` order) of `sample`'s `probe`.

    Drawn from `fold_in(fold_in(key, sample), probe)` as 32 signs per random `uint32`.
    """
    k = jax.random.fold_in(jax.random.fold_in(key, sample), probe)
    words = jax.random.bits(k, (-(-size // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return 2 * bits.reshape(-1)[:size].astype(jnp.float32) - 1


def _logits(fn, A, X) -> Float[Array, "b P C"]:
    z = jax.vmap(fn)(A, X)
    return z.reshape(z.shape[0], -1, z.shape[-1]).astype(jnp.float32)


def _weights(z, Y) -> Float[Array, "b P"]:
    if Y is None:
        return jnp.ones(z.shape[:2], z.dtype)
    return (Y.reshape(z.shape[:2]) != -1).astype(z.dtype)


def _losses(z, Y, loss: str) -> Float[Array, " b"]:
    """Each sample's loss, summed over positions: CE with `Y` or KL to `softmax(z)` held fixed."""
    logq = jax.nn.log_softmax(z)
    if loss == "ce":
        y = jnp.maximum(Y.reshape(z.shape[:2]), 0)
        nll = -jnp.take_along_axis(logq, y[..., None], axis=-1)[..., 0]
        return jnp.sum(_weights(z, Y) * nll, axis=1)
    logp = jax.lax.stop_gradient(logq)  # p_full: every derivative treats it as a constant
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=(1, 2))


def _sum_map(f, count: int, width: int):
    """`(Σ_{i < count} value_i, aux)` for `f(i) = (value_i, aux)`, where `aux` does not
    depend on `i`; up to `width` items vmapped at a time, the chunks scanned.

    A chunk's items are added one by one rather than by a reduction over the vmapped axis:
    XLA:CPU in jaxlib 0.10.2 miscompiles such a masked sum, `sum(w[:, None] * x, axis=0)`, for
    large `x` (wrong values, no error; apparently jax-ml/jax#39103).
    """
    width = max(1, min(count, width, _MAX_WIDTH))
    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(f, jnp.int32(0))
    )

    def body(carry, j):
        i = j * width + jnp.arange(width)
        out, aux = jax.vmap(f, out_axes=(0, None))(jnp.minimum(i, count - 1))
        valid = (i < count).astype(out.dtype)
        acc = carry[0]
        for k in range(width):
            acc = acc + valid[k] * out[k]
        return (acc, aux), None

    (acc, aux), _ = jax.lax.scan(body, zeros, jnp.arange(-(-count // width)))
    return acc, aux


def _chunk_result(fn, A, X, Y, idx, key, *, loss, method, probes):
    """`(grad, curv, loss)` of one chunk of samples: `A` and `X` have a leading axis `b`."""
    b = idx.shape[0]
    _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: x[0], A))
    flat = jax.vmap(lambda t: ravel_pytree(t)[0])
    unflat = jax.vmap(unravel)
    size = flat(A).shape[1]
    width = _VMAP_ELEMENTS // max(1, b * size)

    if method in ("exact", "hutchinson"):

        def total(A):
            losses = _losses(_logits(fn, A, X), Y, loss)
            return jnp.sum(losses), losses

        def hvp(V):  # forward-over-reverse; under vmap over V the primal pass is shared
            (g, losses), (HV, _) = jax.jvp(jax.grad(total, has_aux=True), (A,), (unflat(V),))
            return flat(HV), (g, losses)

        dtype = flat(A).dtype
        if method == "exact":

            def column(i):
                e = jnp.broadcast_to(jax.nn.one_hot(i, size, dtype=dtype), (b, size))
                return hvp(e)[0][:, i]

            diag = jax.lax.map(column, jnp.arange(size), batch_size=max(1, min(size, width)))
            g, losses = jax.grad(total, has_aux=True)(A)
            return g, unflat(diag.T), losses

        def probe(s):
            V = jax.vmap(lambda n: rademacher(key, n, s, size))(idx).astype(dtype)
            HV, primal = hvp(V)
            return V * HV, primal

        h, (g, losses) = _sum_map(probe, probes, width)
        return g, unflat(h / probes), losses

    z, pullback = jax.vjp(lambda A: _logits(fn, A, X), A)
    losses = _losses(z, Y, loss)
    g = pullback(jax.grad(lambda z: jnp.sum(_losses(z, Y, loss)))(z))[0]
    p, w = jax.nn.softmax(z), _weights(z, Y)
    n_pos, n_cls = z.shape[1:]

    if method == "ggn":
        # diag Jᵀ(diag p − ppᵀ)J = Σ_c p_c (J_c − Σ_c' p_c' J_c')², one backward per (pos, class)

        def logit(k):
            pos, c = k // n_cls, k % n_cls
            cot = jnp.zeros_like(z).at[:, pos].set(jax.nn.one_hot(c, n_cls) - p[:, pos])
            u = flat(pullback(cot)[0])
            return (w[:, pos] * p[:, pos, c])[:, None] * u * u, None

        h, _ = _sum_map(logit, n_pos * n_cls, width)
    else:  # fisher: labels sampled from the model, one backward each

        def probe(s):
            keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.fold_in(key, n), s))(idx)
            y = jax.vmap(jax.random.categorical)(keys, z)
            u = flat(pullback(w[..., None] * (p - jax.nn.one_hot(y, n_cls)))[0])
            return u * u, None

        h, _ = _sum_map(probe, probes, width)
        h = h / probes
    return g, unflat(h), losses


@eqx.filter_jit
def _curvature(fn, acts, inputs, labels, key, *, loss, method, probes, batch_size, progress):
    n_cls = _check_logits(fn, acts, inputs, labels, method).shape[-1]
    n = jax.tree_util.tree_leaves(acts)[0].shape[0]
    n_chunks = -(-n // batch_size)
    pad = n_chunks * batch_size - n

    def chunked(x):  # pad with copies of the last sample (sliced off below)
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
        return x.reshape(n_chunks, batch_size, *x.shape[1:])

    def unchunked(x):
        return x.reshape(n_chunks * batch_size, *x.shape[2:])[:n]

    def one_chunk(args):
        A, X, Y, idx = args
        out = _chunk_result(fn, A, X, Y, idx, key, loss=loss, method=method, probes=probes)
        if progress:
            jax.debug.callback(tick, idx[0])
        return out

    chunks = jax.tree_util.tree_map(chunked, (acts, inputs, labels, jnp.arange(n)))
    g, h, losses = jax.lax.map(one_chunk, chunks)
    g, h, losses = jax.tree_util.tree_map(unchunked, (g, h, losses))
    finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves((g, h))])
    )
    bad_label = jnp.array(-1)
    if labels is not None:  # the first label that is no class of the logits, or -1
        bad = ((labels < -1) | (labels >= n_cls)).reshape(-1)
        bad_label = jnp.where(jnp.any(bad), jnp.argmax(bad), -1)
    return Curvature(grad=g, curv=h, loss=losses), finite, bad_label
