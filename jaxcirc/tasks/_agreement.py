"""Subject–verb agreement (Linzen et al. 2016; Finlayson et al. 2021; the templates of Marks et
al. 2025, "Sparse feature circuits", arXiv 2403.19647, §4).

Each clean prompt ends where a verb must agree with a subject; its patch prompt is the same
sentence with that subject's number flipped (`" author"` ↔ `" authors"`, one token each), so
the two have the same token length and the answer flips between the verb's singular and plural
forms. Styles:

- `"simple"`: `The author` → ` is` / ` are`;
- `"nounpp"` (across a prepositional phrase): `The author near the guards` → ` is` / ` are`;
- `"rc"` (across a relative clause): `The author that the guards like` → ` is` / ` are`;
- `"within_rc"` (inside one): `The author that the guards` → ` like` / ` likes` (the verb
  agrees with the clause's subject, the flipped noun).

The combinations of nouns, verb and preposition are split once into train (70 %) and test
(30 %) by a hash of their words (the answer verb aside), so the two splits never share a
sentence, for any `n`/`seed`.
"""

from __future__ import annotations

import zlib

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

AGREEMENT_STYLES = STYLES = ("simple", "nounpp", "rc", "within_rc")
SPLITS = ("train", "test")
AGREEMENT_NOUNS = (
    "author", "pilot", "surgeon", "farmer", "manager", "customer", "officer", "teacher",
    "senator", "dancer", "guard", "doctor", "lawyer", "singer", "student", "writer", "parent",
    "player", "worker", "driver", "artist", "judge", "nurse", "chef", "painter", "soldier",
    "actor", "athlete", "architect", "executive", "minister", "engineer",
)  # fmt: skip
"""Nouns whose plural is the singular + "s"; each form must be one token to be used."""
COPULAS = (("is", "are"), ("was", "were"), ("has", "have"))
"""The (singular, plural) verbs that follow a full subject."""
TRANSITIVE = (("likes", "like"), ("loves", "love"), ("knows", "know"), ("needs", "need"),
              ("wants", "want"))  # fmt: skip
PREPOSITIONS = ("near", "behind", "beside")


def _split_of(text: str) -> str:
    return "train" if zlib.crc32(text.encode()) % 10 < 7 else "test"


def agreement(
    tokenizer,
    n: int,
    *,
    style: str = "nounpp",
    split: str = "train",
    seed=0,
) -> Task:
    """`n` subject–verb agreement pairs (see the module docstring for the styles).

    **Returns:** a `Task` whose `clean` prompts have the subject in the number drawn for that
    example (half singular), `corrupt` the same prompts with it flipped (Marks et al.'s
    patch); `answer` the verb form agreeing with the clean subject, `distractor` the other
    form; metric `logit_diff` (answer − distractor) at the last position; `positions`
    `subject` (the flipped noun's position), `end`, and `plural` (1 where the clean subject is
    plural). Every prompt of one style has the same token length. Deterministic in `seed`.
    """
    if style not in STYLES:
        raise ValueError(f"agreement: style={style!r}{hint(style, STYLES)}; choices: {STYLES}")
    if split not in SPLITS:
        raise ValueError(f"agreement: split={split!r}{hint(split, SPLITS)}; choices: {SPLITS}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"agreement: n must be a positive int; got {n!r}")
    single = lambda w: try_single_token(tokenizer, " " + w)
    nouns = [w for w in AGREEMENT_NOUNS if single(w) is not None and single(w + "s") is not None]
    answers = TRANSITIVE if style == "within_rc" else COPULAS
    answers = [a for a in answers if single(a[0]) is not None and single(a[1]) is not None]
    verbs = [v for v in TRANSITIVE if single(v[0]) is not None and single(v[1]) is not None]
    if len(nouns) < 4 or not answers:
        raise ValueError(
            f"agreement: this tokenizer has {len(nouns)} usable nouns (need 4) and "
            f"{len(answers)} verb pairs with both forms one token (need 1)"
        )
    combos = []
    for a in nouns:
        if style == "simple":
            combos += [(a, None, None, ans) for ans in answers]
            continue
        for b in nouns:
            if b == a:
                continue
            if style == "nounpp":
                combos += [(a, b, p, ans) for p in PREPOSITIONS for ans in answers]
            elif style == "rc":
                combos += [(a, b, v, ans) for v in verbs for ans in answers]
            else:
                combos += [(a, b, None, ans) for ans in answers]
    combos = [c for c in combos if _split_of(repr(c[:3])) == split]
    rng = as_rng(seed)
    order = rng.permutation(len(combos))
    if n > len(combos):
        raise ValueError(f"agreement: only {len(combos)} {split} sentences of style {style}")
    clean, corrupt, prompts, corrupt_prompts = [], [], [], []
    answer, distractor, subject, plural = [], [], [], []
    for k, idx in enumerate(order[:n]):
        a, b, extra, (sing, plur) = combos[idx]
        pl_clean = bool(k % 2)  # half singular, half plural
        pl_other = bool(rng.integers(2))
        text, flipped = _render(style, a, b, extra, pl_clean, pl_other)
        ids, bad = encode(tokenizer, text), encode(tokenizer, flipped)
        if len(ids) != len(bad):
            raise ValueError(f"agreement: {text!r} and {flipped!r} tokenise to different lengths")
        right, wrong = (plur, sing) if pl_clean else (sing, plur)  # agrees with the flipped noun
        clean.append(ids)
        corrupt.append(bad)
        prompts.append(text)
        corrupt_prompts.append(flipped)
        answer.append(single(right))
        distractor.append(single(wrong))
        subject.append(next(i for i, (x, y) in enumerate(zip(ids, bad)) if x != y))
        plural.append(int(pl_clean))
    lengths = jnp.asarray([len(c) for c in clean], jnp.int32)
    answer = jnp.asarray(answer, jnp.int32)
    distractor = jnp.asarray(distractor, jnp.int32)
    fill = pad_id(tokenizer)
    longest = max(range(n), key=lambda i: len(clean[i]))
    return Task(
        clean=pad_rows(clean, fill),
        corrupt=pad_rows(corrupt, fill),
        answer=answer,
        distractor=distractor,
        metric=last_position_metric(logit_diff, lengths, answer=answer, distractor=distractor),
        positions=dict(
            subject=jnp.asarray(subject, jnp.int32),
            end=lengths - 1,
            plural=jnp.asarray(plural, jnp.int32),
        ),
        prompts=tuple(prompts),
        corrupt_prompts=tuple(corrupt_prompts),
        labels=str_tokens(tokenizer, clean[longest]),
        name=f"agreement-{style}-{split}",
        lengths=lengths,
    )


def _render(style, a, b, extra, pl_a, pl_b):
    """`(clean text, patch text)`: the flipped noun is `a`."""
    na = a + "s" if pl_a else a
    fa = a if pl_a else a + "s"
    nb = None if b is None else (b + "s" if pl_b else b)
    if style == "simple":
        return f"The {na}", f"The {fa}"
    if style == "nounpp":
        return f"The {na} {extra} the {nb}", f"The {fa} {extra} the {nb}"
    if style == "rc":
        verb = _verb(extra, pl_b)
        return f"The {na} that the {nb} {verb}", f"The {fa} that the {nb} {verb}"
    # within_rc: the clause's subject is the agreeing (flipped) noun; `a` plays that role here
    prefix = f"The {nb} that the "
    return prefix + na, prefix + fa


def _verb(pair, plural):
    return pair[1] if plural else pair[0]
