"""Templated biographies with a spurious gender cue, built offline (for SHIFT).

A stand-in for Bias in Bios (De-Arteaga et al. 2019) as Marks et al. (2025, "Sparse feature
circuits", arXiv 2403.19647, §5) use it: two professions, professor (label 0) and nurse
(label 1), described by what the person does, never by the job title; first names and
pronouns carry gender. The *ambiguous* set holds male professors and female nurses only
(gender predicts the label perfectly), the *balanced* set the four (profession × gender)
groups in equal numbers, and the *neutral* set profession-free sentences of either gender (for
judging which features are about gender without looking at any labelled evaluation data).

`split="train"` and `split="test"` use disjoint first names, sentence frames and activity
phrases, so a probe evaluated on the test split meets none of them in training.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from ._task import hint, pad_id, pieces

PROFESSIONS = ("professor", "nurse")
GENDERS = ("male", "female")
KINDS = ("ambiguous", "balanced", "neutral")
SPLITS = ("train", "test")

# fmt: off
_NAMES = {
    ("male", "train"): (
        "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph",
        "Thomas", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven",
        "Andrew", "Kenneth", "Joshua", "Kevin", "Brian", "George", "Edward", "Ronald",
    ),
    ("male", "test"): (
        "Peter", "Henry", "Frank", "Jack", "Samuel", "Patrick", "Raymond", "Gregory",
        "Walter", "Arthur", "Harold", "Carl",
    ),
    ("female", "train"): (
        "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
        "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley",
        "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Laura",
    ),
    ("female", "test"): (
        "Anna", "Emma", "Helen", "Alice", "Julia", "Grace", "Rachel", "Catherine",
        "Rose", "Diana", "Sophia", "Olivia",
    ),
}
_PRONOUNS = {
    "male": {"he": "he", "He": "He", "him": "him", "his": "his", "His": "His", "man": "man",
             "parent": "father", "spouse": "wife", "sibling": "brother", "title": "Mr"},
    "female": {"he": "she", "He": "She", "him": "her", "his": "her", "His": "Her", "man": "woman",
               "parent": "mother", "spouse": "husband", "sibling": "sister", "title": "Mrs"},
}  # fmt: skip
# Frames: `{name}`, gendered slots (`{he} {He} {him} {his} {His} {man} {parent} {spouse}
# {sibling} {title}`), a profession's activity `{a}` and a hobby `{b}` (both hobbies in the
# neutral set). Gender is said many times, the profession once, as in real biographies.
FRAMES = {
    "train": (
        "{name} {a}. {He} {b}, and {his} {spouse} says that {he} is a kind {man}.",
        "{name}, a {parent} of two, {b}. {He} also {a}, and {he} loves {his} family.",
        "Known to {his} friends as a funny {man}, {name} {b}. {He} {a}.",
        "{title} {name} lives in Boston with {his} {spouse}. {He} {a} and {he} {b}.",
        "{name} {b} with {his} {sibling}. During the week {he} {a}. {His} {spouse} is proud "
        "of {him}.",
        "{name} was born in Ohio, where {his} {parent} still lives. {He} {b}, and {he} {a}.",
    ),
    "test": (
        "{title} {name} {a}. In {his} free time {he} {b} with {his} {spouse}.",
        "Every weekend {name} {b} with {his} {sibling}. {He} also {a}, and {his} children "
        "visit {him} often.",
        "{name} grew up in Texas as the only {man} in {his} class. {He} {a}; {he} {b}.",
    ),
}
_ACTIVITIES = {
    ("professor", "train"): (
        "teaches courses on economics at the university",
        "has published many papers in leading journals",
        "supervises doctoral students in a research lab",
        "gives lectures to hundreds of undergraduates",
        "received a grant to study the history of science",
        "serves on the faculty of the department of physics",
        "wrote a textbook on organic chemistry",
        "advises graduate students on their theses",
    ),
    ("professor", "test"): (
        "presents research at international conferences",
        "runs a seminar on political theory",
        "holds a doctorate and a chair in mathematics",
        "grades exams and essays at the end of each semester",
    ),
    ("nurse", "train"): (
        "cares for patients in the intensive care unit",
        "works night shifts at the city hospital",
        "gives medications and checks vital signs",
        "assists doctors during surgery",
        "looks after newborn babies in the maternity ward",
        "treats wounds and changes bandages",
        "works in the emergency room of a clinic",
        "monitors patients recovering from surgery",
    ),
    ("nurse", "test"): (
        "helps elderly residents at a care home",
        "draws blood and records patient charts",
        "supports patients through chemotherapy",
        "visits patients at home to check on their recovery",
    ),
    ("neutral", "train"): (
        "enjoys hiking on weekends",
        "has two dogs and a cat",
        "likes to cook for friends",
        "plays the guitar in a small band",
        "grew up near the sea",
        "reads a novel every month",
        "collects old coins",
        "runs a marathon every spring",
    ),
    ("neutral", "test"): (
        "goes fishing with old friends",
        "paints landscapes in watercolour",
        "volunteers at the local library",
        "bakes bread every Sunday",
    ),
}
# fmt: on


class Bios(eqx.Module):
    """Biographies as token rows: `tokens [n, seq]` (a BOS token first, right-padded),
    `lengths [n]`, `profession [n]` (0 professor, 1 nurse, −1 for neutral text), `gender [n]`
    (0 male, 1 female), `frame [n]` (the sentence frame: an index into `FRAMES[split]`),
    `label [n]` (the probe's target: the profession), the `texts`, and `bos`/`pad` ids. The
    pooled positions of row `i` are `1 .. lengths[i] − 1`."""

    tokens: Int[Array, "n seq"]
    lengths: Int[Array, " n"]
    profession: Int[Array, " n"]
    gender: Int[Array, " n"]
    frame: Int[Array, " n"]
    texts: tuple[str, ...] = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    split: str = eqx.field(static=True)
    bos: int = eqx.field(static=True)
    pad: int = eqx.field(static=True)

    @property
    def label(self) -> Int[Array, " n"]:
        return self.profession

    @property
    def group(self) -> Int[Array, " n"]:
        """`2 · profession + gender`: 0 male professor, 1 female professor, 2 male nurse,
        3 female nurse."""
        return 2 * self.profession + self.gender

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _fill(frame: str, name: str, gender: str, a: str, b: str) -> str:
    return frame.format(name=name, a=a, b=b, **_PRONOUNS[gender])


def bios(tokenizer, n: int, *, kind: str = "ambiguous", split: str = "train", seed: int = 0):
    """`n` templated biographies (deterministic in `seed`), tokenised with a BOS token first.

    - `kind="ambiguous"`: `n/2` male professors and `n/2` female nurses (the training set
      of SHIFT, where gender and profession cannot be told apart); `"balanced"`: `n/4` of each
      (profession × gender) group; `"neutral"`: `n/2` men and `n/2` women doing neither job
      (train frames and names only).
    - `split`: `"train"` or `"test"`; they share no first name, frame or activity phrase.

    The BOS is the tokenizer's BOS id (else its EOS id); rows are padded with its pad id (else
    EOS) and must contain neither id in their text.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}{hint(kind, KINDS)}; choices: {list(KINDS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}{hint(split, SPLITS)}; choices: {list(SPLITS)}")
    if kind == "neutral" and split == "test":
        raise ValueError(
            "the neutral set exists for the train split only (it must never see test names)"
        )
    groups = 4 if kind == "balanced" else 2
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < groups or n % groups:
        raise ValueError(
            f"n must be a positive multiple of {groups} for kind={kind!r} (equal groups); got "
            f"{n!r}" + (f" (nearest: {max(groups, round(n / groups) * groups)})" if
                        isinstance(n, int | np.integer) else "")
        )  # fmt: skip
    if kind == "ambiguous":
        cells = [("professor", "male"), ("nurse", "female")]
    elif kind == "balanced":
        cells = [(p, g) for p in PROFESSIONS for g in GENDERS]
    else:
        cells = [("neutral", "male"), ("neutral", "female")]
    rng = np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split)])
    frames = FRAMES[split]
    rows = []
    for profession, gender in cells:
        names = _NAMES[(gender, split)]
        acts = _ACTIVITIES[(profession, split)]
        hobbies = _ACTIVITIES[("neutral", split)]
        for _ in range(n // groups):
            if profession == "neutral":
                a, b = (acts[i] for i in rng.choice(len(acts), 2, replace=False))
            else:
                a, b = acts[rng.integers(len(acts))], hobbies[rng.integers(len(hobbies))]
            f, name = int(rng.integers(len(frames))), names[rng.integers(len(names))]
            text = _fill(frames[f], name, gender, a, b)
            rows.append((text, PROFESSIONS.index(profession) if profession in PROFESSIONS else -1,
                         GENDERS.index(gender), f))  # fmt: skip
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = int(bos) if bos is not None else pad_id(tokenizer)
    pad = pad_id(tokenizer)
    ids = [[bos, *pieces(tokenizer, text)] for text, *_ in rows]
    for (text, *_), row in zip(rows, ids):
        if bos in row[1:] or (pad != bos and pad in row):
            raise ValueError(f"the bio {text!r} tokenises to the BOS ({bos}) or pad ({pad}) id")
    lengths = [len(r) for r in ids]
    seq = max(lengths)
    tokens = np.full((len(ids), seq), pad, np.int32)
    for i, r in enumerate(ids):
        tokens[i, : len(r)] = r
    return Bios(
        tokens=jnp.asarray(tokens),
        lengths=jnp.asarray(lengths, jnp.int32),
        profession=jnp.asarray([r[1] for r in rows], jnp.int32),
        gender=jnp.asarray([r[2] for r in rows], jnp.int32),
        frame=jnp.asarray([r[3] for r in rows], jnp.int32),
        texts=tuple(r[0] for r in rows),
        kind=kind,
        split=split,
        bos=bos,
        pad=pad,
    )
