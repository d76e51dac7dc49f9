"""How good an SAE is: sparsity, reconstruction, dead latents, and the model's loss with it.

- `l0`: mean number of active features per row.
- `fvu`: fraction of variance unexplained, `Σ‖x − x̂‖² / Σ‖x − x̄‖²` over the rows.
- `dead_fraction`: the share of features that never fire on the given rows.
- `spliced_ce`: the model's next-token cross-entropy clean, with each SAE's reconstruction in
  place of its site's activation (`splice(model, sae, error_keep=0)`), and with the site
  zero-ablated; loss recovered `= (CE_zero − CE_sae) / (CE_zero − CE_clean)` (Bricken et al.
  2023; Gao et al. 2024). Position 0 (BOS, whose residual norm is tens of times the others')
  keeps its clean activation in both edits when `skip_first` (the default, as the SAEs are
  trained without it), and the prediction made there, the same in every run, is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._finite import check_finite
from ._sae import SAE


@eqx.filter_jit
def _stats(sae: SAE, x):
    f = sae.encode(x)
    err = x - sae.decode(f)
    return (jnp.sum(err**2), jnp.sum(f != 0), jnp.any(f != 0, axis=0), jnp.sum(x, 0),
            jnp.sum(x**2))  # fmt: skip


def reconstruction(sae: SAE, x, *, chunk: int = 4096) -> dict[str, float]:
    """`{"fvu", "l0", "dead_fraction", "rows"}` of `sae` on activations `x [rows, d_in]`
    (computed in chunks of `chunk` rows)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"activations must be [rows, d_in]; got shape {x.shape}")
    sae.check_width(x)
    check_finite(x, f"activation{' at ' + sae.site if sae.site else ''}", axes=("row", "unit"))
    sq_err = active = 0.0
    fired = np.zeros(sae.d_sae, bool)
    total = np.zeros(x.shape[1], np.float64)
    sq = 0.0
    for start in range(0, len(x), chunk):
        e, a, f, s, q = _stats(sae, jnp.asarray(x[start : start + chunk]))
        sq_err += float(e)
        active += float(a)
        fired |= np.asarray(f)
        total += np.asarray(s, np.float64)
        sq += float(q)
    n = len(x)
    variance = sq - float(np.sum(total**2)) / n
    return {"fvu": sq_err / variance, "l0": active / n, "dead_fraction": float(1 - fired.mean()),
            "rows": n}  # fmt: skip


def fvu(sae: SAE, x) -> float:
    """Fraction of variance unexplained on `x [rows, d_in]`."""
    return reconstruction(sae, x)["fvu"]


def l0(sae: SAE, x) -> float:
    """Mean number of active features per row of `x [rows, d_in]`."""
    return reconstruction(sae, x)["l0"]


def dead_fraction(sae: SAE, x) -> float:
    """The share of features that never fire on `x [rows, d_in]`."""
    return reconstruction(sae, x)["dead_fraction"]


@eqx.filter_jit
def _ce(model, tokens, first: int):
    def one(t):
        logp = jax.nn.log_softmax(model(t)[first:-1].astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, t[first + 1 :, None], axis=-1)[:, 0]

    return jax.vmap(one)(tokens)


def cross_entropy(model, tokens, *, skip_first: bool = True, chunk: int = 8) -> float:
    """Mean next-token cross-entropy (nats) of `model` on `tokens [rows, seq]` (without the
    prediction made at position 0 when `skip_first`)."""
    tokens = model.check_tokens(tokens, ndim=2)
    first = int(skip_first)
    if tokens.shape[1] < first + 2:
        raise ValueError(f"need at least {first + 2} tokens per row; got {tokens.shape[1]}")
    parts = [np.asarray(_ce(model, tokens[i : i + chunk], first))
             for i in range(0, tokens.shape[0], chunk)]  # fmt: skip
    out = np.concatenate(parts)
    check_finite(out, "cross-entropy", axes=("row", "position"))
    return float(out.mean())


def spliced_ce(model, saes: SAE | Sequence[SAE], tokens, *, skip_first: bool = True,
               chunk: int = 8, clean: float | None = None) -> list[dict]:  # fmt: skip
    """For each SAE: `{"site", "ce_clean", "ce_sae", "ce_zero", "loss_recovered"}` on
    `tokens [rows, seq]` (see the module docstring); `clean` reuses a clean CE already
    measured."""
    from ..interventions import Zero, intervene
    from ._splice import splice

    saes = (saes,) if isinstance(saes, SAE) else tuple(saes)
    tokens = model.check_tokens(tokens, ndim=2)
    seq = tokens.shape[1]
    if clean is None:
        clean = cross_entropy(model, tokens, skip_first=skip_first, chunk=chunk)
    keep = np.zeros((seq, 1), np.float32)
    if skip_first:
        keep[0] = 1.0
    out = []
    for sae in saes:
        spliced = splice(model, sae, error_keep=keep)
        ce_sae = cross_entropy(spliced, tokens, skip_first=skip_first, chunk=chunk)
        zero = intervene(model, {sae.site: Zero(position=np.arange(int(skip_first), seq))})
        ce_zero = cross_entropy(zero, tokens, skip_first=skip_first, chunk=chunk)
        recovered = (ce_zero - ce_sae) / (ce_zero - clean) if ce_zero != clean else float("nan")
        out.append({"site": sae.site, "ce_clean": clean, "ce_sae": ce_sae, "ce_zero": ce_zero,
                    "loss_recovered": recovered})  # fmt: skip
    return out
