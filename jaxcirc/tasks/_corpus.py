"""Text without downloads: the docstrings of the Python standard library, as a token stream.

`stdlib_text()` reads the standard library's `.py` files (sorted by path; tests, `idlelib`,
`lib2to3`, `site-packages` and the like skipped) and parses them with `ast`, nothing imported:
each module's docstring, then its classes' and functions' docstrings with their qualified names
as headings. The order is fixed, so a Python version always gives the same text.
After the docstrings come the language reference topics of `pydoc_data.topics` (what
`help("if")` prints) and then the source files themselves, for runs that need more tokens.
`token_sequences` packs it into `[n, seq]` rows, each opened by the tokenizer's BOS token.

`prose_text()` reads English prose that the system package manager installs: the `fortunes`
package's quotations, stories and definitions (Debian: `apt-get install fortunes`;
`benchmarks/setup_text.sh`), one document per entry; `mixed_text()` alternates it with the
docstrings, for SAEs that should see English narrative as well as code documentation.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo",
         "__pycache__", "ensurepip", "tkinter", "config-3"}  # fmt: skip


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's `.py` files, sorted, without tests and tools."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP or p.startswith("config-") or p.startswith("test_") for p in parts):
            continue
        files.append(path)
    return files


def _docstrings(tree: ast.Module, module: str) -> Iterator[str]:
    doc = ast.get_docstring(tree)
    if doc:
        yield f"{module}\n\n{doc}"

    def walk(node, prefix):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc and not child.name.startswith("_"):
                    yield f"{module}.{name}\n\n{doc}"
                if isinstance(child, ast.ClassDef):
                    yield from walk(child, f"{name}.")

    yield from walk(tree, "")


def _documents(root: Path) -> Iterator[str]:
    files = stdlib_files(root)
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        yield from _docstrings(tree, module.removesuffix(".__init__"))
    topics = root / "pydoc_data" / "topics.py"
    if topics.is_file():
        tree = ast.parse(topics.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                pairs = zip(node.keys, node.values)
                for key, value in sorted(pairs, key=lambda kv: str(getattr(kv[0], "value", ""))):
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        yield value.value
                break
    for path in files:
        if path.name != "topics.py":
            yield path.read_text(encoding="utf-8", errors="replace")


def stdlib_text(root: str | Path | None = None, *, max_chars: int | None = None) -> Iterator[str]:
    """The standard library's docstrings (one document per module, class or function), then
    its reference topics, then its source files, in a fixed order (at most `max_chars`
    characters in all)."""
    total = 0
    for doc in _documents(Path(root or sysconfig.get_paths()["stdlib"])):
        yield doc
        total += len(doc)
        if max_chars is not None and total >= max_chars:
            return


FORTUNES = Path("/usr/share/games/fortunes")


def prose_text(root: str | Path | None = None) -> Iterator[str]:
    """The entries of the `fortunes` package's English files (`%`-separated; sorted by file
    name; the `.dat` indices, links and the offensive `off/` set left out), in a fixed order.
    Raises `FileNotFoundError` naming the install command when the package is missing."""
    root = Path(root or FORTUNES)
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.is_symlink()
                   and p.suffix == "")  # fmt: skip
    if not files:
        raise FileNotFoundError(
            f"no fortune files in {root}: install English prose with "
            "`apt-get install fortunes` (benchmarks/setup_text.sh)"
        )
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            entry = entry.strip()
            if entry:
                yield entry


def mixed_text(root: str | Path | None = None) -> Iterator[str]:
    """`prose_text` and `stdlib_text`, one document of each in turn, until both run out."""
    streams = [iter(prose_text(root)), iter(stdlib_text())]
    while streams:
        for stream in list(streams):
            doc = next(stream, None)
            if doc is None:
                streams.remove(stream)
            else:
                yield doc


def token_sequences(tokenizer, seq_len: int, n: int, *, skip: int = 0, texts=None) -> np.ndarray:
    """`[n, seq_len]` int32 rows of the concatenated documents (each ended by EOS when the
    tokenizer has one), each row opened by BOS: position 0 is always BOS. `skip` rows are
    passed over first (held-out rows come after the training rows)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (BOS and one token); got {seq_len}")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("this tokenizer has no BOS token; token_sequences opens every row by it")
    eos = tokenizer.eos_token_id
    body = seq_len - 1
    need = (n + skip) * body
    chunks: list[np.ndarray] = []
    have = 0
    for doc in texts if texts is not None else stdlib_text():
        ids = tokenizer.encode(doc, add_special_tokens=False)
        if eos is not None:
            ids = np.append(ids, np.int32(eos))
        chunks.append(ids)
        have += len(ids)
        if have >= need:
            break
    if have < need:
        raise ValueError(
            f"the corpus holds {have} tokens; {n + skip} rows of {seq_len} need {need}"
        )
    stream = np.concatenate(chunks)[skip * body : need].reshape(n, body)
    return np.concatenate([np.full((n, 1), bos, np.int32), stream.astype(np.int32)], axis=1)
