"""Path patching: the effect of one component on another through the direct path only.

Wang et al. 2023, "Interpretability in the Wild" (IOI), section 3.1 and appendix B;
Goldowsky-Dill et al. 2023, "Localizing Model Behavior with Path Patching". Senders are
outputs written into the residual stream (`L{l}H{h}`: one attention head's share of the
attention output, without `b_O`; `MLP{l}`; `embed` on request); receivers are inputs read from
it (`L{l}H{h}.q`, `.k`, `.v`, with grouped-query attention `L{l}KV{g}.k`, `.v`; `MLP{l}`;
`logits`, the final residual stream). The names are those of `jaxcirc.graph`.

For a sender `s` and a receiver `r` (direction `"noise"`, the paper's): the sender's output
is set to its corrupted value and every other head and MLP output is frozen at its clean
value, so the receiver's (pre-norm) input becomes `x_r + (a_s - z_s)` (`x_r` its clean input,
`a_s`, `z_s` the sender's corrupted and clean outputs); then the clean forward pass runs with
only that receiver's input replaced, recomputed through the receiver's own norm (`ln1` of the
head, `ln2` of the MLP, `ln_final` for the logits; nothing is linearised), everything after
it recomputed, and `metric` reads the logits. `direction="denoise"` swaps the roles: senders
from the clean run into the corrupted run. A sender computed after the receiver has no path
to it: NaN. For one (sender, receiver) pair this is edge patching with the corrupted run as
ablation (`jaxcirc.methods.edge_patching`).

This is the masked forward pass of `jaxcirc.graph` with one edge cut and the corrupted run
as ablation, so path patching and edge patching are one computation on one engine. Pairs are
array data: one `lax.map` over chunks of pairs that share the receiver's layer, a vmap inside;
each pair resumes the graph's forward pass from the cached base run at its receiver's layer,
so a full map traces and compiles once. Prompts that do not fit `memory_budget` together run
in chunks when the metric is a mean over examples (`jaxcirc.patching._budget`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._finite import finite_result
from .._progress import progress_bar, tick
from ..graph import Graph, Scores, graph
from ..graph._masked import check_wiring, graph_states, run_graph
from ..models._site import nearest
from ..patching import _budget
from ..patching._stable import stable
from ._discover import ScoringMethod
from ._task_args import task_arguments

Metric = Callable[[Float[Array, "batch seq d_vocab"]], Float[Array, ""]]
DIRECTIONS = ("noise", "denoise")


class PathPatchResult(eqx.Module):
    """What `path_patch` returns.

    - `values`: `[n_senders, n_receivers]` metric of each path-patched run; NaN where the
      sender is computed after the receiver reads the residual stream (no path).
    - `clean`, `corrupt`: the metric of the clean and of the corrupted run.
    - `senders`, `receivers`: the row and column labels (`"L0H1"`, `"MLP0"`, `"L1H2.k"`,
      `"logits"`); `direction`: `"noise"` (senders from the corrupted run into the clean run)
      or `"denoise"` (the reverse).
    """

    values: Float[Array, "n_senders n_receivers"]
    clean: Float[Array, ""]
    corrupt: Float[Array, ""]
    senders: tuple[str, ...] = eqx.field(static=True)
    receivers: tuple[str, ...] = eqx.field(static=True)
    direction: str = eqx.field(static=True, default="noise")

    @property
    def valid(self) -> Bool[Array, "n_senders n_receivers"]:
        """Which pairs have a direct path (the sender is computed before the receiver)."""
        return jnp.isfinite(self.values)

    @property
    def baseline(self) -> Float[Array, ""]:
        """The metric of the run patched into: clean for `"noise"`, corrupt for `"denoise"`."""
        return self.clean if self.direction == "noise" else self.corrupt

    @property
    def effects(self) -> Float[Array, "n_senders n_receivers"]:
        """`values - baseline`: the change the path makes (NaN where there is no path)."""
        return self.values - self.baseline

    def normalized(self) -> Float[Array, "n_senders n_receivers"]:
        """`effects` as a fraction of the total effect (`corrupt - clean` for `"noise"`)."""
        other = self.corrupt if self.direction == "noise" else self.clean
        return self.effects / (other - self.baseline)

    def __getitem__(self, pair: tuple[str, str]) -> Float[Array, ""]:
        """`result["L0H2", "L1H0.k"]`: the value of one pair."""
        sender, receiver = pair
        return self.values[
            _index(sender, self.senders, "sender"), _index(receiver, self.receivers, "receiver")
        ]

    def top(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The `k` pairs with the largest `|effect|`, as `(sender, receiver, effect)`."""
        effects = np.asarray(self.effects, np.float64)
        flat = np.where(np.isfinite(effects), np.abs(effects), -np.inf).reshape(-1)
        order = [i for i in np.argsort(-flat, kind="stable")[:k] if np.isfinite(flat[i])]
        pairs = [np.unravel_index(i, effects.shape) for i in order]
        return [(self.senders[i], self.receivers[j], float(effects[i, j])) for i, j in pairs]


def _index(name: str, names: Sequence[str], what: str) -> int:
    try:
        return list(names).index(name)
    except ValueError:
        raise KeyError(f"unknown {what} {name!r}{nearest(name, names)}") from None


def _head_aliases(g: Graph) -> tuple[tuple[str, ...], ...]:
    """Per target, the names it answers to: its own, and under grouped-query attention the
    head-level names of the key/value group (`L1KV2.k` is also `L1H4.k`, `L1H5.k`: the heads
    that read it)."""
    return tuple(
        (name, *(f"{g.sources[o]}.{node.port}" for o in owners))
        if node.kind == "kv" else (name,)
        for name, node, owners in zip(g.targets, g.target_nodes, g.target_sources)
    )  # fmt: skip


def _select(
    spec, names: tuple[str, ...], default: tuple[str, ...], what: str,
    aliases: tuple[tuple[str, ...], ...] | None = None,
) -> list[int]:  # fmt: skip
    """Indices into `names` of `spec`: `None` (the default), a name, a glob such as `"L1H*.k"`,
    or a sequence of those; `aliases[i]` are further names of `names[i]` (matched too);
    unknown names raise with the nearest name."""
    if spec is None:
        return [names.index(n) for n in default]
    if aliases is None:
        aliases = tuple((n,) for n in names)
    every = [a for group in aliases for a in group]
    items = [spec] if isinstance(spec, str) else list(spec)
    chosen: list[int] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what}s are names like {names[1]!r}; got {item!r}")
        if any(c in item for c in "*?["):
            hits = [
                i for i, group in enumerate(aliases)
                if any(fnmatch.fnmatchcase(a, item) for a in group)
            ]  # fmt: skip
            if not hits:
                raise ValueError(
                    f"{what} pattern {item!r} matches no {what}{nearest(item, every)}; "
                    f"{what}s: {', '.join(names[:4])}, …, {names[-1]}"
                )
        elif item in every:
            hits = [i for i, group in enumerate(aliases) if item in group]
        else:
            raise ValueError(
                f"unknown {what} {item!r}{nearest(item, every)}; {what}s: "
                f"{', '.join(names[:4])}, …, {names[-1]}"
            )
        chosen += [i for i in hits if i not in chosen]
    if not chosen:
        raise ValueError(f"no {what}s selected")
    return chosen


def _check_tokens(model, clean, corrupt):
    clean = model.check_tokens(clean, name="clean")
    corrupt = model.check_tokens(corrupt, name="corrupt")
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean {clean.shape} and corrupt {corrupt.shape} must have the same shape [batch, seq]"
        )
    if clean.ndim == 1:
        clean, corrupt = clean[None], corrupt[None]
    if clean.ndim != 2 or 0 in clean.shape:
        raise ValueError(
            f"clean and corrupt must be non-empty [batch, seq] token arrays; got {clean.shape}"
        )
    return clean, corrupt


def _valid_pairs(g: Graph, senders: list[int], receivers: list[int]) -> np.ndarray:
    """`[len(senders), len(receivers)]`: which pairs have a direct path."""
    order_s = np.asarray(g.source_order)[senders]
    order_t = np.asarray(g.target_order)[receivers]
    return order_s[:, None] < order_t[None, :]


@finite_result("path patching", fields=("clean", "corrupt"))
def path_patch(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"],
    metric: Metric,
    *,
    senders: str | Sequence[str] | None = None,
    receivers: str | Sequence[str] | None = None,
    direction: str = "noise",
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
) -> PathPatchResult:
    """Path patching (Wang et al. 2023; Goldowsky-Dill et al. 2023): `metric` with each
    sender's effect on each receiver patched through the direct path alone.

    **Arguments:**

    - `model`: a `jaxcirc.Transformer` (any family: sequential, parallel and attention-only
      blocks, grouped-query attention); interventions inside heads and MLPs are honoured,
      ones on the summed residual stream are refused.
    - `clean`, `corrupt`: token batches of the same shape `[batch, seq]`.
    - `metric`: maps logits `[batch, seq, d_vocab]` to a scalar; held static (the same
      function, an `eqx.Module` of arrays, or a fresh closure of the same code capturing the
      same values reuses the compiled program).
    - `senders`: names or glob patterns (`"L0H*"`); default every head and MLP (`"embed"`, the
      embedding output, on request).
    - `receivers`: names or patterns (`"L1H*.k"`, `"MLP*"`, `"logits"`); default all inputs.
      With grouped-query attention a head-level key/value name selects the group that head
      reads (`"L1H5.k"` is `"L1KV2.k"` when heads 4 and 5 share group 2).
    - `direction`: `"noise"` (default; the paper's): senders take their corrupted output in
      the clean run; `"denoise"`: senders take their clean output in the corrupted run.
    - `chunk_size`: pairs evaluated at once (vmapped); default fills `memory_budget`.
    - `memory_budget`: bytes of activations to keep live (default 1 GiB): pairs are chunked,
      and, for a metric with a per-example form (`jaxcirc.metrics.is_example_mean`), prompts.
    - `progress`: a progress bar over chunks of pairs.

    **Returns:** a `PathPatchResult` (`values[sender, receiver]`, baselines, labels).
    """
    g = graph(model)
    check_wiring(model)
    clean, corrupt = _check_tokens(model, clean, corrupt)
    if not callable(metric):
        raise TypeError(f"metric must map logits [batch, seq, d_vocab] to a scalar; got {metric!r}")
    metric = stable(metric)
    if direction not in DIRECTIONS:
        raise ValueError(
            f"unknown direction {direction!r}{nearest(direction, DIRECTIONS)}; "
            f"choices: {DIRECTIONS}"
        )
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    limit = _budget.budget(memory_budget)
    heads_mlps = tuple(s for s in g.sources if s != "embed")
    s_idx = _select(senders, g.sources, heads_mlps, "sender")
    r_idx = _select(receivers, g.targets, g.targets, "receiver", _head_aliases(g))
    valid = _valid_pairs(g, s_idx, r_idx)
    if not valid.any():
        raise ValueError(
            "no sender is computed before any receiver: every selected pair has no path "
            "(senders must come from earlier layers than their receivers)"
        )

    # pairs grouped by receiver layer, each group padded to whole chunks of one layer
    layer_of = [g.target_layer(j) for j in r_idx]
    counts = np.bincount(
        [layer_of[j] for _, j in zip(*np.nonzero(valid))], minlength=g.n_layers + 1
    )
    batch, seq = clean.shape
    cached, per_pair = _prompt_bytes(model, seq, g)
    size = _budget.prompts_per_chunk(
        batch, cached + int(chunk_size or 1) * per_pair, limit, metric, what="path_patch"
    )
    pairs_fit = (limit - (cached * size if size < batch else 0)) // (per_pair * size)
    chunk = int(chunk_size) if chunk_size else max(1, pairs_fit)
    chunk = max(1, min(chunk, int(counts.max())))
    layers, pair_s, pair_t, cells = [], [], [], []
    for layer in range(g.n_layers + 1):
        pairs = [(i, j) for i, j in zip(*np.nonzero(valid)) if layer_of[j] == layer]
        if not pairs:
            continue
        n_chunks = -(-len(pairs) // chunk)
        padded = pairs + [pairs[0]] * (n_chunks * chunk - len(pairs))
        layers += [layer] * n_chunks
        pair_s += [s_idx[i] for i, _ in padded]
        pair_t += [r_idx[j] for _, j in padded]
        cells += pairs + [None] * (len(padded) - len(pairs))
    n_chunks = len(layers)

    base, other = (clean, corrupt) if direction == "noise" else (corrupt, clean)
    pairs = (
        jnp.asarray(np.asarray(layers, np.int32)),
        jnp.asarray(np.asarray(pair_s, np.int32).reshape(n_chunks, chunk)),
        jnp.asarray(np.asarray(pair_t, np.int32).reshape(n_chunks, chunk)),
        bool(progress),
    )
    total = n_chunks * -(-batch // size)
    with progress_bar(progress, total=total, desc="path patching", unit="chunk"):
        if size == batch:
            base_logits, base_states = _runs(model, g, base)
            other_logits, (other_outs, _) = _runs(model, g, other)
            m_base, m_other = metric(base_logits), metric(other_logits)
            if jnp.shape(m_base) != ():
                raise ValueError(f"metric must return a scalar; got shape {jnp.shape(m_base)}")
            flat = _path_patch(model, g, base, base_states, other_outs, metric, *pairs)
        else:  # chunks of prompts: each the sums of the metric's per-example values

            def run(rows, valid):
                tokens = _budget.take((base, other), rows)
                return _path_patch_rows(model, g, *tokens, metric, *pairs, rows, valid)

            m_base, m_other, flat = _budget.mean_over_prompts(run, batch, size)
        flat = np.asarray(jax.block_until_ready(flat)).reshape(-1)
    values = np.full(valid.shape, np.nan, np.float32)
    keep = [k for k, c in enumerate(cells) if c is not None]
    rows, cols = zip(*(cells[k] for k in keep))
    values[list(rows), list(cols)] = flat[keep]
    m_clean, m_corrupt = (m_base, m_other) if direction == "noise" else (m_other, m_base)
    return PathPatchResult(
        jnp.asarray(values),
        m_clean,
        m_corrupt,
        tuple(g.sources[i] for i in s_idx),
        tuple(g.targets[j] for j in r_idx),
        direction,
    )


def _prompt_bytes(model, seq: int, g: Graph) -> tuple[int, int]:
    """Bytes one prompt keeps live: `(its two cached runs, one pair's patched run)`."""
    cfg = model.cfg
    cached = seq * (2 * g.n_sources * cfg.d_model + cfg.d_vocab) + (g.n_layers + 1) * cfg.d_model
    live = seq * (
        3 * g.n_sources * cfg.d_model + 2 * cfg.d_mlp + 2 * cfg.n_heads * seq + cfg.d_vocab
    )
    return 4 * cached, 4 * live


@eqx.filter_jit
def _runs(model, g, tokens):
    """Logits and graph states (source outputs, stream bias per block) of each example."""

    def one(t):
        x0 = model.embed_tokens(t)[0]
        outs, biases = graph_states(model, g, x0)
        return model(t), (outs, biases)

    return jax.vmap(one)(tokens)


@eqx.filter_jit
def _path_patch_rows(model, g, base, other, metric, layers, pair_s, pair_t, progress, rows, valid):
    """A chunk of prompts (`rows` of the batch, `valid` of them counted): the sums over the
    valid rows of the metric's per-example values on the base run, the other run, each pair."""
    reader = _budget.example_reader(metric, rows, valid)
    base_logits, states = _runs(model, g, base)
    other_logits, (ablated, _) = _runs(model, g, other)
    flat = _pairs(model, g, base, states, ablated, reader, layers, pair_s, pair_t, progress)
    return reader(base_logits), reader(other_logits), flat


@eqx.filter_jit
def _path_patch(model, g, tokens, states, ablated, metric, layers, pair_s, pair_t, progress):
    return _pairs(model, g, tokens, states, ablated, metric, layers, pair_s, pair_t, progress)


def _pairs(model, g, tokens, states, ablated, metric, layers, pair_s, pair_t, progress):
    """`metric` of each pair of a chunk: the base run with edge `s -> t` cut to `ablated`
    (the other run's source outputs), resumed at the receiver's layer from `states`."""
    ones = jnp.ones((g.n_sources, g.n_targets))

    def one_example(layer, s, t, tokens, outs, biases, ablated):
        x0 = model.embed_tokens(tokens)[0]
        weights = ones.at[s, t].set(0.0)
        state = (outs, biases[layer])
        return run_graph(model, g, x0, weights, ablated, start=layer, state=state, tokens=tokens)[0]

    def one_pair(layer, s, t):
        per_example = jax.vmap(one_example, (None, None, None, 0, 0, 0, 0))
        return metric(per_example(layer, s, t, tokens, *states, ablated))

    def one_chunk(args):
        layer, s, t = args
        values = jax.vmap(one_pair, (None, 0, 0))(layer, s, t)
        if progress:
            jax.debug.callback(tick, layer)
        return values

    return jax.lax.map(one_chunk, (layers, pair_s, pair_t))


class PathPatching(ScoringMethod):
    """Path patching (Wang et al. 2023) as a method value: the effect of each (sender,
    receiver) pair is the score of that edge of `graph(model)`; pairs not measured (outside
    `senders` × `receivers`, or without a path) are NaN."""

    nan_marks_unmeasured = True

    senders: str | tuple[str, ...] | None = None
    receivers: str | tuple[str, ...] | None = None
    direction: str = "noise"
    chunk_size: int | None = None
    memory_budget: int | None = None

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        clean, corrupt, metric = task_arguments(clean, corrupt, metric)
        res = path_patch(
            model, clean, corrupt, metric, senders=self.senders, receivers=self.receivers,
            direction=self.direction, chunk_size=self.chunk_size,
            memory_budget=self.memory_budget,
        )  # fmt: skip
        g = graph(model)
        effects = np.full(g.valid.shape, np.nan, np.float32)
        rows = [g.source_index(s) for s in res.senders]
        cols = [g.target_index(r) for r in res.receivers]
        effects[np.ix_(rows, cols)] = np.asarray(res.effects)
        return Scores.from_effects(effects, g)
