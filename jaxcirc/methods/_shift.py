"""SHIFT: remove a spurious cue from a classifier by ablating the SAE features it reads.

Marks et al. (2025, "Sparse feature circuits", arXiv 2403.19647, §5): a linear probe on the
mean-pooled residual stream, trained where gender and profession coincide, also reads gender.
Attribute the probe's output to SAE features (integrated gradients, zero ablation), let a person
flag the top features that are about gender, zero them (keeping the SAE error) in every spliced
site up to the probe's, and evaluate the probe, or retrain it on the ablated activations.
The baselines are the rows of their table: random features, a neuron skyline and an oracle
probe trained on balanced data. The CircuitLasso route (Yin et al. 2026, arXiv 2606.16939,
§4) chooses the features by a sparse logistic regression of the label on one site's features
instead of by attribution.

```python
data = jc.tasks.bios(tokenizer, 256)                      # male professors, female nurses
x = pooled(model, data, site)                             # [n, d_model]
probe = train_probe(x, data.label, site=site)
effects = shift_effects(model, saes, probe, data)         # {site: [d_sae]}
flags = {"blocks.9.hook_resid_post": [311, 2045]}         # a person's choice
x_shift = pooled(ablate(model, saes, flags), data, site)
```
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_float, check_int, nearest_word
from .._finite import check_finite
from .._progress import progress_bar
from ..models._site import SiteRef

# ----------------------------------------------------------------------------- the probe


class Probe(eqx.Module):
    """A logistic-regression probe `σ(((x − mean) / scale) · w + b)` on a pooled activation of
    `site`; `__call__` gives the logit of label 1 for one `[d]` or a batch `[n, d]`."""

    w: Float[Array, " d"]
    b: Float[Array, ""]
    mean: Float[Array, " d"]
    scale: Float[Array, " d"]
    site: str = eqx.field(static=True, default="")

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, " ..."]:
        if x.shape[-1] != self.w.shape[0]:
            where = f" of site {self.site}" if self.site else ""
            raise ValueError(
                f"this probe reads pooled activations{where} of width {self.w.shape[0]}; got "
                f"shape {tuple(x.shape)}"
            )
        return ((x - self.mean) / self.scale) @ self.w + self.b


def train_probe(
    x, y, *, C: float = 1.0, standardize: bool = False, site: str = "", max_steps: int = 100
) -> Probe:
    """Fit a `Probe` to `x [n, d]` and 0/1 labels `y [n]` (features centred, and scaled to unit
    variance if `standardize`): scikit-learn's L2 logistic objective `C · Σ logloss + ½‖w‖²`
    (intercept unpenalised), minimised by Newton's method in float64 (to the optimum, not for
    one epoch as Marks et al.; a small `C` plays the part of their early stop)."""
    C = check_float(C, "C (inverse regularisation strength)", 0.0, low_open=True)
    X = np.asarray(x, np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"x must be [n, d] and y [n]; got {X.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must hold 0/1 labels; got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(X).all():
        row = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise ValueError(f"x{f' (site {site})' if site else ''} is not finite at row {row}")
    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 1e-8 * max(float(np.abs(X).max()), 1e-30), scale, 1.0)
    if not standardize:
        scale = np.ones_like(scale)
    Z = np.hstack([(X - mean) / scale, np.ones((X.shape[0], 1))])
    reg = np.ones(Z.shape[1])
    reg[-1] = 0.0

    def objective(t):
        s = Z @ t
        return C * np.sum(np.logaddexp(0.0, s) - y * s) + 0.5 * np.sum(reg * t * t)

    theta = np.zeros(Z.shape[1])
    value = objective(theta)
    for _ in range(max_steps):
        p = 1.0 / (1.0 + np.exp(-(Z @ theta)))
        grad = C * Z.T @ (p - y) + reg * theta
        hess = C * (Z.T * (p * (1 - p))) @ Z + np.diag(reg + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while objective(theta - t * step) > value + 1e-4 * t * -(grad @ step) and t > 1e-8:
            t /= 2
        theta = theta - t * step
        value = objective(theta)
        if np.abs(t * step).max() < 1e-10:
            break
    return Probe(
        w=jnp.asarray(theta[:-1], jnp.float32),
        b=jnp.asarray(theta[-1], jnp.float32),
        mean=jnp.asarray(mean, jnp.float32),
        scale=jnp.asarray(scale, jnp.float32),
        site=site,
    )


GROUPS = ("male professor", "female professor", "male nurse", "female nurse")  # Bios.group


def accuracy(probe: Probe, x, data) -> dict:
    """Profession accuracy, gender accuracy (how often the prediction's label matches the
    gender it co-occurs with in the ambiguous set: professor ↔ male, nurse ↔ female), the
    worst (profession × gender) group's profession accuracy, and each group's (`"groups"`,
    by name), in percent, on `data` (a `Bios`); with `data.frame`, each group's by sentence
    frame (`"frames"`: a list per group indexed by frame, one entry per frame of the split,
    `None` where the group has no bio), to see whether one template drives a group's errors."""
    pred = np.asarray(probe(jnp.asarray(x))) > 0
    profession, gender = np.asarray(data.profession), np.asarray(data.gender)
    if pred.shape != profession.shape:
        raise ValueError(f"{pred.shape[0]} pooled rows for {profession.shape[0]} bios")
    hit = pred == (profession == 1)
    group = np.asarray(data.group)
    if not np.isin(group, range(4)).all():
        raise ValueError(
            f"accuracy needs bios with a profession (groups 0..3: {', '.join(GROUPS)}); got "
            f"group ids {np.unique(group).tolist()} (neutral bios have no profession)"
        )
    groups = {GROUPS[g]: 100 * float(hit[group == g].mean()) for g in np.unique(group)}
    out = {
        "profession": 100 * float(hit.mean()),
        "gender": 100 * float((pred == (gender == 1)).mean()),
        "worst_group": min(groups.values()),
        "groups": groups,
    }
    if getattr(data, "frame", None) is not None:
        from ..tasks._bios import FRAMES

        frame = np.asarray(data.frame)
        split = getattr(data, "split", None)
        n_frames = len(FRAMES[split]) if split in FRAMES else int(frame.max()) + 1
        cells = [[hit[(group == g) & (frame == f)] for f in range(n_frames)]
                 for g in np.unique(group)]  # fmt: skip
        out["frames"] = {GROUPS[g]: [100 * float(c.mean()) if c.size else None for c in row]
                         for g, row in zip(np.unique(group), cells)}  # fmt: skip
    return out


# --------------------------------------------------------------------------- activations


def _pool(x, tokens, length):
    """Mean of `x [seq, ...]` over positions `1 .. length − 1` (the BOS left out)."""
    pos = jnp.arange(tokens.shape[0])
    w = ((pos >= 1) & (pos < length)).astype(x.dtype)
    x = x.reshape(tokens.shape[0], -1)
    return (w @ x) / jnp.maximum(w.sum(), 1.0)


@eqx.filter_jit
def _pooled_chunk(model, tokens, lengths, site, saes):
    def one(t, n):
        acts = model.run(t)[1]
        out = {site: _pool(acts[site], t, n)} if site else {}
        for sae in saes:
            out[sae.site] = _pool(sae.encode(acts[sae.site].reshape(t.shape[0], -1)), t, n)
        return out

    return jax.vmap(one)(tokens, lengths)


def _chunked(model, data, site, saes=(), *, chunk: int = 32, progress: bool = False, desc=""):
    tokens, lengths = jnp.asarray(data.tokens), jnp.asarray(data.lengths)
    n = tokens.shape[0]
    chunk = check_int(chunk, "chunk", 1)
    chunk = min(chunk, n)
    parts = []
    with progress_bar(progress, total=math.ceil(n / chunk), desc=desc or "pooling", unit="chunk"):
        from .._progress import _Bar

        for start in range(0, n, chunk):
            idx = np.minimum(np.arange(start, start + chunk), n - 1)  # one compiled shape
            out = _pooled_chunk(model, tokens[idx], lengths[idx], site, tuple(saes))
            parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[: n - start], out))
            if _Bar.current is not None:
                _Bar.current.update(1)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for k, v in out.items():
        check_finite(v, f"pooled activation of {k}", axes=("row", "unit"))
    return out


def pooled(model, data, site: str, *, chunk: int = 32, progress: bool = False) -> np.ndarray:
    """The activation of `site` mean-pooled over each bio's positions `1 .. length − 1`
    (attention-masked, BOS left out): `[n, d]`, run in chunks of `chunk` bios (one compiled
    program). `model` may carry interventions (an `ablate`d model)."""
    _check_site(model, site)
    return _chunked(model, data, site, chunk=chunk, progress=progress, desc=site)[site]


def pooled_codes(model, saes, data, *, chunk: int = 32, progress: bool = False) -> dict:
    """Each SAE's code of its own site, mean-pooled like `pooled`: `{site: [n, d_sae]}`."""
    for sae in saes:
        _check_site(model, sae.site)
    return _chunked(model, data, "", saes, chunk=chunk, progress=progress, desc="SAE codes")


def _check_site(model, site: str) -> None:
    from ..models._replacement import site_table

    table = site_table(model)
    if site not in table:
        raise ValueError(f"unknown site {site!r}{nearest_word(site, table)}")


_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed")


def _layer(site: str) -> int:
    """The block of `site`; −1 for the embeddings (before every block)."""
    if site in _BEFORE_BLOCKS:
        return -1
    layer = SiteRef.parse(site).layer
    if layer is None:
        raise ValueError(
            f"site {site!r} is neither an embedding ({', '.join(_BEFORE_BLOCKS)}) nor in a "
            "block ('blocks.<layer>.<name>')"
        )
    return layer


def upstream(saes, site: str) -> tuple:
    """The SAEs at `site` or before it (by layer; Marks et al. ablate every spliced site up to
    the probe's)."""
    layer = _layer(site)
    out = tuple(s for s in saes if _layer(s.site) <= layer)
    if not out:
        raise ValueError(
            f"no SAE reads a site at or before {site!r}; SAE sites: {[s.site for s in saes]}"
        )
    return out


def bios_fvu(model, saes, data) -> dict[str, float]:
    """Each SAE's fraction of variance unexplained on `data`'s tokens (a `Bios`; BOS and
    padding left out): the share of the activations that stays in the SAE error, which SHIFT
    keeps and no feature ablation reaches. `{site: fvu}`."""
    from ..sae import reconstruction, site_activations

    acts = site_activations(model, data.tokens, [s.site for s in saes])
    pos = np.arange(data.tokens.shape[1])
    valid = (pos[None] >= 1) & (pos[None] < np.asarray(data.lengths)[:, None])
    return {s.site: reconstruction(s, np.asarray(acts[s.site])[valid])["fvu"] for s in saes}


# -------------------------------------------------------------------------- attribution


class ProbeMetric(eqx.Module):
    """`sign · probe(pooled activation)` of one bio on a (spliced) model: the metric of SHIFT's
    attribution (`sign = +1` for label 0, `−1` for label 1, so a positive effect of zero
    ablation means the feature supports the right label). Positions are pooled from 1 up to
    the first `pad` token."""

    probe: Probe
    sign: Float[Array, ""]
    pad: int = eqx.field(static=True)

    def __call__(self, model, tokens):
        x = model.run(tokens)[1][self.probe.site]
        length = jnp.sum(tokens != self.pad) + (tokens[0] == self.pad)
        return self.sign * self.probe(_pool(x, tokens, length))


def shift_effects(
    model,
    saes,
    probe: Probe,
    data,
    *,
    method: str = "ig",
    steps: int = 10,
    labels=None,
) -> dict[str, np.ndarray]:
    """Each feature's effect on the probe (Marks et al. §5): `feature_effects` with zero
    ablation and `metric = ±probe logit` (+ for label 0, − for label 1), summed over positions
    but the BOS and averaged over `data`'s bios. `labels` (default `data.label`, the
    profession) sets the signs; `labels=data.gender` gives effects signed by gender.
    **Returns:** `{site: [d_sae]}` for the SAEs up to the probe's site."""
    from ._feature_effects import feature_effects

    saes = upstream(saes, probe.site)
    labels = np.asarray(data.label if labels is None else labels)
    if labels.shape != (len(data),) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be {len(data)} values of 0/1; got shape {labels.shape}")
    totals = {s.site: np.zeros(s.d_sae) for s in saes}
    for label, sign in ((0, 1.0), (1, -1.0)):
        rows = np.flatnonzero(labels == label)
        if rows.size == 0:
            continue
        metric = ProbeMetric(probe, jnp.float32(sign), data.pad)
        fx = feature_effects(
            model, saes, jnp.asarray(data.tokens)[rows], metric, patch=None, method=method,
            steps=steps, lengths=jnp.asarray(data.lengths)[rows],
        )  # fmt: skip
        for s, f in zip(saes, fx.features):
            totals[s.site] += np.asarray(f)[:, 1:].sum((0, 1))
    return {k: v / len(labels) for k, v in totals.items()}


def top_features(effects: Mapping[str, np.ndarray], n: int) -> list[tuple[str, int, float]]:
    """The `n` largest effects over all sites: `[(site, feature, effect)]`, largest first."""
    n = check_int(n, "n (features)", 1)
    rows = [(s, int(i), float(v[i])) for s, v in effects.items() for i in range(v.shape[0])]
    rows.sort(key=lambda r: -r[2])
    return rows[:n]


# --------------------------------------------------------------------- flagging gender


def gender_scores(model, saes, neutral, *, chunk: int = 32) -> dict[str, np.ndarray]:
    """The automatic stand-in for a person's judgement, per feature: the standardised
    difference (Cohen's d, |μ_male − μ_female| / pooled σ) of its mean-pooled activation
    between men's and women's bios that name no profession (`bios(kind="neutral")`, train
    names and frames only, so nothing of the test set is seen). A feature that fires on
    gendered names or pronouns scores high; one about universities or hospitals scores ~0."""
    if getattr(neutral, "kind", "neutral") != "neutral":
        raise ValueError(f"gender_scores needs the neutral bios; got kind={neutral.kind!r}")
    codes = pooled_codes(model, saes, neutral, chunk=chunk)
    g = np.asarray(neutral.gender)
    out = {}
    for site, z in codes.items():
        a, b = z[g == 0].astype(np.float64), z[g == 1].astype(np.float64)
        sd = np.sqrt(0.5 * (a.var(0) + b.var(0)))
        diff = np.abs(a.mean(0) - b.mean(0))
        out[site] = np.where(diff > 0, diff / np.maximum(sd, 1e-6 * (diff + 1e-12)), 0.0)
    return out


def flag_gender(features, scores: Mapping[str, np.ndarray], threshold: float = 1.0) -> dict:
    """The features of `features` (`[(site, feature, …)]`) whose `gender_scores` reach
    `threshold`: `{site: [feature ids]}`, ready for `ablate`."""
    threshold = check_float(threshold, "threshold", 0.0)
    out: dict[str, list[int]] = {}
    for site, i, *_ in features:
        if site not in scores:
            raise ValueError(f"no gender scores for site {site!r}; have {list(scores)}")
        if scores[site][i] >= threshold:
            out.setdefault(site, []).append(int(i))
    return out


def ablate(model, saes, flags: Mapping[str, Sequence[int]] | Sequence[tuple[str, int]]):
    """`model` with the flagged features zeroed (error kept) at their sites (Marks et al.'s
    SHIFT ablation): `flags` is `{site: [feature ids]}` or `[(site, feature id)]`, a person's
    choice or `flag_gender`'s. Every SAE of `saes` is spliced; unflagged ones run unedited."""
    from ..sae import Splice, splice

    if not isinstance(flags, Mapping):
        table: dict[str, list[int]] = {}
        for item in flags:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ValueError(f"flags must be (site, feature id) pairs; got {item!r}")
            table.setdefault(item[0], []).append(item[1])
        flags = table
    by_site = {s.site: s for s in saes}
    for site in flags:
        if site not in by_site:
            raise ValueError(
                f"flagged site {site!r} has no SAE{nearest_word(site, by_site)}; SAE sites: "
                f"{list(by_site)}"
            )
    parts = {}
    for site, sae in by_site.items():
        keep = np.ones(sae.d_sae, np.float32)
        ids = np.asarray(list(flags.get(site, [])))
        if ids.size:
            if ids.dtype.kind not in "iu":
                raise ValueError(f"feature ids at {site} must be integers; got {ids.tolist()}")
            bad = ids[(ids < 0) | (ids >= sae.d_sae)]
            if bad.size:
                raise ValueError(
                    f"feature id {int(bad[0])} at {site} is out of range: that SAE has "
                    f"d_sae={sae.d_sae} features (ids 0..{sae.d_sae - 1})"
                )
            keep[ids] = 0.0
        parts[site] = Splice(sae, feature_keep=keep)
    return splice(model, parts)


def random_flags(saes, n: int, *, seed: int = 0) -> dict[str, list[int]]:
    """`n` features drawn uniformly from all of `saes`' features (the random baseline)."""
    sizes = np.asarray([s.d_sae for s in saes])
    n = check_int(n, "n (features)", 0, int(sizes.sum()))
    pick = np.random.default_rng(seed).choice(int(sizes.sum()), n, replace=False)
    bounds = np.cumsum(sizes)
    out: dict[str, list[int]] = {}
    for j in np.sort(pick):
        k = int(np.searchsorted(bounds, j, side="right"))
        out.setdefault(saes[k].site, []).append(int(j - (bounds[k] - sizes[k])))
    return out


# ------------------------------------------------------------------------ neuron skyline


@eqx.filter_jit
def _neuron_grads(model, tokens, lengths, sites, probe, sign):
    from ..interventions import Add, intervene

    def one(t, n, s):
        zeros = {site: jnp.zeros((t.shape[0], _width(model, site))) for site in sites}

        def metric(add):
            m = intervene(model, {k: Add(v) for k, v in add.items()})
            logits, acts = m.run(t)
            x = _pool(acts[probe.site], t, n)
            return s * probe(x), {k: acts[k] for k in sites}

        grads, acts = jax.grad(metric, has_aux=True)(zeros)
        return grads, acts

    return jax.vmap(one)(tokens, lengths, sign)


def _width(model, site):
    from ..models._replacement import site_table

    return math.prod(site_table(model)[site][1][1:])


def neuron_skyline(model, sites, probe: Probe, balanced, n: int, *, chunk: int = 16):
    """Marks et al.'s neuron skyline: the `n` residual neurons (units of `sites`) with the
    largest attribution-patching effect of mean ablation on `±probe logit` signed by *gender*
    (+ for men, − for women) on `balanced` bios, summed over positions but the BOS and
    averaged; they are then mean-ablated (`neuron_ablate`). **Returns:** `(flags, means)` with
    `flags` `{site: [units]}` and `means` `{site: [d]}` (each unit's mean over valid
    positions)."""
    n = check_int(n, "n (neurons)", 0)
    tokens, lengths = jnp.asarray(balanced.tokens), jnp.asarray(balanced.lengths)
    sign = jnp.where(jnp.asarray(balanced.gender) == 0, 1.0, -1.0)
    rows = tokens.shape[0]
    grads, acts = [], []
    for start in range(0, rows, chunk):
        idx = np.minimum(np.arange(start, start + chunk), rows - 1)
        g, a = _neuron_grads(model, tokens[idx], lengths[idx], tuple(sites), probe, sign[idx])
        grads.append({k: np.asarray(v)[: rows - start] for k, v in g.items()})
        acts.append({k: np.asarray(v)[: rows - start] for k, v in a.items()})
    pos = np.arange(tokens.shape[1])
    valid = ((pos[None] >= 1) & (pos[None] < np.asarray(lengths)[:, None]))[..., None]
    effects, means = {}, {}
    for site in sites:
        g = np.concatenate([x[site] for x in grads]).astype(np.float64)
        a = np.concatenate([x[site] for x in acts]).reshape(g.shape).astype(np.float64)
        mu = (a * valid).sum((0, 1)) / valid.sum()
        effects[site] = (g * (mu - a) * valid).sum(1).mean(0)
        means[site] = mu.astype(np.float32)
        check_finite(effects[site], f"neuron effects at {site}", axes=("unit",))
    top = top_features(effects, n) if n else []
    flags: dict[str, list[int]] = {}
    for site, i, _ in top:
        flags.setdefault(site, []).append(i)
    return flags, means


def neuron_ablate(model, flags: Mapping[str, Sequence[int]], means: Mapping, seq: int):
    """`model` with the flagged units mean-ablated at positions `1 .. seq − 1` of bios padded
    to `seq` tokens (the BOS keeps its own activation)."""
    from ..interventions import Mean, intervene

    table = {}
    for site, units in flags.items():
        d = means[site].shape[0]
        sel = np.zeros(d, np.float32)
        sel[np.asarray(units, int)] = 1.0
        mask = (np.arange(seq) >= 1)[:, None].astype(np.float32) * sel[None]
        table[site] = Mean(jnp.asarray(means[site]), mask=jnp.asarray(mask))
    return intervene(model, table) if table else model


# ------------------------------------------------------------------------------ the table


@dataclasses.dataclass
class ShiftResult:
    """`rows`: `{run: {"profession", "gender", "worst_group" (percent), "features",
    "seconds"}}` in the order of Marks et al.'s table; `flags`: the ablated features (or
    neurons) of each run; `top`: SHIFT's top features with their effects and gender scores;
    `info`: settings and sizes."""

    rows: dict
    flags: dict
    top: list
    info: dict

    def to_json(self) -> dict:
        return {"rows": self.rows, "flags": self.flags, "top": self.top, "info": self.info}


def shift(
    model,
    saes,
    tokenizer,
    *,
    probe_site: str | None = None,
    n_train: int = 256,
    n_test: int = 256,
    n_attribution: int = 64,
    n_neutral: int = 128,
    top: int = 50,
    threshold: float = 1.0,
    steps: int = 10,
    C: float = 1e-3,
    rounds: int = 1,
    seed: int = 0,
    chunk: int = 32,
    progress: bool = False,
) -> ShiftResult:
    """Marks et al.'s SHIFT table on `jaxcirc.tasks.bios`, with the automatic gender proxy
    (`gender_scores ≥ threshold`) in place of a person, and the CircuitLasso route.

    `probe_site`: the probe's site, one of the SAEs' (default: the deepest). The probe is
    trained on `n_train` ambiguous bios; SHIFT attributes with `n_attribution` of them (IG,
    `steps`), takes the `top` features, flags the gendered ones and zeroes them at every SAE
    site up to the probe's. The random baseline and the neuron skyline ablate as many units;
    the oracle is trained on `n_train` balanced bios; everything is evaluated on `n_test`
    balanced bios of the test split (held-out names, frames and activities), and each row's
    `"familiar"` on `n_test` balanced bios in the training split's wording (a draw of its own,
    used for no training: Marks et al.'s i.i.d. setting, where only the groups change, not the
    wording). CircuitLasso:
    `feature_ranking` (logistic loss) of the label on the probe site's pooled codes, its
    `top` features by `|Â|`, flagged and ablated the same way at that site.

    `rounds > 1` adds iterated SHIFT (the rows `iterated SHIFT` and `… + retrain`): the person
    looks again. Each later round attributes the probe retrained in the round before, on the
    model with everything flagged so far ablated, takes the `top` features not yet flagged,
    flags the gendered ones and retrains; it stops early when a round flags nothing new.
    """
    from ..tasks import bios
    from ._circuit_lasso import feature_ranking

    saes = tuple(saes)
    if not saes:
        raise ValueError("shift needs at least one SAE")
    sites = [s.site for s in saes]
    if probe_site is None:
        probe_site = max(sites, key=_layer)
    if probe_site not in sites:
        raise ValueError(
            f"probe site {probe_site!r} has no SAE{nearest_word(probe_site, sites)}; "
            f"SAE sites: {sites}"
        )
    check_int(n_attribution, "n_attribution", 2, n_train)
    rounds = check_int(rounds, "rounds", 1)
    used = upstream(saes, probe_site)
    model = _through(model, _layer(probe_site))
    clock: dict[str, float] = {}
    say = print if progress else (lambda *a, **k: None)
    sets = [
        bios(tokenizer, n_train, kind="ambiguous", split="train", seed=seed),
        bios(tokenizer, n_train, kind="balanced", split="train", seed=seed),
        bios(tokenizer, n_neutral, kind="neutral", split="train", seed=seed),
        bios(tokenizer, n_test, kind="balanced", split="test", seed=seed),
        bios(tokenizer, n_test, kind="balanced", split="train", seed=seed + 1),
    ]
    seq = max(d.tokens.shape[1] for d in sets)  # one padded length: one compile per model
    amb, bal, neutral, test, familiar = (_pad_to(d, seq) for d in sets)

    def acts(m, data, what):
        return _chunked(m, data, probe_site, chunk=chunk, progress=progress, desc=what)[probe_site]

    x_amb, x_test = acts(model, amb, "original: train"), acts(model, test, "original: test")
    x_familiar = acts(model, familiar, "original: familiar")
    probe = train_probe(x_amb, amb.label, C=C, site=probe_site)
    rows, flags = {}, {}

    def row(name, x_eval, x_fam, n_features=0, seconds=0.0, probe_=probe):
        familiar_acc = accuracy(probe_, x_fam, familiar)
        del familiar_acc["frames"]
        rows[name] = {**accuracy(probe_, x_eval, test), "familiar": familiar_acc,
                      "features": n_features, "seconds": round(seconds, 2)}  # fmt: skip

    row("original probe", x_test, x_familiar)

    def ablated(name, edited, n_units, seconds, tag, xa=None):
        """The rows `name` and `name + retrain` of the model `edited` (`xa`: its pooled
        training bios, if already at hand); the retrained probe."""
        xa = acts(edited, amb, f"{tag}: train") if xa is None else xa
        xt = acts(edited, test, f"{tag}: test")
        xf = acts(edited, familiar, f"{tag}: familiar")
        retrained = train_probe(xa, amb.label, C=C, site=probe_site)
        row(name, xt, xf, n_units, seconds)
        row(f"{name} + retrain", xt, xf, n_units, seconds, retrained)
        return retrained

    # SHIFT: attribution, top features, flag, ablate
    start = time.perf_counter()
    say(f"SHIFT: attributing the probe to {sum(s.d_sae for s in used)} features at "
        f"{len(used)} sites (IG, {steps} steps, {n_attribution} bios)", flush=True)  # fmt: skip
    attribution = _first(amb, n_attribution)
    effects = shift_effects(model, used, probe, attribution, steps=steps)
    clock["shift_attribution"] = time.perf_counter() - start
    scores = gender_scores(model, used, neutral, chunk=chunk)
    chosen = top_features(effects, top)
    flags["SHIFT"] = flag_gender(chosen, scores, threshold)
    n_flag = _count(flags["SHIFT"])
    retrained = ablated("SHIFT", ablate(model, used, flags["SHIFT"]), n_flag,
                        clock["shift_attribution"], "SHIFT")  # fmt: skip
    history = [{"inspected": len(chosen), "flagged": n_flag,
                "seconds": round(clock["shift_attribution"], 2)}]  # fmt: skip

    # iterated SHIFT: attribute the retrained probe on the ablated model, flag again
    flagged = {site: list(ids) for site, ids in flags["SHIFT"].items()}
    xa = None  # the pooled training bios of the model with `flagged` ablated, once computed
    start = time.perf_counter()
    for r in range(2, rounds + 1):
        lap = time.perf_counter()
        say(f"SHIFT round {r}: {_count(flagged)} features ablated so far", flush=True)
        effects = shift_effects(ablate(model, used, flagged), used, retrained, attribution,
                                steps=steps)  # fmt: skip
        for site, ids in flagged.items():
            effects[site][np.asarray(ids, int)] = -np.inf
        fresh = [c for c in top_features(effects, top) if np.isfinite(c[2])]
        new = flag_gender(fresh, scores, threshold)
        history.append({"inspected": len(fresh), "flagged": _count(new)})
        if new:
            for site, ids in new.items():
                flagged.setdefault(site, []).extend(ids)
            edited = ablate(model, used, flagged)
            xa = acts(edited, amb, f"SHIFT round {r}: train")
            retrained = train_probe(xa, amb.label, C=C, site=probe_site)
        history[-1]["seconds"] = round(time.perf_counter() - lap, 2)
        if not new:
            break
    if rounds > 1:
        clock["shift_rounds"] = time.perf_counter() - start
        flags["iterated SHIFT"] = flagged
        seconds = clock["shift_attribution"] + clock["shift_rounds"]
        if _count(flagged) == n_flag:  # no round added a feature: SHIFT's rows, not recomputed
            for name in ("SHIFT", "SHIFT + retrain"):
                rows[f"iterated {name}"] = {**rows[name], "seconds": round(seconds, 2)}
        else:
            ablated("iterated SHIFT", ablate(model, used, flagged), _count(flagged), seconds,
                    "iterated SHIFT", xa)  # fmt: skip

    # random features, same count
    flags["random"] = random_flags(used, n_flag, seed=seed)
    ablated("random ablation", ablate(model, used, flags["random"]), n_flag, 0.0, "random")

    # neuron skyline: top residual units by their effect on gender (balanced data)
    start = time.perf_counter()
    units, means = neuron_skyline(model, [s.site for s in used], probe, bal, n_flag)
    clock["skyline"] = time.perf_counter() - start
    flags["neuron skyline"] = units
    ablated("neuron skyline", neuron_ablate(model, units, means, seq), n_flag,
            clock["skyline"], "neuron skyline")  # fmt: skip

    # oracle: trained on balanced data
    x_bal = acts(model, bal, "oracle: train")
    row("oracle", x_test, x_familiar, 0, 0.0, train_probe(x_bal, bal.label, C=C, site=probe_site))

    # CircuitLasso route: target regression on the probe site's features
    start = time.perf_counter()
    z = pooled_codes(model, used, amb, chunk=chunk)[probe_site]  # gender_scores' program
    with warnings.catch_warnings():  # features that never fire on bios are dropped: expected
        warnings.filterwarnings("ignore", message="CircuitLasso: dropped")
        ranking = feature_ranking(z, np.asarray(amb.label), loss="logistic", seed=seed)
    nonzero = [int(i) for i in ranking.order if ranking.dataset[i] > 0][:top]
    clock["circuit_lasso"] = time.perf_counter() - start
    lasso_scores = {probe_site: scores[probe_site]}
    flags["CircuitLasso"] = flag_gender([(probe_site, i) for i in nonzero], lasso_scores,
                                        threshold)  # fmt: skip
    n_lasso = _count(flags["CircuitLasso"])
    # the other SAEs unedited: SHIFT's program
    ablated("CircuitLasso", ablate(model, used, flags["CircuitLasso"]), n_lasso,
            clock["circuit_lasso"], "CircuitLasso")  # fmt: skip

    top_rows = [
        {"site": s, "feature": i, "effect": e, "gender_score": float(scores[s][i])}
        for s, i, e in chosen
    ]
    info = {
        "probe_site": probe_site,
        "sae_sites": [s.site for s in used],
        "n_train": n_train,
        "n_test": n_test,
        "n_attribution": n_attribution,
        "n_neutral": n_neutral,
        "top": top,
        "threshold": threshold,
        "steps": steps,
        "C": C,
        "seed": seed,
        "inspected": {"SHIFT": len(chosen), "CircuitLasso": len(nonzero)},
        "rounds": history,
        "lasso_alpha": float(ranking.alpha),
        "lasso_nonzero": int((ranking.dataset > 0).sum()),
        "seconds": {k: round(v, 2) for k, v in clock.items()},
        "bios_fvu": bios_fvu(model, used, amb),
        "bios_fvu_test": bios_fvu(model, used, test),  # reported only: it chooses nothing
    }
    return ShiftResult(rows, flags, top_rows, info)


def _count(flags: Mapping[str, Sequence[int]]) -> int:
    return sum(len(v) for v in flags.values())


def _through(model, layer: int):
    """`model` without the blocks after `layer`. Every site SHIFT reads is at or before the
    probe's layer; an unrolled program drops the later blocks by itself (XLA removes unread
    work), a scanned one (`jaxcirc.models.scan_layers`) would run them all."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or layer + 1 >= len(blocks):
        return model
    return dataclasses.replace(model, blocks=blocks[: layer + 1],
                               cfg=model.cfg.replace(n_layers=layer + 1))  # fmt: skip


def _first(data, n: int):
    """The first `n` bios of `data` (a `Bios`): every per-bio array and the texts."""
    return dataclasses.replace(jax.tree.map(lambda a: a[:n], data), texts=data.texts[:n])


def _pad_to(data, seq: int):
    """`data` (a `Bios`) right-padded to `seq` tokens."""
    extra = seq - data.tokens.shape[1]
    if extra <= 0:
        return data
    tokens = jnp.pad(data.tokens, ((0, 0), (0, extra)), constant_values=data.pad)
    return eqx.tree_at(lambda d: d.tokens, data, tokens)
