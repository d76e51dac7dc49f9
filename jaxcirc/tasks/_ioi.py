"""Indirect object identification (Wang et al. 2023, "Interpretability in the Wild").

"When Mary and John went to the store, John gave a drink to" -> " Mary". The subject `S`
appears twice (`S1`, `S2`), the indirect object `IO` once; the answer is `IO`, the distractor
`S`, the metric the logit difference `logit(IO) - logit(S)` at the last position.

Templates are the paper's fifteen: `BABA` has `S` first ("Then, John and Mary ..."), `ABBA`
swaps the first two names ("Then, Mary and John ..."). Places and objects are the paper's
eight each; names are common English first names that are one token with a leading space.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..metrics import logit_diff
from ._task import (
    Task,
    as_rng,
    encode,
    hint,
    last_position_metric,
    pad_id,
    pad_rows,
    str_tokens,
    try_single_token,
)

# {S1} is the first mention of the subject, {S2} the second, {IO} the indirect object.
BABA_TEMPLATES = (
    "Then, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} had a lot of fun at the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} were working at the {PLACE}. {S2} decided to give a {OBJECT} to",
    "Then, {S1} and {IO} were thinking about going to the {PLACE}. {S2} wanted to give a "
    "{OBJECT} to",
    "Then, {S1} and {IO} had a long argument, and afterwards {S2} said to",
    "After {S1} and {IO} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "When {S1} and {IO} got a {OBJECT} at the {PLACE}, {S2} decided to give it to",
    "When {S1} and {IO} got a {OBJECT} at the {PLACE}, {S2} decided to give the {OBJECT} to",
    "While {S1} and {IO} were working at the {PLACE}, {S2} gave a {OBJECT} to",
    "While {S1} and {IO} were commuting to the {PLACE}, {S2} gave a {OBJECT} to",
    "After the lunch, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Afterwards, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} had a long argument. Afterwards {S2} said to",
    "The {PLACE} {S1} and {IO} went to had a {OBJECT}. {S2} gave it to",
    "Friends {S1} and {IO} found a {OBJECT} at the {PLACE}. {S2} gave it to",
)
# The same sentences with the first two names swapped.
ABBA_TEMPLATES = tuple(t.replace("{S1} and {IO}", "{IO} and {S1}", 1) for t in BABA_TEMPLATES)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
NAMES = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "James",
    "Michael",
    "David",
    "Sarah",
    "Emma",
    "Daniel",
    "Thomas",
    "Paul",
    "Mark",
    "George",
    "Anna",
    "Laura",
    "Kevin",
    "Steven",
    "Jessica",
    "Lisa",
    "Robert",
    "William",
    "Richard",
    "Joseph",
    "Charles",
    "Matthew",
    "Andrew",
    "Joshua",
    "Brian",
    "Edward",
    "Ryan",
    "Jacob",
    "Gary",
    "Eric",
    "Jonathan",
    "Stephen",
    "Larry",
    "Justin",
    "Scott",
    "Frank",
    "Brandon",
    "Benjamin",
    "Samuel",
    "Gregory",
    "Patrick",
    "Jack",
    "Dennis",
    "Jerry",
    "Tyler",
    "Aaron",
    "Henry",
    "Peter",
    "Adam",
    "Nathan",
    "Zach",
    "Kyle",
    "Carl",
    "Arthur",
    "Roger",
    "Sean",
    "Christian",
    "Austin",
    "Jesse",
    "Dylan",
    "Bryan",
    "Joe",
    "Jordan",
    "Billy",
    "Bruce",
    "Albert",
    "Willie",
    "Gabriel",
    "Logan",
    "Alan",
    "Juan",
    "Wayne",
    "Roy",
    "Ralph",
    "Randy",
    "Eugene",
    "Vincent",
    "Russell",
    "Elijah",
    "Louis",
    "Bobby",
    "Philip",
    "Johnny",
    "Linda",
    "Elizabeth",
    "Jennifer",
    "Susan",
    "Karen",
    "Nancy",
    "Betty",
    "Helen",
    "Sandra",
    "Donna",
    "Carol",
    "Ruth",
    "Sharon",
    "Michelle",
    "Kimberly",
    "Amy",
    "Angela",
    "Rachel",
    "Rose",
    "Grace",
    "Kate",
    "Victoria",
    "Julia",
    "Claire",
    "Lucy",
    "Sophie",
    "Katie",
    "Max",
)
TEMPLATE_SETS = ("BABA", "ABBA", "mixed")
CORRUPTIONS = ("ABC", "S2")


def _templates(which: str) -> list[tuple[str, str]]:
    if which not in TEMPLATE_SETS:
        raise ValueError(
            f"ioi: templates={which!r}{hint(which, TEMPLATE_SETS)}; choices: {TEMPLATE_SETS}"
        )
    out = []
    if which in ("BABA", "mixed"):
        out += [("BABA", t) for t in BABA_TEMPLATES]
    if which in ("ABBA", "mixed"):
        out += [("ABBA", t) for t in ABBA_TEMPLATES]
    return out


def ioi_names(tokenizer) -> tuple[str, ...]:
    """The names of `NAMES` that are a single token with a leading space for `tokenizer`."""
    return tuple(n for n in NAMES if try_single_token(tokenizer, " " + n) is not None)


def _name_positions(ids: list[int], io: int, s: int) -> tuple[int, int, int] | None:
    """`(io, s1, s2)` positions if the names tokenise as themselves, else `None`."""
    io_at = [i for i, t in enumerate(ids) if t == io]
    s_at = [i for i, t in enumerate(ids) if t == s]
    if len(io_at) != 1 or len(s_at) != 2:
        return None
    return io_at[0], s_at[0], s_at[1]


def ioi(
    tokenizer,
    n: int,
    *,
    seed=0,
    templates: str = "BABA",
    corruption: str = "ABC",
    seq_len: int | None = None,
) -> Task:
    """`n` IOI prompts (Wang et al. 2023) with clean/corrupt pairs of equal token length.

    **Arguments:**

    - `tokenizer`: from `jaxcirc.io.load_tokenizer`.
    - `n`: number of prompts. (Keyword only from here.) `seed`: an int or a `jax.random` key.
    - `templates`: `"BABA"` (subject named first), `"ABBA"` (indirect object first), or
      `"mixed"` (alternating; example `i` is BABA for even `i`).
    - `corruption`: `"ABC"`, the paper's `p_ABC`: the three name slots `IO`, `S1`, `S2` get
      three distinct other names `A`, `B`, `C`, so no name repeats and nothing marks the
      indirect object; `"S2"`: the second subject mention becomes the `IO` name, so the
      repeated name, and with it the expected answer, flips (clean answer `IO`, corrupt `S`).
      Places, objects and templates are kept.
    - `seq_len`: use only the templates, places and objects giving prompts of this many
      tokens; default: all of them, prompts of different lengths right-padded (see `Task`).
      Templates are drawn uniformly.

    **Returns:** a `Task` with `answer` = `IO`, `distractor` = `S` (`[batch]`), metric
    `logit_diff` at each prompt's last token, and `positions` `io`, `s1`, `s2`, `end`
    (`[batch]`; `end = lengths - 1`).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(
            f"ioi: corruption={corruption!r}{hint(corruption, CORRUPTIONS)}; choices: {CORRUPTIONS}"
        )
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"ioi: n must be a positive int; got {n!r}")
    rng = as_rng(seed)
    pool = _templates(templates)
    names = ioi_names(tokenizer)
    if len(names) < 5:
        raise ValueError(
            f"ioi: only {len(names)} of the {len(NAMES)} names are one token with a leading "
            f"space for this tokenizer ({list(names)}); need at least 5"
        )
    ref = dict(S1=" " + names[0], S2=" " + names[0], IO=" " + names[1])
    combos = [
        (kind, t, place, obj)
        for kind, t in pool
        for place in PLACES
        for obj in (OBJECTS if "{OBJECT}" in t else OBJECTS[:1])
        if "{PLACE}" in t or place == PLACES[0]
    ]

    def render(t, place, obj, s1, io, s2):
        text = t.replace("{S1}", s1).replace("{S2}", s2).replace("{IO}", io)
        return text.replace("{PLACE}", place).replace("{OBJECT}", obj)

    def length(t, place, obj):
        s1, io, s2 = (ref[k].strip() for k in ("S1", "IO", "S2"))
        return len(encode(tokenizer, render(t, place, obj, s1, io, s2)))

    # template -> its (place, object) fillings (of the chosen length, if any), per template set
    lengths = [None if seq_len is None else length(*c[1:]) for c in combos]
    by_kind = {"BABA": {}, "ABBA": {}}
    for (kind, t, place, obj), m in zip(combos, lengths):
        if m == seq_len:
            by_kind[kind].setdefault(t, []).append((place, obj))
    kinds = ["BABA", "ABBA"] if templates == "mixed" else [templates]
    for k in kinds:
        if not by_kind[k]:
            raise ValueError(
                f"ioi: no {k} template gives prompts of {seq_len} tokens for this tokenizer; "
                f"lengths available: {sorted(set(lengths))} (or leave seq_len=None to use every "
                "template, padded)"
            )
    name_ids = {name: try_single_token(tokenizer, " " + name) for name in names}
    clean, corrupt, prompts, corrupt_prompts, pos = [], [], [], [], []
    answer, distractor = [], []
    attempts = 0
    while len(clean) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            of = "" if seq_len is None else f" of {seq_len} tokens"
            raise ValueError(
                f"ioi: could not build {n} prompts{of} whose names tokenise as single tokens "
                f"({len(clean)} built)"
            )
        kind = kinds[len(clean) % len(kinds)]
        usable = sorted(by_kind[kind])  # templates sampled uniformly, then their fillings
        t = usable[rng.integers(len(usable))]
        place, obj = by_kind[kind][t][rng.integers(len(by_kind[kind][t]))]
        s, io, a, b, c = (names[i] for i in rng.choice(len(names), 5, replace=False))
        text = render(t, place, obj, s, io, s)
        if corruption == "ABC":
            bad = render(t, place, obj, b, a, c)
        else:
            bad = render(t, place, obj, s, io, io)
        ids, bad_ids = encode(tokenizer, text), encode(tokenizer, bad)
        where = _name_positions(ids, name_ids[io], name_ids[s])
        if where is None or len(ids) != len(bad_ids) or seq_len not in (None, len(ids)):
            continue
        clean.append(ids)
        corrupt.append(bad_ids)
        prompts.append(text)
        corrupt_prompts.append(bad)
        pos.append(where)
        answer.append(name_ids[io])
        distractor.append(name_ids[s])
    answer = jnp.asarray(answer, jnp.int32)
    distractor = jnp.asarray(distractor, jnp.int32)
    pos = jnp.asarray(pos, jnp.int32)
    lengths = jnp.asarray([len(c) for c in clean], jnp.int32)
    longest = max(range(n), key=lambda i: len(clean[i]))
    fill = pad_id(tokenizer)
    return Task(
        clean=pad_rows(clean, fill),
        corrupt=pad_rows(corrupt, fill),
        answer=answer,
        distractor=distractor,
        metric=last_position_metric(logit_diff, lengths, answer=answer, distractor=distractor),
        positions=dict(io=pos[:, 0], s1=pos[:, 1], s2=pos[:, 2], end=lengths - 1),
        prompts=tuple(prompts),
        corrupt_prompts=tuple(corrupt_prompts),
        labels=_labels(str_tokens(tokenizer, clean[longest]), [int(p) for p in pos[longest]]),
        name=f"ioi-{templates}-{corruption}",
        lengths=lengths,
    )


def _labels(tokens: tuple[str, ...], where: list[int]) -> tuple[str, ...]:
    """The (longest) prompt's tokens, with the roles of the name positions and the end."""
    labels = list(tokens)
    for role, i in zip(("IO", "S1", "S2"), where):
        labels[i] = f"{labels[i]} ({role})"
    labels[-1] = f"{labels[-1]} (END)"
    return tuple(labels)
