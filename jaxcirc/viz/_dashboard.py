"""Feature dashboards: what makes an SAE feature fire, and what it writes to the logits.

For each chosen feature (Bricken et al. 2023, "Towards monosemanticity", whose feature views
SAELens and Neuronpedia follow): the top-activating contexts with every token shaded by the
feature's activation, the histogram of its nonzero activations with its firing frequency, and
its direct logit effects, the decoder direction `W_dec[f]` read by the unembedding. Written as
one self-contained HTML page (histograms as base64 SVG images, no network, every token
HTML-escaped), a PNG
summary and the numbers (`Dashboard.to_dict`).

The activations are collected in batches of a fixed shape, so the model and the SAE compile
once whatever the number of features.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import atomic_write
from .._checks import check_int, index_range_error
from .._finite import check_finite
from .._progress import progress_bar, tick
from ..sae._sae import SAE
from ..sae._splice import splice


@dataclasses.dataclass(frozen=True)
class Context:
    """One top-activating occurrence: `tokens[row, start:start + len(strings)]`, the
    feature's activation at each of them, and the index (in that window) of the maximum."""

    row: int
    position: int
    activation: float
    start: int
    token_ids: tuple[int, ...]
    strings: tuple[str, ...]
    activations: tuple[float, ...]

    @property
    def center(self) -> int:
        return self.position - self.start


@dataclasses.dataclass(frozen=True)
class FeatureCard:
    """One feature's numbers. `frequency`: fraction of the token positions where it is
    nonzero; `histogram`: counts and bin edges of its nonzero activations; `logits_up` /
    `logits_down`: `(token, id, effect)` of the largest and smallest direct logit effects
    (empty when the site is not read linearly by the unembedding)."""

    feature: int
    frequency: float
    max_activation: float
    mean_active: float
    contexts: tuple[Context, ...]
    histogram: tuple[tuple[int, ...], tuple[float, ...]]
    logits_up: tuple[tuple[str, int, float], ...]
    logits_down: tuple[tuple[str, int, float], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Dashboard:
    """The dashboard of `cards` (one per chosen feature) for an SAE at `site`, from
    `n_tokens` token positions; `frequency` and `max_activation` hold every feature's."""

    site: str
    architecture: str
    d_sae: int
    n_tokens: int
    cards: tuple[FeatureCard, ...]
    frequency: np.ndarray
    max_activation: np.ndarray
    logit_note: str

    def to_dict(self) -> dict:
        """The numbers as JSON-ready Python values."""
        cards = []
        for c in self.cards:
            d = dataclasses.asdict(c)
            d["histogram"] = {"counts": list(c.histogram[0]), "edges": list(c.histogram[1])}
            d["logits_up"] = [dict(zip(("token", "id", "effect"), t)) for t in c.logits_up]
            d["logits_down"] = [dict(zip(("token", "id", "effect"), t)) for t in c.logits_down]
            cards.append(d)
        fired = self.frequency > 0
        return {
            "site": self.site,
            "architecture": self.architecture,
            "d_sae": self.d_sae,
            "n_tokens": self.n_tokens,
            "dead_features": int((~fired).sum()),
            "mean_frequency": float(self.frequency.mean()),
            "logit_effects": self.logit_note,
            "features": cards,
        }


# ----------------------------------------------------------------------------- collection


@eqx.filter_jit
def _collect(model, sae: SAE, tokens, valid):
    """Site activations `[batch, seq, d_in]`, and per feature the firing count and maximum
    over the valid positions."""

    def one(t):
        return model.run(t)[1][sae.site]

    x = jax.vmap(one)(tokens)
    x = x.reshape(*tokens.shape, -1)
    f = sae.encode(x)
    fired = (f != 0) & valid[..., None]
    f_max = jnp.where(valid[..., None], f, -jnp.inf).max((0, 1))
    return x, fired.sum((0, 1)), f_max


@eqx.filter_jit
def _features(sae: SAE, x, index):
    return sae.encode(x)[..., index]


def _check_inputs(model, sae: SAE, tokens, lengths):
    if not isinstance(sae, SAE):
        raise TypeError(f"feature_dashboard needs a jaxcirc SAE; got {type(sae).__name__}")
    splice(model, sae)  # the site exists and has the SAE's width (errors name the nearest)
    tokens = model.check_tokens(tokens)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty [batch, seq] array; got {tokens.shape}")
    n, seq = tokens.shape
    if lengths is None:
        lengths = np.full(n, seq)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(
            f"lengths must be {n} integers (one per row of tokens); got {lengths.dtype} "
            f"shape {lengths.shape}"
        )
    bad = np.flatnonzero((lengths < 1) | (lengths > seq))
    if bad.size:
        raise ValueError(
            f"lengths[{bad[0]}] = {lengths[bad[0]]} is outside 1..{seq} (the tokens' seq)"
        )
    return tokens, lengths


def _diagnose(sae: SAE, xs, batch: int) -> str:
    """Where non-finite codes start: the site's activation (row, position) or an SAE weight."""
    for c, (x, keep) in enumerate(xs):
        bad = ~np.isfinite(np.asarray(x)) & keep[:, None, None]
        if bad.any():
            r, p, _ = np.argwhere(bad)[0]
            return (
                f"the activation at {sae.site} is non-finite at row {c * batch + r}, position {p}"
            )
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        bad = np.argwhere(~np.isfinite(np.asarray(getattr(sae, name))))
        if len(bad):
            return f"the SAE weight {name} is non-finite at {[int(i) for i in bad[0]]}"
    return "the activations and the SAE's affine weights are finite"


def _choose(features, count, f_max, n_features: int, select: str, d_sae: int) -> np.ndarray:
    if features is not None:
        ids = np.asarray(features)
        if ids.ndim == 0:
            ids = ids[None]
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"features must be a non-empty list of feature ids; got {features!r}")
        for f in ids:
            if not 0 <= f < d_sae:
                raise ValueError(index_range_error(int(f), d_sae, "feature", False,
                                                   f" of an SAE with d_sae={d_sae}"))  # fmt: skip
        _, first = np.unique(ids, return_index=True)
        if len(first) != len(ids):
            dup = ids[np.setdiff1d(np.arange(len(ids)), first)[0]]
            raise ValueError(f"feature {int(dup)} is listed twice")
        return ids.astype(np.int64)
    if select not in ("frequency", "max"):
        raise ValueError(f"select must be 'frequency' or 'max'; got {select!r}")
    check_int(n_features, "n_features", 1)
    live = np.flatnonzero(count > 0)
    if live.size == 0:
        raise ValueError(
            "no feature of this SAE fires on these tokens: nothing to show (pass features= "
            "to draw chosen ones anyway)"
        )
    key = (count[live], f_max[live]) if select == "frequency" else (f_max[live], count[live])
    order = np.lexsort((live, -key[1], -key[0]))
    return live[order[:n_features]]


# ------------------------------------------------------------------------- logit effects

_RESIDUAL = re.compile(r"^(hook_embed|hook_pos_embed|blocks\.\d+\.hook_(resid_pre|resid_mid|"
                       r"resid_post|attn_out|mlp_out)|ln_final\.hook_normalized)$")  # fmt: skip
_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def _to_residual(model, site: str, directions):
    """The decoder directions `[n, d_in]` as residual-stream directions and how they were
    mapped, or `None` and why not."""
    if _RESIDUAL.match(site):
        return directions, "W_dec[f]"
    if m := _MLP_POST.match(site):
        mlp = model.blocks[int(m.group(1))].mlp
        if getattr(mlp, "W_out", None) is not None:
            return directions @ mlp.W_out, "W_dec[f] · W_out"
    if m := _HOOK_Z.match(site):
        W_O = model.blocks[int(m.group(1))].attn.W_O  # [head, d_head, d_model]
        flat = directions.reshape(-1, *W_O.shape[:2])
        return jnp.einsum("nhd,hdm->nm", flat, W_O), "W_dec[f] · W_O"
    return None, f"none: site {site} is not written linearly into the residual stream"


def _logit_effects(model, site: str, directions):
    """`[n, d_vocab]` direct logit effects of the decoder directions through the fixed part
    of the final norm (LayerNorm's centring and gain, RMSNorm's gain) and the unembedding,
    with a note saying so (or `None` and why not)."""
    resid, note = _to_residual(model, site, directions)
    if resid is None:
        return None, note
    resid = resid.astype(jnp.float32)
    if site != "ln_final.hook_normalized":
        ln = model.ln_final
        if hasattr(ln, "b"):  # LayerNorm: the centring is linear
            resid = resid - resid.mean(-1, keepdims=True)
        if getattr(ln, "w", None) is not None:
            resid = resid * ln.w.astype(jnp.float32)
            note += " through the final norm's centring and gain (not its data-dependent 1/σ)"
    return resid @ model.unembed.W_U.astype(jnp.float32), note + " · W_U"


# ------------------------------------------------------------------------------- strings


def _token_strings(tokenizer, ids) -> dict[int, str]:
    ids = sorted({int(i) for i in ids})
    if tokenizer is None:
        return {i: f"<{i}>" for i in ids}
    if isinstance(tokenizer, Sequence) and not isinstance(tokenizer, str):
        return {i: str(tokenizer[i]) if i < len(tokenizer) else f"<{i}>" for i in ids}
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        raise TypeError(
            "tokenizer must have a decode(ids) method (jaxcirc.io.load_tokenizer, a "
            f"transformers tokenizer) or be a list of token strings; got {type(tokenizer)}"
        )
    return {i: decode([i]) for i in ids}


def _show(s: str) -> str:
    """A token for display: visible newlines and tabs."""
    return s.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def _label(s: str) -> str:
    """A token as a matplotlib label: quoted (spaces visible), mathtext's `$` escaped."""
    return repr(_show(s)).replace("$", r"\$")


# ---------------------------------------------------------------------------- the driver


def feature_dashboard(
    model,
    sae: SAE,
    tokens,
    *,
    features: Sequence[int] | None = None,
    n_features: int = 8,
    select: str = "frequency",
    tokenizer=None,
    lengths=None,
    start: int = 0,
    n_contexts: int = 8,
    window: tuple[int, int] = (12, 4),
    bins: int = 30,
    n_logits: int = 10,
    batch_size: int = 16,
    path: str | os.PathLike | None = None,
    png: str | os.PathLike | None = None,
    title: str | None = None,
    progress: bool = True,
) -> Dashboard:
    """The dashboard of an SAE's features on `tokens` `[batch, seq]` (rows right-padded to
    `lengths`, if given).

    **Arguments:**

    - `features`: the feature ids to draw; by default the `n_features` that fire most often
      (`select="frequency"`) or reach the highest activation (`select="max"`).
    - `start`: positions before it are left out of every statistic (e.g. `1` for rows opened
      by BOS, where many features fire for no reason of the text); they still show in contexts.
    - `tokenizer`: `decode([id]) -> str` (a jaxcirc or `transformers` tokenizer) or a list of
      token strings; without one tokens show as `<id>`.
    - `n_contexts`: top-activating contexts per feature, each `window = (before, after)`
      tokens around its maximum; `bins`: histogram bins; `n_logits`: logit effects each way.
    - `batch_size`: rows per compiled batch (the last one is padded and masked).
    - `path`: write the HTML page there; `png`: the summary figure (both atomically).

    The direct logit effect of feature `f` is `W_dec[f]` (mapped to the residual stream by
    `W_out` for `mlp.hook_post` and by `W_O` for `attn.hook_z`) through the final norm's
    linear part (centring and gain, not the data-dependent 1/σ) and `W_U`: the token logits the
    feature raises and lowers directly, up to that positive scale (Bricken et al. 2023).
    """
    tokens, lengths = _check_inputs(model, sae, tokens, lengths)
    check_int(batch_size, "batch_size", 1)
    check_int(n_contexts, "n_contexts", 0)
    check_int(bins, "bins", 1)
    check_int(n_logits, "n_logits", 0)
    before, after = (check_int(w, "window", 0) for w in window)
    n, seq = tokens.shape
    check_int(start, "start", 0, seq - 1)
    positions = np.arange(seq)[None, :]
    valid = (positions < lengths[:, None]) & (positions >= start)
    batch = min(batch_size, n)
    chunks = math.ceil(n / batch)
    xs, count, f_max = [], np.zeros(sae.d_sae, np.int64), np.full(sae.d_sae, -np.inf)
    with progress_bar(progress, total=chunks, desc=f"SAE features at {sae.site}", unit="batch"):
        for c in range(chunks):
            rows = np.arange(c * batch, (c + 1) * batch)
            keep = rows < n
            rows = np.where(keep, rows, 0)  # the last batch padded with row 0, masked out
            v = valid[rows] & keep[:, None]
            x, k, m = _collect(model, sae, jnp.asarray(tokens[rows]), jnp.asarray(v))
            xs.append((x, keep))
            count += np.asarray(k)
            f_max = np.maximum(f_max, np.asarray(m))
            tick()
    n_tokens = int(valid.sum())
    f_max = np.where(np.isneginf(f_max), 0.0, f_max)
    check_finite(f_max, f"SAE activations at {sae.site}", axes=("feature",),
                 diagnose=lambda: _diagnose(sae, xs, batch))  # fmt: skip
    chosen = _choose(features, count, f_max, n_features, select, sae.d_sae)

    index = jnp.asarray(chosen)
    acts = np.concatenate([np.asarray(_features(sae, x, index))[keep] for x, keep in xs])
    acts = np.where(valid[..., None], acts, 0.0).astype(np.float32)  # [n, seq, chosen]

    directions = sae.W_dec[index]
    effects, note = _logit_effects(model, sae.site, directions)
    if effects is not None:
        effects = np.asarray(effects)
        check_finite(effects, "logit effects", axes=("feature", "token"))
    ids_needed: set[int] = set()
    cards, pending = [], []
    for j, f in enumerate(chosen):
        a = acts[..., j]
        nz = a[valid & (a != 0)]
        if nz.size:
            counts, edges = np.histogram(nz, bins=bins)
        else:
            counts, edges = np.zeros(bins, int), np.zeros(bins + 1)
        flat = np.where(valid & (a != 0), a, -np.inf).reshape(-1)
        k = min(n_contexts, int(np.isfinite(flat).sum()))
        top = np.argsort(-flat, kind="stable")[:k]
        contexts = []
        for t in top:
            r, p = divmod(int(t), seq)
            s, e = max(0, p - before), min(int(lengths[r]), p + after + 1)
            contexts.append((r, p, float(a[r, p]), s, tokens[r, s:e], a[r, s:e]))
            ids_needed |= set(tokens[r, s:e].tolist())
        up = down = ()
        if effects is not None and n_logits:
            order = np.argsort(-effects[j], kind="stable")
            up = [(int(i), float(effects[j, i])) for i in order[:n_logits]]
            down = [(int(i), float(effects[j, i])) for i in order[::-1][:n_logits]]
            ids_needed |= {i for i, _ in up + down}
        pending.append((int(f), nz, counts, edges, contexts, up, down))
    names = _token_strings(tokenizer, ids_needed)
    name = lambda i: names[int(i)]  # noqa: E731
    for f, nz, counts, edges, contexts, up, down in pending:
        cards.append(
            FeatureCard(
                feature=f,
                frequency=float(count[f] / max(n_tokens, 1)),
                max_activation=float(f_max[f]) if count[f] else 0.0,
                mean_active=float(nz.mean()) if nz.size else 0.0,
                contexts=tuple(
                    Context(
                        r,
                        p,
                        v,
                        s,
                        tuple(int(i) for i in ids),
                        tuple(name(i) for i in ids),
                        tuple(float(x) for x in vals),
                    )
                    for r, p, v, s, ids, vals in contexts
                ),  # fmt: skip
                histogram=(tuple(int(c) for c in counts), tuple(float(e) for e in edges)),
                logits_up=tuple((name(i), i, v) for i, v in up),
                logits_down=tuple((name(i), i, v) for i, v in down),
            )
        )
    dash = Dashboard(
        site=sae.site,
        architecture=sae.architecture,
        d_sae=sae.d_sae,
        n_tokens=n_tokens,
        cards=tuple(cards),
        frequency=count / max(n_tokens, 1),
        max_activation=f_max,
        logit_note=note,
    )
    if path is not None:
        write_html(dash, path, title=title)
    if png is not None:
        plot_dashboard(dash, png, title=title)
    return dash


# ---------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px} h2{font-size:16px;margin:28px 0 6px;border-top:1px solid #ddd;padding-top:14px}
.meta{color:#555;font-size:13px}
.row{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.ctx{font-family:ui-monospace,monospace;font-size:13px;white-space:pre;margin:2px 0}
.tok{border-radius:2px;padding:0 1px}
.max{outline:1.5px solid #b00}
.act{color:#777;display:inline-block;width:64px;text-align:right;margin-right:8px}
table{border-collapse:collapse;font-size:13px}
td{padding:1px 8px;font-family:ui-monospace,monospace}
td.up{color:#1a7f37} td.down{color:#b42318}
"""


def _histogram_svg(card: FeatureCard, width: int = 360, height: int = 170) -> str:
    """The feature's activation histogram as a small SVG (bars, axis ticks, labels)."""
    counts = np.asarray(card.histogram[0], float)
    edges = np.asarray(card.histogram[1], float)
    left, bottom, top_pad = 44, 34, 22
    w, h = width - left - 10, height - bottom - top_pad
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="14" text-anchor="middle">fires on '
        f"{100 * card.frequency:.3g}% of tokens</text>",
    ]
    peak = counts.max() if counts.size and counts.max() > 0 else 1.0
    span = edges[-1] - edges[0] if edges[-1] > edges[0] else 1.0
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        x = left + w * (lo - edges[0]) / span
        bw = max(w * (hi - lo) / span - 0.5, 0.5)
        bh = h * c / peak
        out.append(
            f'<rect x="{x:.1f}" y="{top_pad + h - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
            f'fill="#e8743b"/>'
        )
    y0 = top_pad + h
    out += [
        f'<line x1="{left}" y1="{y0}" x2="{left + w}" y2="{y0}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{y0}" stroke="#444"/>',
        f'<text x="{left}" y="{y0 + 13}" text-anchor="middle">{edges[0]:.3g}</text>',
        f'<text x="{left + w}" y="{y0 + 13}" text-anchor="middle">{edges[-1]:.3g}</text>',
        f'<text x="{left + w / 2}" y="{y0 + 27}" text-anchor="middle">activation (nonzero '
        f"only)</text>",
        f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end">{int(peak)}</text>',
        f'<text x="{left - 4}" y="{y0}" text-anchor="end">0</text>',
        f'<text x="12" y="{top_pad + h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top_pad + h / 2})">count</text>',
        "</svg>",
    ]
    return base64.b64encode("".join(out).encode()).decode("ascii")


def _context_html(ctx: Context, top: float) -> str:
    spans = []
    for i, (s, v) in enumerate(zip(ctx.strings, ctx.activations)):
        alpha = 0.0 if top <= 0 else min(max(v / top, 0.0), 1.0)
        cls = "tok max" if i == ctx.center else "tok"
        spans.append(
            f'<span class="{cls}" style="background:rgba(255,120,0,{alpha:.2f})" '
            f'title="{html.escape(repr(s))}: {v:.4g}">{html.escape(_show(s))}</span>'
        )
    return (
        f'<div class="ctx"><span class="act">{ctx.activation:.3g}</span>{"".join(spans)}'
        f'<span class="meta">  (row {ctx.row}, position {ctx.position})</span></div>'
    )


def _logit_table(card: FeatureCard) -> str:
    if not card.logits_up:
        return ""
    rows = []
    for (su, _, vu), (sd, _, vd) in zip(card.logits_up, card.logits_down):
        rows.append(
            f'<tr><td class="up">{html.escape(repr(_show(su)))}</td><td class="up">{vu:+.3f}</td>'
            f'<td class="down">{html.escape(repr(_show(sd)))}</td>'
            f'<td class="down">{vd:+.3f}</td></tr>'
        )
    return (
        "<table><tr><th colspan=2>raises</th><th colspan=2>lowers</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def dashboard_html(dash: Dashboard, title: str | None = None) -> str:
    """The dashboard as one self-contained HTML page (a string)."""
    title = title or f"SAE features at {dash.site}"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(dash.architecture)} SAE, d_sae={dash.d_sae}; '
        f"{dash.n_tokens} token positions; {int((dash.frequency == 0).sum())} features never "
        f"fire; logit effects: {html.escape(dash.logit_note)}</p>",
    ]
    for card in dash.cards:
        parts.append(
            f"<h2>Feature {card.feature}</h2><p class='meta'>frequency "
            f"{100 * card.frequency:.3g}% · max {card.max_activation:.4g} · mean when active "
            f"{card.mean_active:.4g}</p><div class='row'><img alt='activation histogram' "
            f"src='data:image/svg+xml;base64,{_histogram_svg(card)}'>"
            f"{_logit_table(card)}</div>"
        )
        if card.contexts:
            parts.append("<p class='meta'>top activating contexts</p>")
            parts.extend(_context_html(c, card.max_activation) for c in card.contexts)
        else:
            parts.append("<p class='meta'>never fires on these tokens</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(dash: Dashboard, path: str | os.PathLike, title: str | None = None) -> Path:
    text = dashboard_html(dash, title)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def plot_dashboard(dash: Dashboard, path: str | os.PathLike, title: str | None = None,
                   max_features: int = 8) -> Path:  # fmt: skip
    """A PNG summary: per feature (up to `max_features`), its activation histogram and its
    top logit effects each way."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cards = dash.cards[:max_features]
    logits = any(c.logits_up for c in cards)
    fig = Figure(figsize=(11 if logits else 5.5, 2.3 * len(cards) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cards), 2 if logits else 1, squeeze=False)
    for card, row in zip(cards, axes):
        counts, edges = np.asarray(card.histogram[0]), np.asarray(card.histogram[1])
        ax = row[0]
        if counts.sum():
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#e8743b")
        ax.set_title(
            f"feature {card.feature}: fires on {100 * card.frequency:.3g}% of tokens, "
            f"max {card.max_activation:.3g}",
            fontsize=10,
        )
        ax.set_xlabel("activation (nonzero)", fontsize=9)
        ax.set_ylabel("count", fontsize=9)
        if logits:
            ax = row[1]
            shown = [*card.logits_up[:5], *card.logits_down[:5][::-1]]
            values = [v for _, _, v in shown]
            ax.barh(range(len(shown)), values,
                    color=["#1a7f37" if v >= 0 else "#b42318" for v in values])  # fmt: skip
            ax.set_yticks(range(len(shown)), [_label(s) for s, _, _ in shown], fontsize=8)
            ax.invert_yaxis()
            ax.axvline(0, color="#444", lw=0.6)
            ax.set_title("direct logit effect (top 5 each way)", fontsize=10)
    fig.suptitle(title or f"SAE features at {dash.site}", fontsize=12)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
