"""RASP benchmark programs with known circuits: what tracr compiles for `jaxcirc.io.tracr_case`.

Each `TracrCase` names a RASP program (built on demand, so importing this module never needs
tracr), the vocabulary and maximum length it is compiled for, and two input distributions: `sample`
draws clean inputs, `corrupt` turns clean inputs into counterfactual ones of the same length (for
patching: a resample from the same distribution unless the case says otherwise). Inputs are lists of
vocabulary values without the BOS token; `jaxcirc.io.tracr_case(name)` returns the compiled,
converted model, its ground-truth circuit, and a `TracrCaseInfo` that encodes them to token ids.

The programs re-express ideas from tracr's `compiler/lib.py` (Lindner et al. 2023) and from
RASP (Weiss et al. 2021); vocabularies and lengths are small so every input can be checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

Rows = list[list[Any]]


@dataclasses.dataclass(frozen=True)
class TracrCase:
    """One benchmark: a RASP program, what it is compiled for, and its input distributions.

    `program()` builds the RASP expression (needs tracr); `vocab` and `max_len` are passed to
    `compile_rasp_to_model` with `compiler_bos`; `output` is the encoding of the program's
    output (`"categorical"`: the converted model has one logit per output value;
    `"numerical"`: logit column 0 holds the value). `sample(rng, n, length)` draws `n` clean
    inputs of `length` tokens; `corrupt(rng, rows)` returns one counterfactual per clean row,
    of the same length; `corruption` says which.
    """

    name: str
    description: str
    program: Callable[[], Any]
    vocab: tuple
    max_len: int
    output: Literal["categorical", "numerical"]
    sample: Callable[[np.random.Generator, int, int], Rows]
    corrupt: Callable[[np.random.Generator, Rows], Rows]
    corruption: str = "independent resample from the clean distribution"
    compiler_bos: str = "BOS"

    def pairs(self, n: int, *, seed: int = 0, length: int | None = None) -> tuple[Rows, Rows]:
        """`n` clean inputs and their counterfactuals, of `length` (default `max_len`) tokens."""
        length = self.max_len if length is None else length
        if not 1 <= length <= self.max_len:
            raise ValueError(f"length {length} is outside [1, max_len={self.max_len}]")
        rng = np.random.default_rng(seed)
        clean = self.sample(rng, n, length)
        return clean, self.corrupt(rng, clean)


# --- samplers ----------------------------------------------------------------------------------


def _uniform(vocab: Sequence) -> Callable[[np.random.Generator, int, int], Rows]:
    def sample(rng, n, length):
        idx = rng.integers(0, len(vocab), size=(n, length))
        return [[vocab[i] for i in row] for row in idx]

    return sample


def _permutations(vocab: Sequence) -> Callable[[np.random.Generator, int, int], Rows]:
    """Distinct tokens (what sort_unique assumes): a random arrangement of a random subset."""

    def sample(rng, n, length):
        if length > len(vocab):
            raise ValueError(f"cannot draw {length} distinct tokens from {len(vocab)}")
        return [[vocab[i] for i in rng.permutation(len(vocab))[:length]] for _ in range(n)]

    return sample


def _resample(sample):
    def corrupt(rng, rows):
        return sample(rng, len(rows), len(rows[0])) if rows else []

    return corrupt


def _flip_one(vocab: Sequence):
    """Counterfactual: one random position changed to a different token."""

    def corrupt(rng, rows):
        out = []
        for row in rows:
            row = list(row)
            i = rng.integers(len(row))
            others = [v for v in vocab if v != row[i]]
            row[i] = others[rng.integers(len(others))]
            out.append(row)
        return out

    return corrupt


def _brackets(rng, n, length):
    """Bracket strings: even rows are walks that never dip below zero and close what they can
    (balanced when the length allows), odd rows uniform."""
    rows = []
    for k in range(n):
        if k % 2 == 0:
            depth, row = 0, []
            for i in range(length):
                left = length - i
                close = depth > 0 and (depth >= left or rng.random() < 0.5)
                row.append(")" if close else "(")
                depth += -1 if close else 1
            rows.append(row)
        else:
            rows.append([("(", ")")[b] for b in rng.integers(0, 2, length)])
    return rows


# --- programs (tracr is imported only when a program is built) ---------------------------------


def _rasp():
    try:
        from tracr.rasp import rasp
    except ImportError as e:  # pragma: no cover - exercised only without tracr
        raise ImportError(
            "building a RASP program needs tracr: pip install tracr-pypi "
            "(or jaxcirc[tracr]); the cached models in jaxcirc/data/tracr need no tracr"
        ) from e
    return rasp


def _length(rasp):
    """Number of tokens: the width of an all-true selector."""
    everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all")
    return rasp.SelectorWidth(everything).named("length")


def _shift(rasp, sop, offset: int, name: str):
    """`sop` read `offset` positions back (default None where that is before the start)."""
    back = rasp.Map(lambda i: i - offset, rasp.indices).named(f"{name}_index")
    sel = rasp.Select(rasp.indices, back, rasp.Comparison.EQ).named(f"{name}_select")
    return rasp.Aggregate(sel, sop).named(name)


def _prefix_mean(rasp, bools, name: str):
    """Numerical mean of `bools` over positions 0..i."""
    prefix = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named(f"{name}_prefix")
    return rasp.numerical(rasp.Aggregate(prefix, bools, default=0)).named(name)


def _indicator(rasp, sop, value, name: str):
    return rasp.numerical(rasp.Map(lambda t: 1 if t == value else 0, sop)).named(name)


def program_length():
    return _length(_rasp())


def program_reverse():
    rasp = _rasp()
    opposite = rasp.SequenceMap(lambda n, i: n - i - 1, _length(rasp), rasp.indices)
    flip = rasp.Select(rasp.indices, opposite.named("opposite"), rasp.Comparison.EQ)
    return rasp.Aggregate(flip.named("flip"), rasp.tokens).named("reverse")


def program_hist():
    rasp = _rasp()
    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_token")
    return rasp.SelectorWidth(same).named("hist")


def program_count_less():
    rasp = _rasp()
    less = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT).named("smaller_token")
    return rasp.SelectorWidth(less).named("count_less")


def _sort_by(rasp, vals, keys, name: str):
    """`vals` ordered by `keys` (distinct keys): each position finds the one with rank i."""
    smaller = rasp.Select(keys, keys, rasp.Comparison.LT).named(f"{name}_smaller")
    rank = rasp.SelectorWidth(smaller).named(f"{name}_rank")
    fetch = rasp.Select(rank, rasp.indices, rasp.Comparison.EQ).named(f"{name}_fetch")
    return rasp.Aggregate(fetch, vals).named(name)


def program_sort_unique():
    rasp = _rasp()
    return _sort_by(rasp, rasp.tokens, rasp.tokens, "sort_unique")


def program_sort(max_len: int = 4):
    """Stable sort with repeats: ties broken by position (key + index / (max_len + 1))."""
    rasp = _rasp()
    keys = rasp.SequenceMap(lambda t, i: t + i / (max_len + 1), rasp.tokens, rasp.indices)
    return _sort_by(rasp, rasp.tokens, keys.named("sort_key"), "sort")


def program_prev_token():
    rasp = _rasp()
    return _shift(rasp, rasp.tokens, 1, "prev_token")


def program_pair_sum():
    rasp = _rasp()
    prev = _shift(rasp, rasp.tokens, 1, "prev_token")
    return rasp.SequenceMap(lambda a, b: a + b, rasp.tokens, prev).named("pair_sum")


def program_frac_prevs():
    rasp = _rasp()
    return _prefix_mean(rasp, _indicator(rasp, rasp.tokens, "x", "is_x"), "frac_prevs")


def program_mean():
    rasp = _rasp()
    value = rasp.numerical(rasp.Map(lambda t: t / 4, rasp.tokens)).named("value")
    everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all")
    return rasp.numerical(rasp.Aggregate(everything, value, default=0)).named("mean")


def _balance(rasp):
    opens = _prefix_mean(rasp, _indicator(rasp, rasp.tokens, "(", "is_open"), "frac_open")
    closes = _prefix_mean(rasp, _indicator(rasp, rasp.tokens, ")", "is_close"), "frac_close")
    return rasp.numerical(rasp.LinearSequenceMap(opens, closes, 1, -1)).named("balance")


def program_pair_balance():
    return _balance(_rasp())


def program_balanced():
    """Is the whole bracket string balanced (shuffle-Dyck with one bracket type)? The same
    answer at every position: no prefix dips below zero and the final balance is zero."""
    rasp = _rasp()
    balance = _balance(rasp)
    dips = rasp.numerical(rasp.Map(lambda b: 1 if b < 0 else 0, balance)).named("dips")
    everything = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE).named("all")
    any_dip = rasp.numerical(rasp.Aggregate(everything, dips, default=0)).named("any_dip")
    no_dip = rasp.categorical(rasp.Map(lambda x: x == 0, any_dip)).named("no_dip")
    last = rasp.Map(lambda n: n - 1, _length(rasp)).named("last_index")
    at_last = rasp.Select(rasp.indices, last, rasp.Comparison.EQ).named("at_last")
    ends_zero = rasp.categorical(rasp.Map(lambda b: b == 0, balance)).named("ends_zero")
    final_zero = rasp.Aggregate(at_last, ends_zero).named("final_zero")
    both = rasp.SequenceMap(lambda a, b: bool(a and b), no_dip, final_zero)
    return both.named("balanced")


def program_detect_ab():
    """1 where the token is "b" and the one before it is "a" (the pattern "ab" ends here)."""
    rasp = _rasp()
    prev = _shift(rasp, rasp.tokens, 1, "prev_token")
    hit = rasp.SequenceMap(lambda p, t: int(p == "a" and t == "b"), prev, rasp.tokens)
    return hit.named("detect_ab")


def _case(name, description, program, vocab, max_len, output, sample=None, corrupt=None, **kw):
    sample = _uniform(vocab) if sample is None else sample
    corrupt = _resample(sample) if corrupt is None else corrupt
    return TracrCase(
        name, description, program, tuple(vocab), max_len, output, sample, corrupt, **kw
    )


_ABC = ("a", "b", "c")
_INTS = (1, 2, 3)

TRACR_CASES: dict[str, TracrCase] = {
    c.name: c
    for c in (
        _case(
            "length", "number of tokens, at every position", program_length, _ABC, 5, "categorical"
        ),
        _case("reverse", "the sequence reversed", program_reverse, _ABC, 5, "categorical"),
        _case(
            "hist",
            "how often each position's token occurs",
            program_hist,
            _ABC,
            4,
            "categorical",
            corrupt=_flip_one(_ABC),
            corruption="one position changed",
        ),
        _case(
            "count_less",
            "how many tokens are smaller than this one",
            program_count_less,
            (1, 2, 3, 4),
            4,
            "categorical",
            corrupt=_flip_one((1, 2, 3, 4)),
            corruption="one position changed",
        ),
        _case(
            "sort_unique",
            "distinct tokens in ascending order",
            program_sort_unique,
            (1, 2, 3, 4),
            4,
            "categorical",
            sample=_permutations((1, 2, 3, 4)),
            corruption="an independent draw of distinct tokens",
        ),
        _case(
            "sort",
            "tokens in ascending order, repeats allowed",
            program_sort,
            _INTS,
            4,
            "categorical",
        ),
        _case(
            "prev_token", "the token one position back", program_prev_token, _ABC, 4, "categorical"
        ),
        _case(
            "pair_sum",
            "this token plus the previous one",
            program_pair_sum,
            (0, 1, 2),
            4,
            "categorical",
        ),
        _case(
            "detect_ab",
            "1 where the bigram 'ab' ends",
            program_detect_ab,
            _ABC,
            4,
            "categorical",
            corrupt=_flip_one(_ABC),
            corruption="one position changed",
        ),
        _case(
            "frac_prevs",
            "fraction of 'x' among the tokens so far",
            program_frac_prevs,
            ("w", "x", "y"),
            5,
            "numerical",
            corrupt=_flip_one(("w", "x", "y")),
            corruption="one position changed",
        ),
        _case(
            "mean",
            "mean of token / 4 over the sequence",
            program_mean,
            (0, 1, 2, 3),
            4,
            "numerical",
        ),
        _case(
            "pair_balance",
            "fraction of '(' minus fraction of ')' so far",
            program_pair_balance,
            ("(", ")"),
            5,
            "numerical",
            sample=_brackets,
        ),
        _case(
            "balanced",
            "whether the bracket string is balanced",
            program_balanced,
            ("(", ")"),
            4,
            "categorical",
            sample=_brackets,
            corrupt=_flip_one(("(", ")")),
            corruption="one bracket flipped",
        ),
    )
}
TRACR_CASE_NAMES: tuple[str, ...] = tuple(TRACR_CASES)
