"""Greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?").

"The war lasted from the year 1732 to the year 17" -> a two-digit year `> 32`. The corrupt
prompt starts at `1701`, so no year token can be ruled out; the metric is the probability
difference `sum_{y > YY} p(y) - sum_{y <= YY} p(y)` over the two-digit tokens `00`..`99`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..metrics import prob_diff
from ._task import (
    Task,
    as_rng,
    encode,
    last_position_metric,
    longest_labels,
    pad_id,
    pad_rows,
    pieces,
    str_tokens,
    try_single_token,
)

NOUNS = (
    "war",
    "conflict",
    "dispute",
    "campaign",
    "expedition",
    "siege",
    "reign",
    "dynasty",
    "journey",
    "voyage",
    "marriage",
    "trial",
    "investigation",
    "project",
    "program",
    "treaty",
    "strike",
    "occupation",
    "rebellion",
    "revolt",
    "crisis",
    "drought",
    "famine",
    "plague",
    "epidemic",
    "boom",
    "depression",
    "recession",
    "tour",
    "pilgrimage",
    "construction",
    "friendship",
    "partnership",
    "alliance",
    "empire",
    "kingdom",
    "revolution",
    "invasion",
    "blockade",
    "truce",
)
CENTURY = "17"
BAD_START = 1  # the corrupt prompts start at 1701


def _template(noun: str, yy: int) -> str:
    return f"The {noun} lasted from the year {CENTURY}{yy:02d} to the year {CENTURY}"


def year_tokens(tokenizer) -> np.ndarray:
    """Token ids of `"00"`..`"99"`; `ValueError` if a two-digit year is not one token."""
    ids = [try_single_token(tokenizer, f"{y:02d}") for y in range(100)]
    bad = [y for y, i in enumerate(ids) if i is None]
    if bad:
        y = f"{bad[0]:02d}"
        split = list(str_tokens(tokenizer, pieces(tokenizer, y)))
        raise ValueError(
            f"greater_than needs every two-digit year '00'..'99' to be one token; this "
            f"tokenizer splits {len(bad)} of them, e.g. {y!r} into {split} (the task is "
            "defined for tokenizers like GPT-2's, which write 1732 as '17' + '32')"
        )
    return np.asarray(ids, np.int32)


def greater_than(tokenizer, n: int, *, seed=0) -> Task:
    """`n` greater-than prompts (Hanna et al. 2023): "The {noun} lasted from the year 17YY to
    the year 17".

    Nouns are one token with a leading space; start years `YY` are `02`..`98` such that the
    prompt tokenises as `... 17 | YY | to the year 17` (other nouns and years are dropped).
    Corrupt prompts use `YY = 01`. `answer` holds the year tokens `> YY` and `distractor` those
    `<= YY`, as sets `[batch, 100]` padded with `-1`; the metric is `prob_diff` on them.
    `positions`: `year` (position of the `YY` token) and `yy` (its value). Prompts are all
    one length for tokenizers like GPT-2's; should some differ, they are right-padded (see
    `Task`) and the metric reads each at its last token.

    **Raises:** `ValueError` if the tokenizer does not write the years as two-digit tokens
    (e.g. digit-by-digit tokenizers such as Llama 3's or SmolLM2's).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"greater_than: n must be a positive int; got {n!r}")
    years = year_tokens(tokenizer)
    nouns = [w for w in NOUNS if try_single_token(tokenizer, " " + w) is not None]
    valid = []  # (noun, yy, position of the YY token)
    for noun in nouns:
        head = encode(tokenizer, f"The {noun} lasted from the year {CENTURY}")
        tail = pieces(tokenizer, f" to the year {CENTURY}")
        for yy in (BAD_START, *range(2, 99)):
            if encode(tokenizer, _template(noun, yy)) == [*head, int(years[yy]), *tail]:
                valid.append((noun, yy, len(head)))
    ok_nouns = {v[0] for v in valid if v[1] == BAD_START}
    candidates = [v for v in valid if v[0] in ok_nouns and v[1] != BAD_START]
    if not candidates:
        example = _template("war", 32)
        raise ValueError(
            "greater_than: no (noun, year) prompt tokenises as '... 17 | YY | to the year 17' "
            f"for this tokenizer; e.g. {example!r} is "
            f"{list(str_tokens(tokenizer, encode(tokenizer, example)))}"
        )
    rng = as_rng(seed)
    chosen = [candidates[i] for i in rng.integers(len(candidates), size=n)]
    clean = [encode(tokenizer, _template(noun, yy)) for noun, yy, _ in chosen]
    corrupt = [encode(tokenizer, _template(noun, BAD_START)) for noun, _, _ in chosen]
    lengths = jnp.asarray([len(c) for c in clean], jnp.int32)  # = the corrupt's (one YY token)
    yy = np.asarray([c[1] for c in chosen], np.int32)
    above = np.arange(100)[None, :] > yy[:, None]
    answer = jnp.asarray(np.where(above, years[None, :], -1), jnp.int32)
    distractor = jnp.asarray(np.where(~above, years[None, :], -1), jnp.int32)
    fill = pad_id(tokenizer)
    return Task(
        clean=pad_rows(clean, fill),
        corrupt=pad_rows(corrupt, fill),
        answer=answer,
        distractor=distractor,
        metric=last_position_metric(prob_diff, lengths, answer=answer, distractor=distractor),
        positions=dict(year=jnp.asarray([c[2] for c in chosen], jnp.int32), yy=jnp.asarray(yy)),
        prompts=tuple(_template(noun, y) for noun, y, _ in chosen),
        corrupt_prompts=tuple(_template(noun, BAD_START) for noun, _, _ in chosen),
        labels=longest_labels(tokenizer, clean),
        name="greater_than",
        lengths=lengths,
    )
