"""Python code without downloads, and binary next-token tasks in the style of Gao et al. 2025
("Weight-sparse transformers have interpretable circuits", arXiv 2511.13653).

`python_source()` yields the standard library's own `.py` files (the sorted list of
`_corpus.stdlib_files`), each file one document. The tasks each pair a clean prompt with a
contrast prompt of the same token length that differs in the one thing the answer depends on:

- `quote_task`: close a string with its quote type (`x = "abc` -> `"`, `x = 'abc` -> `'`);
- `bracket_task`: nesting depth (`x = f(g(a, b` -> `))`, `x = f + g(a, b` -> `)`), and
  `square_bracket_task`, the paper's form with `]]` vs `]`;
- `set_or_string_task`: what a variable holds (`x = set()` ... `x` -> `.` for `.add`,
  `x = str()` ... `x` -> ` +=`).

Each returns a `Task` whose metric is the logit difference answer - distractor at the last
token; an answer that is not one token of the tokenizer is a `ValueError` showing its split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ._corpus import stdlib_files
from ._task import Task, as_rng, encode, from_strings, single_token

VARIABLES = ("x", "name", "value", "text", "key", "line", "result", "data", "item", "path",
             "out", "buf", "word", "label", "tag", "msg")  # fmt: skip
WORDS = ("hello", "world", "file", "name", "data", "value", "error", "path", "user", "line",
         "text", "mode", "type", "info", "index", "count", "utf", "ascii", "default",
         "main")  # fmt: skip
ITEMS = ("a", "b", "c", "n", "i", "x", "y", "0", "1", "2", "3", "10", "None", "True")


def python_source(root: str | Path | None = None, *, max_chars: int | None = None) -> Iterator[str]:
    """The standard library's `.py` files as text, one per document, in sorted path order (tests
    and tools skipped, see `_corpus.stdlib_files`), at most `max_chars` characters in all."""
    total = 0
    for path in stdlib_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        if max_chars is not None and total + len(text) > max_chars:
            if total == 0:
                yield text[:max_chars]
            return
        total += len(text)
        yield text


def python_rows(tokenizer, seq: int, n_train: int, n_eval: int, *, hold_out_every: int = 25):
    """`(train [≤ n_train, seq], held-out [n_eval, seq], held-out file names)`: the standard
    library's source as BOS-opened rows (`token_sequences`); every `hold_out_every`-th file of
    the sorted list is held out. When the other files hold fewer than `n_train` rows, all of
    them are returned (training then repeats them)."""
    import sysconfig

    from ._corpus import token_sequences

    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    read = lambda f: f.read_text(encoding="utf-8", errors="replace")  # as python_source()
    train_files = [f for i, f in enumerate(files) if i % hold_out_every]
    held = files[::hold_out_every]
    try:
        train = token_sequences(tokenizer, seq, n_train, texts=map(read, train_files))
    except ValueError:  # the corpus is shorter than asked: every row it has
        texts = [read(f) for f in train_files]
        total = sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts)
        train = token_sequences(tokenizer, seq, total // (seq - 1), texts=texts)
    held_rows = token_sequences(tokenizer, seq, n_eval, texts=map(read, held))
    return train, held_rows, [f.relative_to(root).as_posix() for f in held]


def _generate(tokenizer, n: int, seed, make, answers, name: str) -> Task:
    """`n` rows from `make(rng) -> (clean, contrast)`, both orders of the pair (half the rows
    answer `answers[0]`, half `answers[1]`), drawing again when the two differ in length."""
    if not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"n must be an even int >= 2 (clean/contrast in both orders); got {n!r}")
    for a in answers:  # a clear error before any sampling
        single_token(tokenizer, a, f"{name} answer")
    rng = as_rng(seed)
    rows, tries = [], 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n:
            raise ValueError(
                f"{name}: could not find {n} prompt pairs of equal token length with this "
                f"tokenizer (found {len(rows)})"
            )
        first, second = make(rng)
        if len(encode(tokenizer, first)) != len(encode(tokenizer, second)):
            continue
        if len(rows) % 4 < 2:
            rows.append((first, second, answers[0], answers[1]))
        else:
            rows.append((second, first, answers[1], answers[0]))
    return from_strings(tokenizer, rows, name=name)


def _pick(rng, choices):
    return choices[int(rng.integers(len(choices)))]


def quote_task(tokenizer, n: int = 64, *, seed=0) -> Task:
    """Close a string with the quote that opened it: `x = "hello world` -> `"` (contrast
    `x = 'hello world` -> `'`), Gao et al.'s `single_double_quote`."""

    def make(rng):
        var = _pick(rng, VARIABLES)
        words = " ".join(_pick(rng, WORDS) for _ in range(int(rng.integers(1, 4))))
        return f'{var} = "{words}', f"{var} = '{words}"

    return _generate(tokenizer, n, seed, make, ('"', "'"), "quote")


FUNCTIONS = ("len", "str", "int", "list", "sorted", "max", "min", "sum", "print", "repr", "tuple",
             "set", "abs", "f", "g", "join", "get", "run")  # fmt: skip


def bracket_task(tokenizer, n: int = 64, *, seed=0) -> Task:
    """Bracket nesting depth: `x = f(g(a, b` -> `))` (contrast `x = f + g(a, b` -> `)`). Gao et
    al.'s `bracket_counting` asks `]` vs `]]`; in the standard library `]]` is rare (the Python
    BPE's last merge, about 100 times in 3.5 M tokens) while `))` is common, so the depth
    question is asked of parentheses here (`square_bracket_task` is the paper's form)."""

    def make(rng):
        var = _pick(rng, VARIABLES)
        f, g = _pick(rng, FUNCTIONS), _pick(rng, FUNCTIONS)
        items = ", ".join(_pick(rng, ITEMS) for _ in range(int(rng.integers(1, 5))))
        return f"{var} = {f}({g}({items}", f"{var} = {f} + {g}({items}"

    return _generate(tokenizer, n, seed, make, ("))", ")"), "bracket")


def square_bracket_task(tokenizer, n: int = 64, *, seed=0) -> Task:
    """Square-bracket nesting depth, Gao et al.'s `bracket_counting`: `x = [[a, b` -> `]]`
    (contrast `x = ([a, b` -> `]`)."""

    def make(rng):
        var = _pick(rng, VARIABLES)
        items = ", ".join(_pick(rng, ITEMS) for _ in range(int(rng.integers(1, 5))))
        return f"{var} = [[{items}", f"{var} = ([{items}"

    return _generate(tokenizer, n, seed, make, ("]]", "]"), "square_bracket")


def set_or_string_task(tokenizer, n: int = 64, *, seed=0) -> Task:
    """Track what a variable holds: `x = set()` then a loop whose body starts `x` -> `.` (as in
    `x.add(...)`); contrast `x = str()` -> ` +=`. Gao et al.'s `set_or_string`."""

    def make(rng):
        loop = _pick(rng, ("w", "item", "c", "line", "k"))
        source = _pick(rng, ("words", "lines", "items", "data", "text"))
        var = _pick(rng, tuple(v for v in VARIABLES if v not in (loop, source)))
        body = f"\nfor {loop} in {source}:\n    {var}"
        return f"{var} = set(){body}", f"{var} = str(){body}"

    return _generate(tokenizer, n, seed, make, (".", " +="), "set_or_string")


PYTHON_TASKS = {
    "quote": quote_task,
    "bracket": bracket_task,
    "set_or_string": set_or_string_task,
    "square_bracket": square_bracket_task,
}


def python_tasks(tokenizer, n: int, seed=0, names=tuple(PYTHON_TASKS)) -> dict[str, Task]:
    """`{name: Task}` of the Python-code tasks `names`, `n` prompts each."""
    unknown = [x for x in names if x not in PYTHON_TASKS]
    if unknown:
        raise ValueError(f"unknown Python task {unknown[0]!r}; choose from {sorted(PYTHON_TASKS)}")
    return {name: PYTHON_TASKS[name](tokenizer, n, seed=seed) for name in names}
