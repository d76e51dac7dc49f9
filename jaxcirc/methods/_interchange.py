"""Interchange interventions: IIA of an alignment, and DAS to learn a distributed one.

An `Alignment` maps each high-level variable of a `CausalModel` to model sites, with
position/head/unit selections and optionally a subspace basis. `iia` runs the network on
each source, patches the aligned activations into the base run and scores how often the
network's output equals the high-level model's counterfactual output: interchange
intervention accuracy (Geiger et al. 2021, "Causal Abstractions of Neural Networks";
Geiger et al. 2023, "Finding Alignments Between Interpretable Causal Variables and
Distributed Neural Representations"). `das` learns an orthogonal rotation whose first `k`
rows span the subspace that realises the interchange (Distributed Alignment Search,
in `._das`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import check_index
from .._finite import check_finite
from ..interventions import AbstractSelectiveIntervention, Patch, Subspace, intervene, resolve
from ..models._site import Site, SiteRef
from ..models._transformer import Transformer, forward
from ._causal_model import CausalModel

__all__ = ["CausalModel", "Location", "Alignment", "IIAResult", "iia"]


class Location(eqx.Module):
    """Where a variable lives: a site, an optional selection and an optional subspace basis.

    `position`, `head`, `unit` are indices and `mask` a weight, as for the interventions;
    `basis: [k, d]` (rows spanning the subspace of the site's last axis) makes the
    interchange a `Subspace` patch instead of a `Patch`.
    """

    site: SiteRef = eqx.field(static=True)
    position: Int[Array, ...] | None = None
    head: Int[Array, ...] | None = None
    unit: Int[Array, ...] | None = None
    mask: Float[Array, ...] | None = None
    basis: Float[Array, "k d"] | None = None


class Alignment(eqx.Module):
    """`{high-level variable: location(s)}`; each location a `Location`, a site (name or
    `SiteRef`), or a dict of `Location` arguments, e.g.
    `Alignment({"A": {"site": SiteRef("resid_pre", 0), "position": 2, "unit": [0, 1]}})`.
    """

    locations: dict[str, tuple[Location, ...]]

    def __init__(self, mapping: Mapping[str, object]):
        self.locations = {
            str(v): tuple(_location(x) for x in _listify(locs)) for v, locs in mapping.items()
        }


def _listify(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _location(x) -> Location:
    if isinstance(x, Location):
        return x
    if isinstance(x, (str, SiteRef)):
        x = {"site": x}
    if not isinstance(x, Mapping):
        raise TypeError(f"an alignment location is a Location, a site or a dict; got {x!r}")
    unknown = set(x) - {f.name for f in dataclasses.fields(Location)}
    if unknown:
        raise ValueError(
            f"unknown Location fields {sorted(unknown)}; "
            f"known: {[f.name for f in dataclasses.fields(Location)]}"
        )
    arrays = {k: None if v is None else jnp.asarray(v) for k, v in x.items() if k != "site"}
    return Location(x["site"], **arrays)


def _check_alignment(model, high_level, alignment, variables, seq_len) -> Alignment:
    """Resolve sites (nearest-name errors) and check indices against the site shapes."""
    if not isinstance(alignment, Alignment):
        alignment = Alignment(alignment)
    for v in alignment.locations:
        high_level.check_variable(v, "aligned variable")
    for v in variables:
        high_level.check_variable(v, "intervened variable")
        if v not in alignment.locations:
            raise ValueError(
                f"variable {v!r} has no alignment; aligned: {sorted(alignment.locations)}"
            )
    shapes = eqx.filter_eval_shape(lambda t: forward(model, t)[1], jnp.zeros(seq_len, jnp.int32))
    locations = {}
    for v in variables:
        resolved = []
        for loc in alignment.locations[v]:
            try:  # a site that does not exist -> the nearest name
                ref = resolve(model, loc.site)
            except (KeyError, ValueError) as e:
                raise ValueError(
                    f"variable {v!r} is aligned to a missing site: {e.args[0]}"
                ) from None
            shape = shapes[ref].shape
            for axis in ("position", "head", "unit"):
                index = getattr(loc, axis)
                if index is None:
                    continue
                if axis not in ref.axes:
                    raise ValueError(
                        f"site {ref.name} has axes {ref.axes}; variable {v!r} "
                        f"cannot be aligned by {axis!r}"
                    )
                size = shape[ref.axes.index(axis)]
                check_index(
                    index, size, axis,
                    context=f" for variable {v!r} at site {ref.name} (its {axis} axis has "
                    f"size {size})",
                )  # fmt: skip
            if loc.basis is not None and (loc.basis.ndim != 2 or loc.basis.shape[1] != shape[-1]):
                raise ValueError(
                    f"basis of variable {v!r} has shape {loc.basis.shape}; "
                    f"site {ref.name} needs [k, {shape[-1]}]"
                )
            resolved.append(dataclasses.replace(loc, site=ref))
        locations[v] = tuple(resolved)
    return Alignment(locations)


class _OrthoSubspace(AbstractSelectiveIntervention):
    """Subspace interchange for an orthonormal `basis` (no pseudo-inverse: cheap gradients)."""

    basis: Float[Array, "k d"]
    value: Float[Array, ...]

    def target(self, x, site: Site):
        return x + ((self.value - x) @ self.basis.T) @ self.basis


def _intervention(loc: Location, value: Array, orthonormal: bool = False):
    sel = dict(position=loc.position, head=loc.head, unit=loc.unit, mask=loc.mask)
    if loc.basis is None:
        return Patch(value, **sel)
    return (_OrthoSubspace if orthonormal else Subspace)(loc.basis, value, **sel)


def _interchange_logits(model, alignment, variables, base, sources, readout, orthonormal=False):
    """Logits at `readout` of one base run with the aligned activations from `sources`."""
    by_site: dict[SiteRef, list] = {}
    cache = {}
    for v in variables:
        src = sources[v]
        key = id(src)
        if key not in cache:
            cache[key] = forward(model, src)[1]
        for loc in alignment.locations[v]:
            iv = _intervention(loc, cache[key][loc.site], orthonormal)
            by_site.setdefault(loc.site, []).append(iv)
    return intervene(model, by_site)(base)[readout]


@dataclasses.dataclass(frozen=True)
class IIAResult:
    """`accuracy` (the IIA), and per pair: `correct`, the network's `predicted` output and
    the high-level model's counterfactual `expected` output."""

    accuracy: float
    correct: np.ndarray
    predicted: np.ndarray
    expected: np.ndarray

    def __float__(self):
        return self.accuracy


def check_answers(model, answer_tokens) -> Array:
    """`answer_tokens` (one token id per high-level output value, `[n_outputs]`) checked
    against the vocabulary."""
    ids = np.asarray(answer_tokens)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"answer_tokens must be integer token ids; got dtype {ids.dtype}")
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(
            f"answer_tokens must be one token id per output value, [n_outputs]; got shape "
            f"{list(ids.shape)}"
        )
    vocab = model.cfg.d_vocab
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"answer_tokens[{i}] = {int(ids[i])} is outside [0, d_vocab={vocab}) (nearest "
            f"valid id: {min(max(int(ids[i]), 0), vocab - 1)})"
        )
    return jnp.asarray(ids, jnp.int32)


def _check_inputs(high_level, inputs, n, what) -> dict[str, Array]:
    inputs = {k: jnp.asarray(x) for k, x in dict(inputs).items()}
    for name in inputs:
        if name not in high_level.inputs:
            high_level.check_variable(name, f"{what} key")
            raise ValueError(
                f"{what} key {name!r} is not an input variable; inputs: {list(high_level.inputs)}"
            )
    missing = [v for v in high_level.inputs if v not in inputs]
    if missing:
        raise ValueError(f"{what} lacks input variables {missing}")
    for name, x in inputs.items():
        if x.ndim == 0 or x.shape[0] != n:
            raise ValueError(
                f"{what}[{name!r}] has {x.shape[0] if x.ndim else 'no'} rows but "
                f"there are {n} model inputs (token rows): they must match"
            )
    return inputs


def _prepare(
    model, high_level, alignment, base_tokens, source_tokens, base_inputs, source_inputs, variables
):
    if variables is None:
        variables = list(
            (alignment.locations if isinstance(alignment, Alignment) else alignment).keys()
        )
    variables = tuple([variables] if isinstance(variables, str) else variables)
    if not variables:
        raise ValueError("no variables to interchange: give variables=[...]")
    base_tokens = model.check_tokens(base_tokens, name="base_tokens", ndim=2)
    n = base_tokens.shape[0]
    base_inputs = _check_inputs(high_level, base_inputs, n, "base_inputs")
    multi = isinstance(source_tokens, Mapping)
    if multi != isinstance(next(iter(source_inputs.values()), None), Mapping):
        raise ValueError(
            "give source_tokens and source_inputs both per variable (dicts keyed by "
            "variable: multi-source) or both for one shared source"
        )
    src_tok = dict(source_tokens) if multi else {v: source_tokens for v in variables}
    src_in = dict(source_inputs) if multi else {v: source_inputs for v in variables}
    tokens, ins = {}, {}
    for v in variables:
        if v not in src_tok or v not in src_in:
            high_level.check_variable(v)
            raise ValueError(f"no source for variable {v!r}: source keys {sorted(src_tok)}")
        tokens[v] = model.check_tokens(src_tok[v], name=f"source_tokens[{v!r}]", ndim=2)
        if tokens[v].shape != base_tokens.shape:
            raise ValueError(
                f"source_tokens for {v!r} have shape {tokens[v].shape}; expected "
                f"the base tokens' shape {base_tokens.shape}"
            )
        ins[v] = _check_inputs(high_level, src_in[v], n, f"source_inputs for {v!r}")
    if not multi:  # one shared source: the same arrays, so it runs once
        tokens = {v: tokens[variables[0]] for v in variables}
    alignment = _check_alignment(model, high_level, alignment, variables, base_tokens.shape[1])
    return alignment, variables, base_tokens, tokens, base_inputs, ins


def _counterfactual(high_level, variables, base_inputs, source_inputs):
    def one(base, sources):
        return high_level.interchange(base, sources)[high_level.output]

    return jax.vmap(one)(base_inputs, {v: source_inputs[v] for v in variables})


def _readout(position, seq: int) -> Array:
    """The readout position as an `int32` array (a new position is data, not a new program),
    checked against the sequence length (a traced one when the program runs)."""
    context = f" for {seq} token positions"
    if isinstance(position, jax.core.Tracer):
        return check_index(position, seq, "readout_position", context=context)
    p = np.asarray(position)
    if p.ndim != 0 or not np.issubdtype(p.dtype, np.integer):
        raise TypeError(f"readout_position must be an int; got {position!r}")
    check_index(p, seq, "readout_position", context=context)
    return jax.device_put(p.astype(np.int32))


def _batched_logits(model, alignment, variables, base, sources, readout, orthonormal=False):
    readout = _readout(readout, base.shape[-1])
    shared = len({id(x) for x in sources.values()}) == 1
    if shared:  # one source for every variable: pass (and run) it once
        sources = next(iter(sources.values()))
    return _batched_logits_jit(
        model, alignment, variables, base, sources, readout, orthonormal, shared
    )


@eqx.filter_jit
def _batched_logits_jit(model, alignment, variables, base, sources, readout, orthonormal, shared):
    def one(b, s):
        s = {v: s for v in variables} if shared else s
        return _interchange_logits(model, alignment, variables, b, s, readout, orthonormal)

    return jax.vmap(one)(base, sources)


def iia(
    model: Transformer,
    high_level: CausalModel,
    alignment: Alignment | Mapping,
    base_tokens: Int[ArrayLike, "n seq"],
    source_tokens: Int[ArrayLike, "n seq"] | Mapping[str, Int[ArrayLike, "n seq"]],
    *,
    base_inputs: Mapping[str, ArrayLike],
    source_inputs: Mapping[str, ArrayLike] | Mapping[str, Mapping[str, ArrayLike]],
    variables: Sequence[str] | str | None = None,
    answer_tokens: Int[ArrayLike, " n_outputs"] | None = None,
    label_fn: Callable[[Float[Array, " d_vocab"]], Array] | None = None,
    readout_position: int = -1,
) -> IIAResult:
    """Interchange-intervention accuracy of `alignment` over (base, source) pairs.

    For pair `i`, the aligned activations of `variables` are taken from the model's run on
    the source tokens and patched into its run on `base_tokens[i]`; the output at
    `readout_position` is mapped to a high-level value (`answer_tokens[j]` is the token of
    output value `j`, the prediction being the argmax over those tokens; or `label_fn(logits)`)
    and compared with `high_level.interchange(base_inputs[i], {var: source_inputs[i]})`.
    Single source: `source_tokens: [n, seq]`, `source_inputs: {input: [n]}`; multi-source:
    both dicts keyed by variable. One compiled, vmapped program per alignment structure.
    """
    if (answer_tokens is None) == (label_fn is None):
        raise ValueError(
            "give exactly one of answer_tokens= (token id per output value) or "
            "label_fn= (logits -> output value)"
        )
    alignment, variables, base, sources, base_in, src_in = _prepare(
        model,
        high_level,
        alignment,
        base_tokens,
        source_tokens,
        base_inputs,
        source_inputs,
        variables,
    )
    if answer_tokens is not None:
        answer_tokens = check_answers(model, answer_tokens)
    logits = _batched_logits(model, alignment, variables, base, sources, readout_position)
    check_finite(
        logits, "IIA logits at the readout position", axes=("pair", "vocab"),
        diagnose=lambda: model.nonfinite_report(base),
    )  # fmt: skip
    if answer_tokens is not None:
        predicted = jnp.argmax(logits[:, answer_tokens], axis=-1)
    else:
        predicted = jax.vmap(label_fn)(logits)
    expected = _counterfactual(high_level, variables, base_in, src_in)
    correct = np.asarray(predicted == expected.astype(predicted.dtype))
    return IIAResult(float(correct.mean()), correct, np.asarray(predicted), np.asarray(expected))
