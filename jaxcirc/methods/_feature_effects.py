"""Node effects of SAE features and error nodes (Marks et al. 2025, "Sparse feature circuits",
arXiv 2403.19647, §3.1).

The model runs with each SAE spliced in (`jaxcirc.sae.splice`: `x = decode(f) + ε`, the clean
forward bit for bit). The effect of a node `a` (a feature at a position, or the error `ε` at a
position) on a per-example metric `m` when moved from its clean value to a patch value is

- `"atp"` (attribution patching): `∇_a m|clean · (a_patch − a_clean)`;
- `"ig"` (integrated gradients, Marks et al.'s default, `N = steps`): the gradient averaged over
  `α_k = k/N`, `k = 0..N−1`, with *one site at a time* moved to `(1 − α) a_clean + α a_patch`
  and the rest of the model recomputed from it (upstream sites clean), times the change;
- `"exact"`: `m(a ← a_patch) − m(clean)`, one node at a time (small cases, for checking).

Error nodes take the dot product over the site's width. The sum of a site's IG effects over
its features and error tends, as `steps` grows, to `m(site patched) − m(clean)` (completeness).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from .._checks import check_int, nearest_word
from .._finite import check_finite
from .._progress import progress_bar, tick
from ..patching._budget import budget, prompts_per_chunk, row_chunks
from ..sae import SAE, Splice, splice

METHODS = ("atp", "ig", "exact")
PATCHES = ("zero", "mean")
AGGREGATIONS = ("none", "sum_positions")


class FeatureEffects(eqx.Module):
    """Effects of every feature and error node, per SAE site in the order given.

    `features[s]`: `[batch, seq, d_sae]`, `errors[s]`: `[batch, seq]` for the site
    `sites[s]` (`aggregation == "examples"`); after `aggregate("none")` the mean over
    examples (`[seq, d_sae]`, `[seq]`), after `aggregate("sum_positions")` the sum over
    positions of that mean (`[d_sae]`, `[]`). Padding positions have effect 0.
    """

    features: tuple[Array, ...]
    errors: tuple[Array, ...]
    sites: tuple[str, ...] = eqx.field(static=True)
    aggregation: str = eqx.field(static=True, default="examples")

    def index(self, site: str) -> int:
        """The place of `site` in `sites`."""
        if site not in self.sites:
            raise ValueError(
                f"no SAE site {site!r}{nearest_word(site, self.sites)}; sites: {list(self.sites)}"
            )
        return self.sites.index(site)

    def aggregate(self, how: str = "sum_positions") -> FeatureEffects:
        """Mean over examples, with positions kept (`"none"`, position-specific nodes) or
        summed (`"sum_positions"`), as in Marks et al."""
        how = choice(how, AGGREGATIONS, "aggregation")
        if self.aggregation == how:
            return self
        if self.aggregation == "sum_positions":
            raise ValueError("these effects are summed over positions already; cannot un-sum")
        feats, errs = self.features, self.errors
        if self.aggregation == "examples":
            feats = tuple(f.mean(0) for f in feats)
            errs = tuple(e.mean(0) for e in errs)
        if how == "sum_positions":
            feats = tuple(f.sum(0) for f in feats)
            errs = tuple(e.sum(0) for e in errs)
        return FeatureEffects(feats, errs, self.sites, how)

    def nodes(self, *, absolute: bool = True):
        """`(keys, values)`: every node as `(site, position or None, feature id or None for
        the error node)` and its aggregated effect (`|effect|` when `absolute`)."""
        agg = self if self.aggregation != "examples" else self.aggregate("sum_positions")
        keys, values = [], []
        for site, f, e in zip(agg.sites, agg.features, agg.errors):
            f, e = np.asarray(f), np.asarray(e)
            if agg.aggregation == "none":
                seq, d = f.shape
                pos, ids = np.divmod(np.arange(seq * d), d)
                keys += [(site, int(p), int(i)) for p, i in zip(pos, ids)]
                keys += [(site, int(p), None) for p in range(seq)]
            else:
                keys += [(site, None, int(i)) for i in range(f.shape[0])]
                keys += [(site, None, None)]
            values.append(f.reshape(-1))
            values.append(e.reshape(-1))
        values = np.concatenate(values)
        return keys, (np.abs(values) if absolute else values)

    def top(self, n: int, *, absolute: bool = True) -> list[tuple[str, int | None, int | None]]:
        """The `n` nodes of largest aggregated effect (`|effect|` unless `absolute=False`),
        largest first, as `(site, position or None, feature id or None for the error)`;
        effects not yet aggregated are summed over positions."""
        keys, values = self.nodes(absolute=absolute)
        n = check_int(n, "n (nodes)", 0, len(keys))
        order = np.argsort(-values, kind="stable")[:n]
        return [keys[i] for i in order]

    def above(self, threshold: float, *, absolute: bool = True):
        """The nodes whose aggregated effect exceeds `threshold`, largest first."""
        keys, values = self.nodes(absolute=absolute)
        order = np.argsort(-values, kind="stable")
        return [keys[i] for i in order if values[i] > threshold]


# ----------------------------------------------------------------------------------------------
# shared machinery (also used by the edge effects and the circuit)


def choice(value, choices, name: str) -> str:
    """`value` if it is one of `choices`, else a clear error naming the nearest."""
    if not isinstance(value, str) or value not in choices:
        near = nearest_word(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"unknown {name} {value!r}{near}; choices: {list(choices)}")
    return value


def check_saes(model, saes) -> tuple[SAE, ...]:
    """`saes` as a tuple, each checked against `model` (its site exists, its width fits)."""
    if isinstance(saes, SAE):
        saes = (saes,)
    saes = tuple(saes)
    if not saes:
        raise ValueError("saes is empty: give at least one SAE (each with its site)")
    splice(model, saes)  # raises for a missing site, a site without SAE, a width mismatch
    return saes


def call_metric(metric: Callable, model, tokens, args):
    return metric(model, tokens) if args is None else metric(model, tokens, args)


def metric_with_edits(model, saes, metric, tokens, args, fadd, eadd, stop=()):
    """`metric` of `model` spliced with `feature_add` / `error_add` per site (and the sites in
    `stop` passed through a stop-gradient)."""
    table = {s.site: Splice(s, feature_add=fa, error_add=ea) for s, fa, ea in zip(saes, fadd, eadd)}
    spliced = splice(model, table)
    if stop:
        from ..interventions import Function, intervene

        spliced = intervene(spliced, {site: Function(jax.lax.stop_gradient) for site in stop})
    return call_metric(metric, spliced, tokens, args)


@eqx.filter_jit
def site_codes(model, saes, tokens):
    """Per site, `(f, ε)` of a batch: codes `[batch, seq, d_sae]` and errors
    `[batch, seq, d_in]`."""

    def one(t):
        acts = model.run(t)[1]
        out = []
        for s in saes:
            x = acts[s.site].reshape(t.shape[0], -1)
            f = s.encode(x)
            out.append((f, x - s.decode(f)))
        return tuple(out)

    return jax.vmap(one)(tokens)


def position_mask(tokens, lengths) -> np.ndarray:
    """`[batch, seq]` booleans: the real positions (all when `lengths` is None)."""
    batch, seq = tokens.shape
    if lengths is None:
        return np.ones((batch, seq), bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {lengths.shape}; expected ({batch},), one per row")
    bad = np.flatnonzero((lengths < 1) | (lengths > seq))
    if bad.size:
        raise ValueError(
            f"lengths[{bad[0]}] = {lengths[bad[0]]} is outside 1..{seq} (the padded length)"
        )
    return np.arange(seq)[None, :] < lengths[:, None]


def deltas(model, saes, tokens, patch, valid):
    """Clean codes and errors, and their changes `a_patch − a_clean` per site (0 on padding)."""
    clean = site_codes(model, saes, tokens)
    if isinstance(patch, str):
        patch = choice(patch, PATCHES, "patch")
        if patch == "zero":
            other = [(jnp.zeros_like(f), jnp.zeros_like(e)) for f, e in clean]
        else:
            w = jnp.asarray(valid, jnp.float32)[..., None]
            count = jnp.maximum(w.sum(0), 1.0)
            other = [
                (jnp.broadcast_to((f * w).sum(0) / count, f.shape),
                 jnp.broadcast_to((e * w).sum(0) / count, e.shape))
                for f, e in clean
            ]  # fmt: skip
    else:
        patch = model.check_tokens(patch, name="patch", ndim=2)
        if patch.shape != tokens.shape:
            raise ValueError(
                f"patch tokens have shape {tuple(patch.shape)}; expected {tuple(tokens.shape)}, "
                "the shape of tokens (pad both to one length)"
            )
        other = site_codes(model, saes, patch)
    w = jnp.asarray(valid, jnp.float32)[..., None]
    df = tuple((o[0] - c[0]) * w for c, o in zip(clean, other))
    de = tuple((o[1] - c[1]) * w for c, o in zip(clean, other))
    return clean, df, de


def _check_metric_args(metric_args, batch):
    if metric_args is None:
        return
    for leaf in jax.tree_util.tree_leaves(metric_args):
        if np.shape(leaf)[:1] != (batch,):
            raise ValueError(
                f"metric_args leaves need a leading batch axis of {batch}; got shape "
                f"{np.shape(leaf)}"
            )


def check_metric_arity(metric, metric_args) -> None:
    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            for p in params)  # fmt: skip
    want = 2 if metric_args is None else 3
    if n != want:
        raise TypeError(
            f"metric takes {n} required arguments; expected metric(spliced_model, tokens_row)"
            + ("" if metric_args is None else ", args_row)")
            + " returning a scalar"
        )


@eqx.filter_jit
def _grads(model, saes, metric, tokens, args, df, de, alphas, ig):
    """Per example: the metric's gradient with respect to every site's features and error,
    averaged over `alphas` with one site interpolated at a time (IG), or at the clean run."""
    n_sites = len(saes)

    def grad_at(tokens, args, df, de, s, alpha):
        fa = tuple(jnp.where(s == i, alpha, 0.0) * df[i] for i in range(n_sites))
        ea = tuple(jnp.where(s == i, alpha, 0.0) * de[i] for i in range(n_sites))
        fn = lambda fa, ea: metric_with_edits(model, saes, metric, tokens, args, fa, ea)
        value, grads = jax.value_and_grad(fn, argnums=(0, 1))(fa, ea)
        return value, grads

    def one(tokens, args, df, de):
        if not ig:
            value, (gf, ge) = grad_at(tokens, args, df, de, -1, 0.0)
            return value, gf, ge

        def per_site(carry, s):
            value, (gf, ge) = jax.vmap(lambda a: grad_at(tokens, args, df, de, s, a))(alphas)
            gf = tuple(c + jnp.where(s == i, g.mean(0), 0.0) for i, (c, g) in
                       enumerate(zip(carry[0], gf)))  # fmt: skip
            ge = tuple(c + jnp.where(s == i, g.mean(0), 0.0) for i, (c, g) in
                       enumerate(zip(carry[1], ge)))  # fmt: skip
            return (gf, ge), value[0]

        init = (tuple(jnp.zeros_like(x) for x in df), tuple(jnp.zeros_like(x) for x in de))
        (gf, ge), values = jax.lax.scan(per_site, init, jnp.arange(n_sites))
        return values[0], gf, ge

    return jax.vmap(one)(tokens, args, df, de)


@eqx.filter_jit
def _exact_site(model, saes, metric, tokens, args, df, de, site):
    """Per example: `m(one node patched) − m(clean)` for every node of site `site` (static)."""
    seq, d_sae = df[site].shape[1:]

    def one(tokens, args, df, de):
        zeros_f = tuple(jnp.zeros_like(x) for x in df)
        zeros_e = tuple(jnp.zeros_like(x) for x in de)
        base = metric_with_edits(model, saes, metric, tokens, args, zeros_f, zeros_e)

        def unit(u):
            is_err = u >= seq * d_sae
            pos = jnp.where(is_err, u - seq * d_sae, u // d_sae)
            feat = u % d_sae
            fmask = (jnp.arange(seq)[:, None] == pos) & (jnp.arange(d_sae)[None] == feat)
            fa = list(zeros_f)
            ea = list(zeros_e)
            fa[site] = jnp.where(fmask & ~is_err, df[site], 0.0)
            ea[site] = jnp.where((jnp.arange(seq)[:, None] == pos) & is_err, de[site], 0.0)
            return metric_with_edits(model, saes, metric, tokens, args, fa, ea) - base

        out = jax.lax.map(unit, jnp.arange(seq * (d_sae + 1)), batch_size=64)
        return out[: seq * d_sae].reshape(seq, d_sae), out[seq * d_sae :]

    return jax.vmap(one)(tokens, args, df, de)


def node_pass(
    model,
    saes,
    tokens,
    metric,
    *,
    patch=None,
    method="ig",
    steps=10,
    lengths=None,
    metric_args=None,
    memory_budget=None,
    progress=False,
):
    """The work behind `feature_effects`: `(effects, grads, deltas, clean, metric values)`,
    with `grads` the (IG-averaged) gradients per site `(features, errors)` that the edge
    effects read."""
    saes = check_saes(model, saes)
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    method = choice(method, METHODS, "method")
    steps = check_int(steps, "steps", 1)
    check_metric_arity(metric, metric_args)
    batch, seq = tokens.shape
    _check_metric_args(metric_args, batch)
    valid = position_mask(tokens, lengths)
    clean, df, de = deltas(model, saes, tokens, "zero" if patch is None else patch, valid)
    n_steps = steps if method == "ig" else 1
    cfg = model.cfg
    per_prompt = 4 * n_steps * seq * (cfg.n_layers * cfg.d_model * 24 + sum(s.d_sae for s in saes))
    size = prompts_per_chunk(batch, per_prompt, budget(memory_budget))
    rows_all, ok_all = row_chunks(batch, size)
    alphas = jnp.arange(n_steps, dtype=jnp.float32) / n_steps
    take = lambda tree, rows: jax.tree_util.tree_map(lambda x: x[rows], tree)
    outs = []
    with progress_bar(progress, total=len(rows_all), desc=f"feature effects ({method})",
                      unit="chunk"):  # fmt: skip
        for rows, ok in zip(rows_all, ok_all):
            part = (take(tokens, rows), take(metric_args, rows), take(df, rows), take(de, rows))
            if method == "exact":
                got = [_exact_site(model, saes, metric, *part, i) for i in range(len(saes))]
                outs.append((got, ok))
            else:
                outs.append((_grads(model, saes, metric, *part, alphas, method == "ig"), ok))
            jax.block_until_ready(outs[-1])
            tick()
    cat = lambda xs: jnp.concatenate(xs)[:batch]
    w = jnp.asarray(valid, jnp.float32)
    if method == "exact":
        feats = tuple(cat([o[0][i][0] for o in outs]) * w[..., None] for i in range(len(saes)))
        errs = tuple(cat([o[0][i][1] for o in outs]) * w for i in range(len(saes)))
        grads = values = None
    else:
        values = cat([o[0][0] for o in outs])
        gf = tuple(cat([o[0][1][i] for o in outs]) for i in range(len(saes)))
        ge = tuple(cat([o[0][2][i] for o in outs]) for i in range(len(saes)))
        feats = tuple(g * d for g, d in zip(gf, df))
        errs = tuple((g * d).sum(-1) for g, d in zip(ge, de))
        grads = (gf, ge)
    effects = FeatureEffects(feats, errs, tuple(s.site for s in saes))
    _check_effects(effects, model, tokens, dict(zip(effects.sites, clean)))
    return effects, grads, (df, de), clean, values


def _check_effects(effects: FeatureEffects, model, tokens, clean) -> None:
    arrays, axes = {}, {}
    for site, f, e in zip(effects.sites, effects.features, effects.errors):
        arrays[f"of features at {site}"] = f
        arrays[f"of the error at {site}"] = e
        axes[f"of features at {site}"] = ("example", "position", "feature")
        axes[f"of the error at {site}"] = ("example", "position")
    check_finite(arrays, "effects", axes=axes, diagnose=lambda: _diagnose(model, tokens, clean))


def _diagnose(model, tokens, clean) -> str | None:
    """Where the clean run or an SAE's code turns non-finite first."""
    report = model.nonfinite_report(tokens[0])
    if report:
        return report
    for site, (f, e) in clean.items():
        for what, x in (("code", f), ("error", e)):
            bad = np.argwhere(~np.isfinite(np.asarray(x)))
            if bad.size:
                b, p = bad[0][:2]
                return f"the SAE {what} at {site} is non-finite first (example {b}, position {p})"
    return None


def feature_effects(
    model,
    saes: SAE | Sequence[SAE],
    tokens: Int[Array, "batch seq"],
    metric: Callable,
    *,
    patch=None,
    method: str = "ig",
    steps: int = 10,
    lengths=None,
    metric_args=None,
    memory_budget: int | None = None,
    progress: bool = False,
) -> FeatureEffects:
    """Effects of every SAE feature and error node on `metric` (Marks et al. 2025, §3.1).

    - `saes`: SAEs, each with its `site`; the model runs with all of them spliced in.
    - `metric(spliced_model, tokens_row) -> scalar` (or `(spliced_model, tokens_row,
      args_row)` with `metric_args`, a pytree of arrays with a leading batch axis, e.g. each
      row's answer ids): any per-example function of the spliced model; it must not read
      padding positions.
    - `patch`: `None`/`"zero"` (`a_patch = 0`), `"mean"` (mean over the batch per position,
      padding excluded) or patch tokens of the shape of `tokens` (contrastive pairs).
    - `method`: `"atp"`, `"ig"` (`steps` interpolation points per site) or `"exact"`.
    - `lengths`: real length of each row (right padding); padding positions get effect 0.

    Examples run in chunks of one compiled program (`memory_budget` bytes, default 1 GiB);
    the site and the interpolation step are data of that program (`progress`: a bar over
    the chunks). A non-finite effect raises
    a `NonFiniteError` naming the site, example, position and feature.
    """
    return node_pass(
        model, saes, tokens, metric, patch=patch, method=method, steps=steps, lengths=lengths,
        metric_args=metric_args, memory_budget=memory_budget, progress=progress,
    )[0]  # fmt: skip


def total_effect(model, saes, tokens, metric, site, *, patch=None, metric_args=None,
                 lengths=None):  # fmt: skip
    """`m(site patched) − m(clean)` per example: every feature and the error of `site` moved to
    their patch values at once, the other sites clean (what a site's IG effects sum to)."""
    saes = check_saes(model, saes)
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    valid = position_mask(tokens, lengths)
    _, df, de = deltas(model, saes, tokens, "zero" if patch is None else patch, valid)
    i = [s.site for s in saes].index(site)
    fa = tuple(d if j == i else jnp.zeros_like(d) for j, d in enumerate(df))
    ea = tuple(d if j == i else jnp.zeros_like(d) for j, d in enumerate(de))
    zf = tuple(jnp.zeros_like(d) for d in df)
    ze = tuple(jnp.zeros_like(d) for d in de)

    @eqx.filter_jit
    def run(fa, ea):
        return jax.vmap(lambda t, a, f, e: metric_with_edits(model, saes, metric, t, a, f, e))(
            tokens, metric_args, fa, ea
        )

    return run(fa, ea) - run(zf, ze)
