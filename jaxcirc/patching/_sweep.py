"""Activation patching sweeps: one compiled program over every (layer, unit).

For each unit, the clean activation is patched into the corrupted run and `metric` is read
off the patched logits, with the semantics of TransformerLens's `patching.get_act_patch_*`
(Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024, "How to use and interpret
activation patching"). The corrupted run is cached and each patched run recomputes only what
the patch can change:

- **layers**: a patch at layer `l` starts from the corrupted residual stream entering `l`;
- **positions**: in a causal model a patch at position `p` leaves every position `< p`
  unchanged in every layer. Units are grouped into static position buckets; the runs of a
  bucket recompute only the positions from the bucket's first on (`Transformer.resume` with
  `start`; blocks given a `KVPrefix`), attending to the corrupted run's cached keys and
  values before it. Per-`"head"` units (all positions) run every position;
- **logits**: only the positions the metric reads are unembedded (`logit_positions`, or the
  positions a metric declares, `jaxcirc.metrics.read_positions`); positions before a bucket's
  start read the corrupted run's.

A run patched at layer `l` takes blocks `l..n-1`. The engine follows the model's layer form
(`jaxcirc.models.scan_layers`). A scanned model whose blocks all have one form (no
intervention inside, same shapes) runs block bodies scanned over the layers: step `i` runs
block `i` on every run patched up to its segment of layers (runs patched later than `i`
compute values their start discards; three segments: 4/3 of the exact work), so the program
holds three blocks per bucket and compiles in about the same time at any depth. Otherwise
the blocks are unrolled, block `i` taking the runs patched at layers `<= i`
as one batch. Units are chunked under `lax.map`; the whole sweep traces once.

**Prompts.** When the prompts' cached runs and the smallest chunk of units would not fit
`memory_budget`, and the metric is a mean over examples (`jaxcirc.metrics.is_example_mean`),
the prompts are split into equal chunks (`_budget`): one compiled program per chunk, its
metric the sum of the chunk's per-example values, averaged over the batch. A metric without
a per-example form keeps the whole batch (with a warning).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import _mesh
from .. import metrics as metrics_module
from .._checks import check_index
from .._finite import finite_result
from .._progress import progress_bar, tick
from ..interventions import Patch, intervene, resolve
from ..interventions._library import AbstractSelectiveIntervention, Chain, Function
from ..metrics._check import check_metric
from ..models._attention import KVPrefix
from ..models._replacement import get_site
from ..models._scan import groups as scan_groups
from ..models._scan import stack_blocks
from ..models._site import SITE_KINDS, AbstractIntervention, Site, SiteRef, nearest
from ..models._transformer import Transformer
from . import _budget
from ._stable import stable

# site kind -> the `per` choices it supports, each naming the axes enumerated
PER = {
    **{
        k: {"position": ("position",)}
        for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    },
    **{k: {"head": ("head",), "position_head": ("position", "head")} for k in ("q", "k", "v", "z")},
    # TransformerLens orders pattern results [layer, head, dest_pos]; so do we
    "pattern": {"head": ("head",), "head_position": ("head", "position")},
}


def _check(model, clean, corrupt, site, per):
    if site not in PER:
        raise ValueError(f"cannot sweep site {site!r}{nearest(site, PER)}; choices: {sorted(PER)}")
    if per not in PER[site]:
        raise ValueError(
            f"site {site!r} sweeps per {sorted(PER[site])}; "
            f"got per={per!r}{nearest(per, PER[site])}"
        )
    resolve(model, SiteRef(site, 0))
    clean = model.check_tokens(clean, name="clean")
    corrupt = model.check_tokens(corrupt, name="corrupt")
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean {clean.shape} and corrupt {corrupt.shape} must have the same shape [batch, seq]"
        )
    if clean.ndim != 2 or 0 in clean.shape:
        raise ValueError(
            f"clean and corrupt must be non-empty [batch, seq] token arrays; got {clean.shape}"
        )
    return clean, corrupt


@finite_result("patching sweep", axes=lambda a: ("layer", *PER[a["site"]][a["per"]]))
def sweep(
    model: Transformer,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"],
    metric: Callable[[Float[Array, "batch seq d_vocab"]], Float[Array, ""]],
    site: str = "resid_pre",
    per: str = "position",
    *,
    chunk_size: int | None = None,
    logit_positions: Int[Array, " n"] | Int[Array, "batch n"] | None = None,
    buckets: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> Float[Array, "n_layers ..."]:
    """Patch each unit's clean activation into the corrupted run; return `metric` per unit.

    **Arguments:**

    - `model`: the model (it may already carry interventions; patches are applied after them;
      an intervention that may mix positions, a `Function`, keeps every position computed).
    - `clean`, `corrupt`: token batches of the same shape `[batch, seq]`.
    - `metric`: maps the patched logits `[batch, seq, d_vocab]` to a scalar. It is held static:
      the compiled sweep is reused for the same metric, an `eqx.Module` of other arrays (see
      `jaxcirc.metrics.bind`), or a fresh closure of the same code capturing the same values
      (else a warning says why it compiles again). A metric that declares the
      positions it reads (`jaxcirc.metrics.read_positions`) gets only those unembedded, through
      its `on_positions(logits [batch, n, d_vocab])`.
    - `site`: `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out` (per `"position"`),
      `q`, `k`, `v`, `z` (per `"head"` or `"position_head"`), or `pattern` (per `"head"` or
      `"head_position"`, the query position).
    - `chunk_size`: units evaluated at once (vmapped); default keeps about 1 GiB live.
    - `logit_positions`: if given (`[n]` for every example or `[batch, n]` per example), only
      these positions are unembedded and `metric` receives `[batch, n, d_vocab]`.
    - `buckets`: how many position buckets units that patch one position are grouped into
      (each bucket's runs recompute the positions from its first on; the compiled program
      holds one block per bucket, or per bucket and layer for a model with interventions
      inside its blocks); default `min(seq, 4)`. `1` recomputes every position.
    - `memory_budget`: bytes of activations to keep live (default 1 GiB): units are chunked,
      and, for a metric with a per-example form, prompts too (see the module docstring).
    - `progress`: show a progress bar over blocks.
    - `mesh`, `batch_axis`: split the prompts over the devices of this `jax.sharding.Mesh`
      along `batch_axis` (default its first axis; a tuple of names splits over all of them);
      a batch that does not divide the axis size is padded and masked (see `jaxcirc._mesh`).
      The metric must be a mean over examples (`jaxcirc.metrics.is_example_mean`).

    **Returns:** `[n_layers, seq]` for `"position"`, `[n_layers, n_heads]` for `"head"`,
    `[n_layers, seq, n_heads]` for `"position_head"` (`n_kv_heads` for `k`, `v`),
    `[n_layers, n_heads, seq]` for `"head_position"`: the order of
    TransformerLens's `get_act_patch_*` functions.
    """
    clean, corrupt = _check(model, clean, corrupt, site, per)
    metric = stable(metric)  # a fresh lambda of the same code and values: the same program
    batch, seq = clean.shape
    limit = _budget.budget(memory_budget)
    _check_chunk_size(chunk_size)
    positions, read = _read_plan(metric, logit_positions, batch, seq)
    n_read = seq if positions is None else positions.shape[1]
    vocab = model.cfg.d_vocab
    check_metric(metric.on_positions if read == "declared" else metric, (batch, n_read, vocab))
    fixed, units = _prompt_bytes(model, site, per, seq, n_read, read, buckets, chunk_size)
    if mesh is not None:
        axes = _mesh.check_mesh(mesh, batch_axis)
        declared = read == "declared"
        splittable = metrics_module.is_example_mean(metric, on_positions=declared)
        _mesh.check_splittable(splittable, metric, "sweep")
        per_device = -(-batch // _mesh.axis_size(mesh, axes))
        size = _budget.prompts_per_chunk(per_device, fixed + units, limit)
        plan = _plan(model, site, per, size, seq, n_read, buckets, chunk_size, limit - fixed * size)
        total = plan.steps * plan.n_chunks * -(-per_device // size) * mesh.size
        args = (model, metric, site, read, plan, progress)
        prompts = (clean, corrupt, positions)
        with progress_bar(progress, total=total, desc=f"patching {site} per {per}", unit="block"):
            out = _mesh.mean_over_mesh(_sweep_rows, args, prompts, batch, size, mesh, axes)
            return jax.block_until_ready(out)
    size = _budget.prompts_per_chunk(
        batch, fixed + units, limit, metric, on_positions=read == "declared", what="sweep"
    )
    if size == batch:  # every prompt at once
        plan = _plan(model, site, per, batch, seq, n_read, buckets, chunk_size, limit)
        total = plan.steps * plan.n_chunks
        with progress_bar(progress, total=total, desc=f"patching {site} per {per}", unit="block"):
            out = _sweep(model, clean, corrupt, metric, positions, site, read, plan, progress)
            return jax.block_until_ready(out)
    # chunks of prompts: the units share what the chunk's cached runs leave of the budget
    plan = _plan(model, site, per, size, seq, n_read, buckets, chunk_size, limit - fixed * size)
    total = plan.steps * plan.n_chunks * -(-batch // size)

    def chunk(rows, valid):
        tokens = _budget.take((clean, corrupt, positions), rows)
        return _sweep(
            model, *tokens[:2], metric, tokens[2], site, read, plan, progress, rows, valid
        )

    with progress_bar(progress, total=total, desc=f"patching {site} per {per}", unit="block"):
        return jax.block_until_ready(_budget.mean_over_prompts(chunk, batch, size))


# ------------------------------------------------------------------------- what the metric reads


def _positions(positions, batch: int, seq: int, what: str) -> Int[Array, "batch n"]:
    """Validated positions `[batch, n]`, negative ones counted from the end."""
    p = np.asarray(positions)
    if not np.issubdtype(p.dtype, np.integer) or p.ndim not in (1, 2) or p.shape[-1] == 0:
        raise ValueError(
            f"{what} must be a non-empty int array [n] or [batch, n]; got {p.dtype} {p.shape}"
        )
    if p.ndim == 2 and p.shape[0] != batch:
        raise ValueError(f"{what} has shape {p.shape}; per example it must be [batch={batch}, n]")
    check_index(p, seq, what, context=f" for {seq} positions")
    p = np.where(p < 0, p + seq, p)
    return jnp.asarray(np.broadcast_to(p, (batch, p.shape[-1])), jnp.int32)


def _declared(metric, batch: int, seq: int):
    """The positions `metric` declares it reads (`jaxcirc.metrics.read_positions`), or None."""
    read_positions = getattr(metrics_module, "read_positions", None)
    if read_positions is not None:
        return read_positions(metric, batch, seq)
    declare = getattr(metric, "positions", None)
    if callable(declare) and callable(getattr(metric, "on_positions", None)):
        return declare(batch, seq)
    return None


def _read_plan(metric, logit_positions, batch: int, seq: int):
    """`(positions [batch, n] or None, how the metric reads)`: `"full"` logits, `"positions"`
    (the user's `logit_positions`, given to `metric`) or `"declared"` (`metric.on_positions`)."""
    if logit_positions is not None:
        return _positions(logit_positions, batch, seq, "logit_positions"), "positions"
    declared = _declared(metric, batch, seq)
    if declared is None:
        return None, "full"
    p = _positions(declared, batch, seq, f"positions declared by {type(metric).__name__}")
    return p, "declared"


# ------------------------------------------------------------------------- the static plan


@dataclasses.dataclass(frozen=True)
class _Bucket:
    """Units (flat indices into the unit grid) whose runs recompute positions `start:`."""

    start: int
    units: tuple[int, ...]
    chunk: int  # units per chunk
    read_layers: int  # layers whose full logits are computed at once


@dataclasses.dataclass(frozen=True)
class _Plan:
    names: tuple[str, ...]  # the enumerated axes
    grid: tuple[int, ...]  # sizes of the enumerated axes
    axes: tuple[tuple[int, ...], ...]  # per enumerated axis, its index of every flat unit
    buckets: tuple[_Bucket, ...]
    n_chunks: int
    stacked: bool  # one block body scanned for every layer (`_scanned`), else unrolled
    steps: int  # progress ticks per chunk: the layers, or every bucket's blocks
    prefixed: tuple[str, ...]  # sites whose interventions see the cached prefix
    budget: int  # bytes the chunks of units may keep live


def _positionwise(intervention: AbstractIntervention) -> bool:
    """Whether `intervention` acts on each position alone (so a window + cached prefix is
    exact): jaxcirc's selective interventions, except a `Function` (it may mix positions)."""
    if isinstance(intervention, Chain):
        return all(_positionwise(i) for i in intervention.interventions)
    return isinstance(intervention, AbstractSelectiveIntervention) and not isinstance(
        intervention, Function
    )


def _intervened(model: Transformer) -> list[Site]:
    """The sites of the blocks and the final norm that carry an intervention."""
    is_site = lambda x: isinstance(x, Site)
    leaves = jax.tree_util.tree_leaves((model.blocks, model.ln_final), is_leaf=is_site)
    return [x for x in leaves if is_site(x) and x.intervention is not None]


def _windowable(model: Transformer, site: str, per: str) -> bool:
    """Whether units of `site` per `per` may recompute positions from a bucket's start on."""
    if "position" not in PER[site][per] or not model.cfg.causal:
        return False
    return all("position" in s.axes and _positionwise(s.intervention) for s in _intervened(model))


def _stackable(model: Transformer) -> bool:
    """Whether the model runs its layers scanned, no block carries an intervention and all
    are of one form (`jaxcirc.models._scan.same_form`): then one block body serves every
    layer (`_scanned`)."""
    if not model.scan or any(s.name.startswith("blocks.") for s in _intervened(model)):
        return False
    return len(scan_groups(model.blocks)) == 1


def _site_heads(model: Transformer, site: str) -> int:
    attn = model.blocks[0].attn
    return (attn.W_K if site in ("k", "v") else attn.W_Q).shape[0]


def _unit_bytes(model: Transformer, batch: int, seq: int, window: int, n_read: int) -> int:
    """Bytes one unit keeps live: every layer's run through a block, and one layer's logits."""
    cfg = model.cfg
    per_row = 8 * cfg.d_model + 3 * cfg.d_mlp + 2 * cfg.n_heads * seq
    return 4 * batch * (cfg.n_layers * window * per_row + n_read * cfg.d_vocab)


def _prompt_bytes(model, site, per, seq, n_read, read, buckets, chunk_size) -> tuple[int, int]:
    """Bytes one prompt keeps live: `(its cached runs, its share of the smallest chunk of
    units)` (one unit per bucket, or `chunk_size`, through every layer, and its logits)."""
    cfg = model.cfg
    _, _, _, groups = _groups(model, site, per, seq, buckets)
    site_row = cfg.n_heads * seq if site == "pattern" else cfg.d_model
    cached = cfg.n_layers * seq * (3 * cfg.d_model + site_row)  # stream in, k, v, clean site
    run = seq * (8 * cfg.d_model + 3 * cfg.d_mlp + 2 * cfg.n_heads * seq)  # one block's
    kept = seq * cfg.d_vocab if read == "full" else n_read * cfg.d_model  # what positions read
    units = sum(
        min(chunk_size or 1, len(u)) * _unit_bytes(model, 1, seq, seq - s, n_read)
        for s, u in groups
    )
    if read != "full":  # `_read_rows`: every unit's read rows, one unit's logits per layer
        every = sum(len(u) for _, u in groups)
        units += 4 * n_read * cfg.n_layers * (every * cfg.d_model + cfg.d_vocab)
    return 4 * (cached + run + kept), units


def _groups(model, site, per, seq, buckets):
    """`(axis names, grid, flat unit index per axis, [(bucket start, its units)])`."""
    names = PER[site][per]
    sizes = {"position": seq, "head": _site_heads(model, site)}
    grid = tuple(sizes[a] for a in names)
    flat = {a: g.reshape(-1) for a, g in zip(names, np.indices(grid))}
    if buckets is None:
        buckets = min(seq, 4)
    if not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be a positive int; got {buckets!r}")
    if not _windowable(model, site, per):
        buckets = 1
    starts = sorted({round(b * seq / buckets) for b in range(min(buckets, seq))})
    groups = []
    for start, stop in zip(starts, [*starts[1:], seq]):
        units = np.arange(math.prod(grid))
        if "position" in flat:
            units = units[(flat["position"] >= start) & (flat["position"] < stop)]
        groups.append((start, units))
    return names, grid, flat, groups


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")


def _plan(
    model, site, per, batch, seq, n_read, buckets, chunk_size, budget=_budget.MEMORY_BUDGET
) -> _Plan:
    """Buckets, chunks and the engine, from shapes alone (static for the compiled sweep)."""
    _check_chunk_size(chunk_size)
    names, grid, flat, groups = _groups(model, site, per, seq, buckets)
    budget = max(1, budget)
    # every bucket advances one chunk at a time: split the units into chunks that fit together
    if chunk_size:
        n_chunks = max(-(-len(u) // chunk_size) for _, u in groups)
    else:
        live = sum(len(u) * _unit_bytes(model, batch, seq, seq - s, n_read) for s, u in groups)
        n_chunks = min(max(len(u) for _, u in groups), -(-live // budget))
    out = []
    for start, units in groups:
        chunk = -(-len(units) // n_chunks)
        logits = 4 * chunk * batch * seq * model.cfg.d_vocab
        read_layers = max(1, min(model.cfg.n_layers, budget // logits))
        out.append(_Bucket(start, tuple(int(u) for u in units), chunk, read_layers))
    prefixed = tuple(s.name for s in _intervened(model)) if len(out) > 1 else ()
    axes = tuple(tuple(int(i) for i in flat[a]) for a in names)
    stacked = _stackable(model)
    n_layers = model.cfg.n_layers
    steps = n_layers if stacked else n_layers * len(out)
    return _Plan(names, grid, axes, tuple(out), n_chunks, stacked, steps, prefixed, budget)


# ------------------------------------------------------------------------- the compiled sweep


class _Prefixed(AbstractIntervention):
    """`inner` on the whole positions axis: the cached run's activation at the positions
    before the window, then the window; only the window is kept. A model's own position-wise
    interventions thus act on a window exactly as on a full run."""

    inner: AbstractIntervention
    prefix: Array
    axis: int = eqx.field(static=True)

    def __call__(self, x, site):
        start = self.prefix.shape[self.axis]
        full = jnp.concatenate([self.prefix.astype(x.dtype), x], axis=self.axis)
        return jax.lax.slice_in_dim(self.inner(full, site), start, None, axis=self.axis)


def _with_prefixes(model: Transformer, prefixes: dict[str, Array]) -> Transformer:
    if not prefixes:
        return model
    refs = [SiteRef.parse(name) for name in prefixes]
    old = [get_site(model, r.name) for r in refs]
    new = [
        Site(s.name, s.axes, _Prefixed(s.intervention, prefixes[s.name], s.axes.index("position")))
        for s in old
    ]
    return eqx.tree_at(lambda m: [get_site(m, r.name) for r in refs], model, new)


@eqx.filter_jit
def _sweep(
    model, clean, corrupt, metric, positions, site, read, plan, progress, rows=None, valid=None
):
    """The sweep of a batch; given `rows` (the examples these are) and `valid`, the sum of the
    metric's per-example values over the valid rows in place of the metric."""
    n_layers = model.cfg.n_layers
    clean_sites = jax.vmap(lambda t: model.run(t)[1].stack(site))(clean)  # [batch, layer, ...]
    logits, acts = jax.vmap(model.run)(corrupt)
    final = acts[SiteRef("resid_post", n_layers - 1)]
    data = {
        "entering": acts.stack("resid_pre"),  # [batch, layer, seq, d_model]
        "clean": clean_sites,
        "kv": (acts.stack("k"), acts.stack("v")) if plan.stacked else model.kv_cache(acts),
        "sites": {name: acts[name] for name in plan.prefixed},
        # what positions before a bucket's start read: the corrupted run's
        "read": logits if read == "full" else jax.vmap(lambda x: model.ln_final(x)[0])(final),
        "positions": positions,
    }
    exs = tuple(_examples(model, site, b.start, data) for b in plan.buckets)
    if rows is None:
        reader = metric.on_positions if read == "declared" else metric
    else:
        reader = _budget.example_reader(metric, rows, valid, on_positions=read == "declared")
    gather = read != "full"
    runs = _scanned if plan.stacked else _unrolled

    def one_chunk(units):  # per bucket {axis: [chunk]}
        finals = runs(model, site, plan, units, exs, progress)
        return tuple(
            _readout(model, b, x, e, gather, reader) for b, x, e in zip(plan.buckets, finals, exs)
        )

    outs = jax.lax.map(one_chunk, tuple(_chunked(plan, b) for b in plan.buckets))
    outs = [  # [n_chunks, layer, chunk, ...] -> [layer, unit, ...]
        jnp.moveaxis(o, 0, 1).reshape(n_layers, -1, *o.shape[3:])[:, : len(b.units)]
        for o, b in zip(outs, plan.buckets)
    ]
    order = np.argsort(np.concatenate([b.units for b in plan.buckets]), kind="stable")
    out = jnp.concatenate(outs, axis=1)[:, order]
    values = _read_rows(model, out, reader, plan.budget) if gather else out
    return values.reshape(n_layers, *plan.grid)


def _sweep_rows(args, prompts, rows, valid):
    """The sweep's sums over the `valid` prompts of a device's chunk (`jaxcirc._mesh`)."""
    model, metric, site, read, plan, progress = args
    clean, corrupt, positions = prompts
    return _sweep(model, clean, corrupt, metric, positions, site, read, plan, progress, rows, valid)


def _chunked(plan: _Plan, bucket: _Bucket) -> dict[str, Int[Array, "n_chunks chunk"]]:
    """The bucket's units per enumerated axis, padded (repeating the last) into chunks."""
    index = np.asarray(bucket.units)
    index = np.concatenate(
        [index, np.repeat(index[-1:], bucket.chunk * plan.n_chunks - len(index))]
    )
    return {
        a: jnp.asarray(np.asarray(ix)[index].reshape(plan.n_chunks, bucket.chunk), jnp.int32)
        for a, ix in zip(plan.names, plan.axes)
    }


def _examples(model, site: str, s: int, data: dict) -> dict:
    """What the runs of a bucket starting at `s` read, one entry per example (batch first)."""
    axes = SiteRef(site, 0).axes

    def window(a, axis):
        return jax.lax.slice_in_dim(a, s, None, axis=axis)

    def before(a, axis):
        return jax.lax.slice_in_dim(a, 0, s, axis=axis)

    sites = {
        name: before(value, 1 + get_site(model, name).axes.index("position"))
        for name, value in data["sites"].items()
    }
    return {
        "entering": window(data["entering"], 2),  # [batch, layer, window, d_model]
        "clean": window(data["clean"], 2 + axes.index("position")),
        "kv": data["kv"] if s else None,
        "sites": sites if s else {},
        "read": before(data["read"], 1) if s else None,
        "positions": data["positions"],
    }


def _patch(s: int, value, mask, unit) -> Patch:
    """The clean `value` at `unit` (positions counted from the window's start `s`)."""
    return Patch(value, mask=mask, **{a: u - s if a == "position" else u for a, u in unit.items()})


def _unrolled(model, site, plan, units, exs, progress):
    """Each bucket's final windows `[layer, chunk, batch, window, d]`, block by block: block
    `i` runs the runs patched at layers `0..i` as one batch (any model)."""
    n_layers, out = model.cfg.n_layers, []
    for bucket, unit, ex in zip(plan.buckets, units, exs):
        s = bucket.start

        def step(i, x, layer, unit, e, s=s):
            patch = _patch(s, e["clean"][i], layer == i, unit)
            patched = intervene(_with_prefixes(model, e["sites"]), {SiteRef(site, i): patch})
            return patched.resume(x, i, start=s, cache=e["kv"], until=i + 1)

        x = None
        for i in range(n_layers):
            entering = ex["entering"][:, i]
            new = jnp.broadcast_to(entering, (1, bucket.chunk, *entering.shape))
            x = new if x is None else jnp.concatenate([x, new])  # [i + 1, chunk, batch, ...]
            f = jax.vmap(partial(step, i), in_axes=(0, None, None, 0))
            f = jax.vmap(f, in_axes=(0, None, 0, None))
            x = jax.vmap(f, in_axes=(0, 0, None, None))(x, jnp.arange(i + 1), unit, ex)
            if progress:
                jax.debug.callback(tick, x[(0,) * x.ndim])
        out.append(x)
    return tuple(out)


SEGMENTS = 3  # the scanned engine's scans: K of them compile K bodies, do (K+1)/K of the work


def _segments(n_layers: int, k: int = SEGMENTS) -> list[int]:
    """Bounds of `k` (at most) runs of consecutive layers of about equal length."""
    return sorted({round(j * n_layers / k) for j in range(k + 1)})


def _scanned(model, site, plan, units, exs, progress):
    """Each bucket's final windows `[layer, chunk, batch, window, d]` from block bodies
    scanned over the layers (the blocks are stacked: `_stackable`), each block's weights read
    once per step: step `i` runs block `i` on every run patched at a layer of the segment
    (`_segments`) or before. The run patched at layer `l` starts at step `l` from the corrupted
    stream entering `l`; until then its slot holds values its start overwrites. `k` segments
    do `(k + 1) / k` times the block runs of the unrolled engine, with `k` bodies per bucket."""
    weights, static = stack_blocks(model.blocks)
    path = SITE_KINDS[site][0].split(".")
    get = lambda block: functools.reduce(getattr, path, block)

    def step(s, i, block, x, run, unit, e):
        """One example's window `x` of the run patched at `run` through block `i`."""
        x = jnp.where(run == i, e["entering"][i], x)  # the run starts: the corrupted stream
        site_ = get(block)
        patch = _patch(s, e["clean"][i], run == i, unit)
        block = eqx.tree_at(get, block, Site(site_.name, site_.axes, patch))
        prefix = KVPrefix(*(kv[i, :s] for kv in e["kv"])) if s else None
        return block(x, prefix)[0]

    def every_run(s, i, block):  # over runs, units, examples
        f = jax.vmap(partial(step, s, i, block), in_axes=(0, None, None, 0))
        f = jax.vmap(f, in_axes=(0, None, 0, None))
        return jax.vmap(f, in_axes=(0, 0, None, None))

    carry = tuple(
        jnp.zeros((0, bucket.chunk, *ex["entering"][:, 0].shape))
        for bucket, ex in zip(plan.buckets, exs)
    )
    bounds = _segments(model.cfg.n_layers)
    for lo, hi in zip(bounds, bounds[1:]):
        runs = jnp.arange(hi)  # the layer each run is patched at

        def body(carry, layer, runs=runs):
            w, i = layer
            block = eqx.combine(w, static)
            new = tuple(
                every_run(bucket.start, i, block)(x, runs, unit, ex)
                for x, bucket, unit, ex in zip(carry, plan.buckets, units, exs)
            )
            if progress:
                jax.debug.callback(tick, new[0][(0,) * new[0].ndim])
            return new, None

        carry = tuple(  # the segment's runs join
            jnp.concatenate([x, jnp.zeros((hi - lo, *x.shape[1:]), x.dtype)]) for x in carry
        )
        layers = jax.tree_util.tree_map(lambda w: w[lo:hi], weights), jnp.arange(lo, hi)
        carry, _ = jax.lax.scan(body, carry, layers)
    return carry


def _readout(model, bucket, x, ex, gather, reader):
    """From final windows `x: [layer, chunk, batch, window, d]`: the rows the metric reads
    (`gather`; `[layer, chunk, batch, n, d]`, normalised), else the metric `[layer, chunk]`."""
    s = bucket.start

    def rows(x, e):  # one example's read rows of the final normalised stream
        h = _with_prefixes(model, e["sites"]).ln_final(x)[0]
        h = jnp.concatenate([e["read"], h]) if s else h
        return h[e["positions"]]

    def logits(x, e):  # one example's logits [seq, d_vocab]
        m = _with_prefixes(model, e["sites"])
        out = m.unembed(m.ln_final(x)[0])
        return jnp.concatenate([e["read"].astype(out.dtype), out]) if s else out

    if gather:
        f = jax.vmap(rows)
        return jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, None))(x, ex)
    per_layer = jax.vmap(lambda xu: reader(jax.vmap(logits)(xu, ex)))
    return jax.lax.map(per_layer, x, batch_size=bucket.read_layers)


def _read_rows(model, h, reader, budget) -> Float[Array, "layer unit"]:
    """The metric of the final normalised rows it reads, `h: [layer, unit, batch, n, d]`:
    every patched run's read rows unembedded together, units chunked by memory."""
    n_layers, n_units, batch, n, _ = h.shape
    chunk = max(1, min(n_units, budget // (4 * n_layers * batch * n * model.cfg.d_vocab)))
    per_unit = jax.vmap(lambda hl: reader(model.unembed(hl)))  # over layers
    return jax.lax.map(per_unit, jnp.moveaxis(h, 1, 0), batch_size=chunk).T
