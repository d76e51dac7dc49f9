"""The `Task` value, user-defined tasks, and the tokenizer checks every generator shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..metrics import bind, logit_diff
from ..models._site import nearest


class Task(eqx.Module):
    """Clean and corrupt prompts, right-padded to one length, their answers and a default metric.

    **Fields:**

    - `clean`, `corrupt`: `[batch, seq]` token ids; example `i` of one is paired with example
      `i` of the other, and the two have the same token length.
    - `lengths`: `[batch]` each pair's token length (default: `seq` for all). Shorter prompts are
      padded on the right with the tokenizer's pad id (else its EOS id, else 0): in a causal
      model a token after the last one cannot change any earlier position, so a padded prompt's
      activations and logits up to `lengths - 1` are those of the prompt alone, and no attention
      mask is needed. Metrics read each prompt at its own last position, `lengths - 1`.
    - `answer`, `distractor`: `[batch]` token ids (the right next token on the clean prompt and
      the competing one), or id sets `[batch, k]` padded with `-1`.
    - `metric`: `logits [batch, seq, d_vocab] -> scalar`, an `eqx.Module` (see
      `jaxcirc.metrics.bind`), ready for `jaxcirc.patching.sweep(model, task.clean,
      task.corrupt, task.metric, ...)`.
    - `positions`: per-example metadata, e.g. `{"io": [batch], "s1": ..., "s2": ...}` for IOI or
      `{"subject_mask": [batch, seq]}` for factual recall (`False` on padding).
    - `prompts`, `corrupt_prompts`: the strings; `labels`: one label per position of the padded
      length (the longest clean prompt's tokens unless the generator knows better); `name`: the
      generator.
    """

    clean: Int[Array, "batch seq"]
    corrupt: Int[Array, "batch seq"]
    answer: Int[Array, "batch ..."]
    distractor: Int[Array, "batch ..."]
    metric: Callable
    positions: dict[str, Array]
    prompts: tuple[str, ...] = eqx.field(static=True)
    corrupt_prompts: tuple[str, ...] = eqx.field(static=True)
    labels: tuple[str, ...] = eqx.field(static=True)
    name: str = eqx.field(static=True, default="task")
    lengths: Int[Array, " batch"] | None = eqx.field(default=None, kw_only=True)

    def __post_init__(self):
        if self.lengths is None and jnp.ndim(self.clean) == 2:
            self.lengths = jnp.full(self.clean.shape[:1], self.clean.shape[1], jnp.int32)

    def __check_init__(self):
        if self.clean.ndim != 2 or self.clean.shape != self.corrupt.shape:
            raise ValueError(
                f"clean {list(self.clean.shape)} and corrupt {list(self.corrupt.shape)} must "
                "have the same shape [batch, seq]"
            )
        batch = self.clean.shape[0]
        for what, ids in (("answer", self.answer), ("distractor", self.distractor)):
            if ids.ndim not in (1, 2) or ids.shape[0] != batch:
                raise ValueError(
                    f"{what} must have shape [batch] or [batch, k] with batch = {batch}; "
                    f"got {list(ids.shape)}"
                )
        for what, strings in (("prompts", self.prompts), ("corrupt_prompts", self.corrupt_prompts)):
            if strings and len(strings) != batch:
                raise ValueError(f"{len(strings)} {what} for a batch of {batch}")
        if self.labels and len(self.labels) != self.clean.shape[1]:
            raise ValueError(f"{len(self.labels)} labels for {self.clean.shape[1]} positions")
        check_lengths(self.lengths, *self.clean.shape)

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def seq(self) -> int:
        return self.clean.shape[1]

    def __len__(self) -> int:
        return self.batch

    def evaluate(self, model) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """`(metric on the clean run, metric on the corrupt run)` of `model` (vmapped, jitted).

        The two baselines that `jaxcirc.metrics.normalize(task.metric, *task.evaluate(model))`
        needs.
        """
        return _evaluate(model, self.clean, self.metric), _evaluate(
            model, self.corrupt, self.metric
        )


@eqx.filter_jit
def _evaluate(model, tokens, metric):
    return metric(jax.vmap(model)(tokens))


# ---------------------------------------------------------------------------------------------
# Tokenizer helpers shared by the generators
# ---------------------------------------------------------------------------------------------


def hint(value, choices) -> str:
    """` (did you mean 'x'?)`, trying a case-insensitive match before the nearest spelling."""
    same = [c for c in choices if str(c).lower() == str(value).lower()]
    return f" (did you mean {same[0]!r}?)" if same else nearest(value, choices)


def encode(tokenizer, text: str) -> list[int]:
    """A prompt's token ids, with the special tokens the tokenizer adds (e.g. a BOS)."""
    return [int(i) for i in tokenizer.encode(text)]


def pieces(tokenizer, text: str) -> list[int]:
    """Token ids of a fragment, no special tokens."""
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def try_single_token(tokenizer, text: str) -> int | None:
    ids = pieces(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def single_token(tokenizer, text: str, what: str = "answer") -> int:
    """The id of `text` if it is exactly one token; else a `ValueError` showing its split."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str; got {type(text).__name__} {text!r}")
    ids = pieces(tokenizer, text)
    if len(ids) == 1:
        return ids[0]
    split = [tokenizer.decode([i]) for i in ids]
    suggestion = ""
    for alt in (" " + text.lstrip(), text.lstrip()):
        if alt != text and try_single_token(tokenizer, alt) is not None:
            suggestion = f" (did you mean {alt!r}? it is one token)"
            break
    raise ValueError(
        f"{what} {text!r} is {len(ids)} tokens for this tokenizer ({split}); use a single-token "
        f"{what}{suggestion}"
    )


def str_tokens(tokenizer, ids) -> tuple[str, ...]:
    return tuple(tokenizer.decode([int(i)]) for i in ids)


def check_lengths(lengths, batch: int, seq: int) -> None:
    """Raise unless `lengths` is `[batch]` ints in `1..seq` (values checked when concrete)."""
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"lengths must be one int token count per prompt, [batch] = [{batch}]; got shape "
            f"{list(lengths.shape)} and dtype {lengths.dtype}"
        )
    try:
        values = np.asarray(lengths)
    except jax.errors.TracerArrayConversionError:
        return
    bad = np.flatnonzero((values < 1) | (values > seq))
    if bad.size:
        raise ValueError(
            f"lengths[{int(bad[0])}] = {int(values[bad[0]])} is outside 1..seq = 1..{seq} "
            f"(nearest valid: {int(np.clip(values[bad[0]], 1, seq))})"
        )


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad id, else its EOS id, else 0 (pads are never read)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> Int[Array, "batch seq"]:
    """Token id rows right-padded with `value` to the longest."""
    seq = max(len(r) for r in rows)
    return jnp.asarray([[*r, *[value] * (seq - len(r))] for r in rows], jnp.int32)


def longest_labels(tokenizer, rows: Sequence[Sequence[int]]) -> tuple[str, ...]:
    """Position labels: the tokens of the (first) longest row."""
    return str_tokens(tokenizer, max(rows, key=len))


def last_position_metric(fn, lengths, **kwargs):
    """`bind(fn, **kwargs)` read at each prompt's last token, `position=lengths - 1`."""
    return bind(fn, **kwargs, position=jnp.asarray(lengths, jnp.int32) - 1)


# ---------------------------------------------------------------------------------------------
# User-defined tasks
# ---------------------------------------------------------------------------------------------


def from_strings(
    tokenizer, rows: Sequence[tuple[str, str, str, str]], *, name: str = "custom"
) -> Task:
    """A task from rows `(clean, corrupt, answer, distractor)` of strings.

    `answer` and `distractor` must each be one token (mind the leading space: `" Paris"`);
    each row's clean and corrupt prompts must have the same number of tokens; rows of different
    lengths are right-padded (see `Task`). The metric is the logit difference at each prompt's
    last token. Raises `ValueError` naming the offending row.
    """
    rows = list(rows)
    label = "" if name == "custom" else f"{name} "
    if not rows:
        raise ValueError("from_strings needs at least one (clean, corrupt, answer, distractor) row")
    clean, corrupt, answer, distractor = [], [], [], []
    for i, row in enumerate(rows):
        if len(row) != 4:
            raise ValueError(
                f"row {i} has {len(row)} fields; expected (clean, corrupt, answer, distractor)"
            )
        c, k, a, d = row
        ci, ki = encode(tokenizer, c), encode(tokenizer, k)
        if len(ci) != len(ki):
            raise ValueError(
                f"row {i}: clean {c!r} is {len(ci)} tokens but corrupt {k!r} is {len(ki)}; "
                f"pair prompts of equal token length (clean: {list(str_tokens(tokenizer, ci))}, "
                f"corrupt: {list(str_tokens(tokenizer, ki))})"
            )
        clean.append(ci)
        corrupt.append(ki)
        answer.append(single_token(tokenizer, a, f"{label}answer"))
        distractor.append(single_token(tokenizer, d, f"{label}distractor"))
    answer, distractor = jnp.asarray(answer, jnp.int32), jnp.asarray(distractor, jnp.int32)
    lengths = jnp.asarray([len(c) for c in clean], jnp.int32)
    fill = pad_id(tokenizer)
    return Task(
        clean=pad_rows(clean, fill),
        corrupt=pad_rows(corrupt, fill),
        answer=answer,
        distractor=distractor,
        metric=last_position_metric(logit_diff, lengths, answer=answer, distractor=distractor),
        positions={},
        prompts=tuple(r[0] for r in rows),
        corrupt_prompts=tuple(r[1] for r in rows),
        labels=longest_labels(tokenizer, clean),
        name=name,
        lengths=lengths,
    )


def as_seed(seed) -> int:
    """An int seed from an int or a `jax.random` key."""
    if isinstance(seed, jax.Array):
        seed = int(jax.random.randint(seed, (), 0, 2**31 - 1))
    if not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a jax.random key; got {type(seed).__name__}")
    return int(seed)


def as_rng(seed) -> np.random.Generator:
    return np.random.default_rng(as_seed(seed))
