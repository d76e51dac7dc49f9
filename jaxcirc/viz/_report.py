"""A self-contained HTML report: sections of text, numbers that each carry a sentence saying
what they mean, tables, and figures embedded as base64 PNG, closed by the command that
reproduces it. One file, no scripts, no network: it opens from disk or an e-mail attachment.

The figures the report of `jaxcirc discover` draws live here too: curves against circuit size,
a scatter against the diagonal, and circuits laid out by layer with a legend. Each has an
untruncated (wrapped) title, labelled axes and a legend. Matplotlib's object API only.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._atomic import atomic_write
from ._circuit import _layout, _node_of

PNG = b"\x89PNG\r\n\x1a\n"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;
 background:#fafbfc;line-height:1.45}
main{max-width:980px;margin:0 auto;padding:1.2em 1.2em 3em;overflow-wrap:anywhere}
h1{font-size:1.7em;margin:.4em 0}h2{border-bottom:1px solid #d5dae0;padding-bottom:.2em;
 margin-top:1.8em}
figure{margin:1.2em 0;background:#fff;border:1px solid #e3e7eb;padding:.6em;
 max-width:100%;box-sizing:border-box}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.92em;color:#47515c;margin-top:.4em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em;max-width:100%;
 table-layout:auto;overflow-wrap:anywhere}
th,td{border:1px solid #d5dae0;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#eef1f4}caption{caption-side:bottom;text-align:left;color:#47515c;
 font-size:.9em;padding-top:.3em}
.numbers{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8em}
.number{background:#fff;border:1px solid #e3e7eb;padding:.6em .8em}
.number .label{font-size:.85em;color:#47515c}.number .value{font-size:1.5em;font-weight:600}
.number p{margin:.3em 0 0;font-size:.9em}
pre{background:#1d232b;color:#f3f5f7;padding:.8em;white-space:pre-wrap;overflow-wrap:anywhere}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}
"""


def _escape(text) -> str:
    return html.escape(str(text), quote=True)


def format_number(value) -> str:
    """A number as the report prints it: integers whole, floats to 4 significant digits,
    non-finite values and `None` as "n/a", text as it is."""
    if isinstance(value, str):
        return value
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


class Report:
    """An HTML report built section by section; `write(path)` saves it atomically.

    **Arguments:** `title`; `command`, the exact command line that reproduces the report
    (printed at its end); `summary`, the opening paragraph.
    """

    def __init__(self, title: str, command: str, summary: str = ""):
        if not title or not command:
            raise ValueError("a report needs a title and the command that reproduces it")
        self.title, self.command = title, command
        self._parts = [f"<h1>{_escape(title)}</h1>"]
        if summary:
            self._parts.append(f'<p class="lead">{_escape(summary)}</p>')
        self._numbers: list[str] | None = None

    def _close_numbers(self) -> None:
        if self._numbers is not None:
            self._parts.append(f'<div class="numbers">{"".join(self._numbers)}</div>')
            self._numbers = None

    def _add(self, part: str) -> Report:
        self._close_numbers()
        self._parts.append(part)
        return self

    def section(self, heading: str, intro: str = "") -> Report:
        """Start a section: a heading and an optional paragraph."""
        anchor = "".join(c if c.isalnum() else "-" for c in heading.lower()).strip("-")
        self._add(f'<h2 id="{_escape(anchor)}">{_escape(heading)}</h2>')
        return self.paragraph(intro) if intro else self

    def paragraph(self, text: str, *, note: bool = False) -> Report:
        """A paragraph of plain text (`note=True`: highlighted, for caveats)."""
        return self._add(f"<p{' class=note' if note else ''}>{_escape(text)}</p>")

    def number(self, label: str, value, meaning: str) -> Report:
        """A headline number with the sentence that says what it means (required). Numbers
        added one after another share a grid."""
        if not str(meaning).strip():
            raise ValueError(f"number {label!r} needs a sentence saying what it means")
        if self._numbers is None:
            self._close_numbers()
            self._numbers = []
        self._numbers.append(
            f'<div class="number"><div class="label">{_escape(label)}</div>'
            f'<div class="value">{_escape(format_number(value))}</div>'
            f"<p>{_escape(meaning)}</p></div>"
        )
        return self

    def table(self, columns: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> Report:
        """A table; numbers in `rows` are printed by `format_number`."""
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise ValueError(f"table row {i} has {len(row)} cells for {len(columns)} columns")
        head = "".join(f"<th>{_escape(c)}</th>" for c in columns)

        def cell(v):
            text = v if isinstance(v, str) else format_number(v)
            return f"<td>{_escape(text)}</td>"

        body = "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows)
        cap = f"<caption>{_escape(caption)}</caption>" if caption else ""
        return self._add(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, png: bytes | str | os.PathLike, caption: str, alt: str = "") -> Report:
        """Embed a PNG (bytes or a file) as base64, with its caption."""
        data = png if isinstance(png, bytes) else Path(png).read_bytes()
        if not data.startswith(PNG):
            where = "the bytes given" if isinstance(png, bytes) else str(png)
            raise ValueError(f"figure {where} is not a PNG (expected a file starting {PNG!r})")
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return self._add(
            f'<figure><img src="{src}" alt="{_escape(alt or caption)}">'
            f"<figcaption>{_escape(caption)}</figcaption></figure>"
        )

    def html(self) -> str:
        """The whole document."""
        self._close_numbers()
        body = "\n".join(self._parts)
        reproduce = (
            '<h2 id="reproduce">Reproduce</h2><p>This report was written by the command '
            f"below; run it again to get the same numbers.</p><pre><code>{_escape(self.command)}"
            "</code></pre>"
        )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><main>\n{body}\n{reproduce}\n</main></body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the document to `path` atomically; returns the `Path`."""
        text = self.html()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def wrap_title(title: str, width_inches: float, fontsize: float = 10.0) -> str:
    """`title` broken into lines that fit a figure `width_inches` wide (about 0.55 em a
    character), so constrained layout never clips it."""
    chars = max(20, int(width_inches * 72 / (0.55 * fontsize)) - 4)
    return "\n".join(textwrap.wrap(title, chars)) or title


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def plot_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str,
    x_label: str,
    y_label: str,
    points: Mapping[str, tuple[float, float]] | None = None,
    reference: float | None = None,
    log_x: bool = False,
) -> Path:
    """Lines `{label: (x, y)}`, single `points` `{label: (x, y)}` drawn as markers, and an
    optional dashed horizontal `reference` line, in one labelled panel with a legend."""
    if not series and not points:
        raise ValueError("plot_curves needs at least one series or point")
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.plot(np.asarray(x), np.asarray(y), marker="o", markersize=3, label=label)
    for label, (x, y) in (points or {}).items():
        ax.scatter([x], [y], marker="*", s=140, zorder=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="0.4", ls="--", lw=1, label=f"target {reference:g}")
    if log_x:
        ax.set_xscale("log")
    return _finish(fig, ax, x_label, y_label, title, 6.4, path)


def _finish(fig, ax, x_label: str, y_label: str, title: str, width: float, path):
    """Label the axes, grid, legend and a title wrapped to `width` inches; save."""
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(wrap_title(title, width), fontsize=10)
    return _save(fig, path)


def plot_scatter(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str,
    x_label: str,
    y_label: str,
) -> Path:
    """Point sets `{label: (x, y)}` with the diagonal `y = x` (perfect agreement), labelled,
    with a legend."""
    pairs = {
        k: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for k, (x, y) in series.items()
    }
    for label, (x, y) in pairs.items():
        if x.shape != y.shape or x.ndim != 1 or x.size == 0:
            raise ValueError(
                f"plot_scatter series {label!r} needs two equal non-empty 1-D arrays; got "
                f"{x.shape} and {y.shape}"
            )
    if not pairs:
        raise ValueError("plot_scatter needs at least one series")
    fig = _new_figure(5.6, 4.8)
    ax = fig.add_subplot()
    every = np.concatenate([np.concatenate(xy) for xy in pairs.values()])
    finite = every[np.isfinite(every)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    ax.plot(
        [low - pad, high + pad],
        [low - pad, high + pad],
        color="0.5",
        ls="--",
        lw=1,
        label="y = x (identical)",
    )
    for label, (x, y) in pairs.items():
        ax.scatter(x, y, s=18, alpha=0.8, label=label)
    return _finish(fig, ax, x_label, y_label, title, 5.6, path)


def plot_circuits(
    circuits: Mapping[str, object],
    path: str | os.PathLike,
    *,
    title: str,
    highlight: Sequence[tuple[str, str]] = (),
    highlight_label: str = "highlighted edge",
) -> Path:
    """Circuits (`{panel title: Circuit}`, one graph) drawn by layer: the embedding at the
    bottom, the logits on top, only the nodes the model has. Edges in `highlight` are drawn
    thick and orange, the others blue; a legend names both."""
    from matplotlib.lines import Line2D

    if not circuits:
        raise ValueError("plot_circuits needs at least one circuit")
    g = next(iter(circuits.values())).graph
    pos = {k: v for k, v in _layout(g).items() if k in set(g.sources) | {"logits"}}
    marked = {(s, t) for s, t in highlight}
    n = len(circuits)
    cols = min(n, 2)
    rows = -(-n // cols)
    width = 4.4 * cols
    fig = _new_figure(width, rows * (1.1 * g.n_layers + 2.2) + 0.9)
    for k, (name, circuit) in enumerate(circuits.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        for source, target in circuit.edges():
            (x0, y0), (x1, y1) = pos[source], pos[_node_of(g, target)]
            hot = (source, target) in marked
            ax.plot(
                [x0, x1],
                [y0, y1],
                color="tab:orange" if hot else "tab:blue",
                lw=2.4 if hot else 0.9,
                alpha=0.95 if hot else 0.5,
                zorder=2 if hot else 1,
            )
        for node, (x, y) in pos.items():
            ax.scatter([x], [y], s=80, color="white", edgecolor="black", zorder=3)
            ax.annotate(
                node,
                (x, y),
                fontsize=7,
                ha="center",
                va="bottom",
                xytext=(0, 5),
                textcoords="offset points",
            )
        found = sum((s, t) in marked for s, t in circuit.edges())
        ax.set_title(f"{name}: {len(circuit.edges())} edges, {found} highlighted", fontsize=9)
        ax.set_axis_off()
        ax.margins(0.12)
    handles = [
        Line2D([], [], color="tab:orange", lw=2.4, label=highlight_label),
        Line2D([], [], color="tab:blue", lw=0.9, label="other circuit edge"),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            mfc="white",
            mec="black",
            label="node (embedding, head, logits)",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(wrap_title(title, width), fontsize=10)
    return _save(fig, path)
