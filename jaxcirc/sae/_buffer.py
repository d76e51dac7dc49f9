"""An activation buffer: a model run on token rows, stopped after the last site needed.

`ActivationBuffer(model, tokens, sites)` runs `model` on `rows_per_refill` token rows at a
time, keeps each site's activation at the positions chosen (position 0, BOS, left out by
default: its residual norm is tens of times the others' and no SAE should spend its capacity
on it; pads left out when `pad_id` is given), shuffles the refill's rows (a NumPy generator
seeded by `(seed, refill)`) and yields `{site: [batch_size, d_in]}` float32 batches; a
refill's last partial batch is dropped. The run stops after the block of the last site, so
sites at layer 11 of a 30-layer model cost 12 blocks. The stream is resumable: `position()`
and `seek(position)`.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_int
from .._finite import NonFiniteError, first_nonfinite
from ..models._site import SiteRef


def _last_block(model, sites) -> int | None:
    """The block after which every site has been computed (`None`: the embedding only)."""
    last = -1
    n = len(model.blocks)
    for name in sites:
        ref = SiteRef.parse(name)
        if ref.layer is not None:
            last = max(last, ref.layer)
        elif ref.kind not in ("embed", "pos_embed"):
            last = n - 1
    return last


@functools.partial(eqx.filter_jit)
def _run_to(model, tokens, sites: tuple[str, ...], last: int):
    def one(t):
        x, acts = model.embed_tokens(t)
        for block in model.blocks[: last + 1]:
            x, block_acts = block(x)
            acts.update(block_acts)
        if any(s not in acts for s in sites):
            _, final = model.readout(x)
            acts.update(final)
        return {s: acts[s].reshape(acts[s].shape[0], -1) for s in sites}

    return jax.vmap(one)(tokens)


def site_activations(model, tokens, sites) -> dict[str, jax.Array]:
    """`{site: [rows, seq, width]}` for token rows `[rows, seq]`, the run stopped after the
    last site (a site with several unit axes is flattened after the position)."""
    sites = tuple(sites)
    _check_sites(model, sites)
    tokens = model.check_tokens(tokens, ndim=2)
    return _run_to(model, tokens, sites, _last_block(model, sites))


def _check_sites(model, sites):
    from ..models._replacement import site_table

    table = site_table(model)
    for name in sites:
        if name not in table:
            from ..models._site import nearest

            raise ValueError(f"the model has no site {name!r}{nearest(name, table)}")


class ActivationBuffer:
    """Shuffled batches of a model's activations at `sites` (see the module docstring).

    **Arguments:** `model`; `tokens` `[rows, seq]` ids; `sites` (names); `batch_size` rows per
    batch; `rows_per_refill` token rows per model run (the shuffle mixes their positions);
    `seed`; `skip_first` (leave position 0, BOS, out; default true); `pad_id` (positions
    holding it are left out); `epochs` (passes over the tokens).
    """

    def __init__(self, model, tokens, sites, *, batch_size: int = 4096, rows_per_refill: int = 64,
                 seed: int = 0, skip_first: bool = True, pad_id: int | None = None,
                 epochs: int = 1, chunk_rows: int | None = None):  # fmt: skip
        self.sites = tuple([sites] if isinstance(sites, str) else sites)
        if not self.sites:
            raise ValueError("ActivationBuffer needs at least one site")
        _check_sites(model, self.sites)
        self.model = model
        self.tokens = np.asarray(model.check_tokens(tokens, ndim=2))
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.rows_per_refill = check_int(rows_per_refill, "rows_per_refill", 1)
        self.chunk_rows = check_int(chunk_rows or rows_per_refill, "chunk_rows", 1)
        self.seed = int(seed)
        self.epochs = check_int(epochs, "epochs", 1)
        keep = np.ones(self.tokens.shape, bool)
        if skip_first:
            keep[:, 0] = False
        if pad_id is not None:
            keep &= self.tokens != pad_id
        self.keep = keep
        self.last = _last_block(model, self.sites)
        self.n_refills = math.ceil(len(self.tokens) / self.rows_per_refill)
        self._counts = [
            int(self._rows(r)[1].sum()) // self.batch_size for r in range(self.n_refills)
        ]
        if sum(self._counts) == 0:
            raise ValueError(
                f"{int(keep.sum())} positions per refill of {self.rows_per_refill} rows make no "
                f"batch of {self.batch_size}: use more rows_per_refill or a smaller batch_size"
            )
        self._refill = 0  # refills done over all epochs
        self._batch = 0  # batches taken from the current refill

    def _rows(self, refill: int):
        r = refill % self.n_refills
        rows = slice(r * self.rows_per_refill, (r + 1) * self.rows_per_refill)
        return self.tokens[rows], self.keep[rows], r * self.rows_per_refill

    def __len__(self) -> int:
        return sum(self._counts) * self.epochs

    @property
    def d_in(self) -> dict[str, int]:
        from ..models._replacement import site_table

        table = site_table(self.model)
        return {s: math.prod(table[s][1][1:]) for s in self.sites}

    def position(self) -> dict:
        return {"refill": self._refill, "batch": self._batch}

    def seek(self, position: dict) -> None:
        self._refill, self._batch = int(position["refill"]), int(position["batch"])

    def activations(self, refill: int) -> dict[str, np.ndarray]:
        """The shuffled activations `{site: [n, d_in]}` of one refill, checked to be finite."""
        tokens, keep, first_row = self._rows(refill)
        parts = {s: [] for s in self.sites}
        for start in range(0, len(tokens), self.chunk_rows):
            out = _run_to(self.model, jnp.asarray(tokens[start : start + self.chunk_rows]),
                          self.sites, self.last)  # fmt: skip
            for s in self.sites:
                parts[s].append(np.asarray(out[s]))
        rows, positions = np.nonzero(keep)
        order = np.random.default_rng([self.seed, refill]).permutation(len(rows))
        acts = {}
        for s in self.sites:
            full = np.concatenate(parts[s])
            if not np.isfinite(full[rows, positions]).all():
                i, p, u = first_nonfinite(full, keep[:, :, None])
                raise NonFiniteError(
                    f"non-finite activation at site {s}: token row {first_row + i}, position "
                    f"{p}, unit {u} is {full[i, p, u]}"
                )
            acts[s] = full[rows[order], positions[order]]
        return acts

    def __iter__(self):
        total = self.n_refills * self.epochs
        while self._refill < total:
            count = self._counts[self._refill % self.n_refills]
            if self._batch < count:
                acts = self.activations(self._refill)
                while self._batch < count:
                    b = self._batch * self.batch_size
                    batch = {s: a[b : b + self.batch_size] for s, a in acts.items()}
                    self._batch += 1
                    yield batch
            self._refill += 1
            self._batch = 0
