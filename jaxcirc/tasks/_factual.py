"""Factual recall prompts for causal tracing (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT"; the style of its `known_1000` and CounterFact sets).

"The Eiffel Tower is located in the city of" -> " Paris". Each fact is `(subject, template,
answer, distractor)`: the template has one `{}` for the subject; the distractor is a
counterfactual object of the same kind (CounterFact's `target_new`). Causal tracing corrupts
by noising the subject's embeddings, so `corrupt` is `clean` and `subject_mask` marks where
to add the noise. Facts of different token lengths are right-padded (see `Task`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ..metrics import logit_diff
from ._task import (
    Task,
    as_rng,
    encode,
    last_position_metric,
    longest_labels,
    pad_id,
    pad_rows,
    single_token,
    try_single_token,
)

_CITY = "The {} is located in the city of"
_CAPITAL = "The capital city of {} is"
_LANGUAGE = "The official language of {} is"
_CONTINENT = "{} is located in the continent of"
_SPORT = "{} is a professional player of the sport of"
_FOUNDER = "{} is the founder of the company"
FACTS = (
    ("Eiffel Tower", _CITY, "Paris", "Rome"),
    ("Colosseum", _CITY, "Rome", "Paris"),
    ("Brandenburg Gate", _CITY, "Berlin", "Madrid"),
    ("Kremlin", _CITY, "Moscow", "London"),
    ("Acropolis", _CITY, "Athens", "Cairo"),
    ("Sagrada Familia", _CITY, "Barcelona", "Vienna"),
    ("Tower of London", _CITY, "London", "Berlin"),
    ("Forbidden City", _CITY, "Beijing", "Tokyo"),
    ("France", _CAPITAL, "Paris", "London"),
    ("Germany", _CAPITAL, "Berlin", "Paris"),
    ("Japan", _CAPITAL, "Tokyo", "Beijing"),
    ("Italy", _CAPITAL, "Rome", "Madrid"),
    ("Spain", _CAPITAL, "Madrid", "Rome"),
    ("Russia", _CAPITAL, "Moscow", "Berlin"),
    ("Egypt", _CAPITAL, "Cairo", "Athens"),
    ("Greece", _CAPITAL, "Athens", "Cairo"),
    ("England", _CAPITAL, "London", "Dublin"),
    ("Ireland", _CAPITAL, "Dublin", "London"),
    ("Brazil", _LANGUAGE, "Portuguese", "Spanish"),
    ("Mexico", _LANGUAGE, "Spanish", "English"),
    ("Germany", _LANGUAGE, "German", "French"),
    ("France", _LANGUAGE, "French", "German"),
    ("Japan", _LANGUAGE, "Japanese", "Chinese"),
    ("Italy", _LANGUAGE, "Italian", "Spanish"),
    ("Russia", _LANGUAGE, "Russian", "English"),
    ("Kenya", _CONTINENT, "Africa", "Europe"),
    ("Nigeria", _CONTINENT, "Africa", "Asia"),
    ("Norway", _CONTINENT, "Europe", "Asia"),
    ("Poland", _CONTINENT, "Europe", "Africa"),
    ("Thailand", _CONTINENT, "Asia", "Europe"),
    ("Vietnam", _CONTINENT, "Asia", "Africa"),
    ("Lionel Messi", _SPORT, "soccer", "basketball"),
    ("LeBron James", _SPORT, "basketball", "soccer"),
    ("Serena Williams", _SPORT, "tennis", "golf"),
    ("Tiger Woods", _SPORT, "golf", "tennis"),
    ("Roger Federer", _SPORT, "tennis", "soccer"),
    ("Michael Jordan", _SPORT, "basketball", "baseball"),
    ("Wayne Gretzky", _SPORT, "hockey", "football"),
    ("Bill Gates", _FOUNDER, "Microsoft", "Apple"),
    ("Steve Jobs", _FOUNDER, "Apple", "Microsoft"),
    ("Mark Zuckerberg", _FOUNDER, "Facebook", "Google"),
    ("Jeff Bezos", _FOUNDER, "Amazon", "Google"),
)


def _subject_span(tokenizer, prompt: str, subject: str) -> tuple[list[int], int, int] | None:
    """Token ids of `prompt` and the `[start, stop)` tokens of `subject` in it, if they align."""
    at = prompt.find(subject)
    if at < 0:
        return None
    start = at - 1 if at > 0 and prompt[at - 1] == " " else at  # the space goes with the word
    ids = encode(tokenizer, prompt)
    before = encode(tokenizer, prompt[:start]) if start else encode(tokenizer, "")
    upto = encode(tokenizer, prompt[: at + len(subject)])
    if ids[: len(upto)] != upto or upto[: len(before)] != before or len(upto) == len(before):
        return None
    return ids, len(before), len(upto)


def factual(
    tokenizer,
    *,
    prompts: Sequence[tuple[str, ...]] | None = None,
    seed=0,
    seq_len: int | None = None,
) -> Task:
    """Factual-recall prompts with `subject_mask`, for causal tracing (Meng et al. 2022).

    **Arguments:**

    - `tokenizer`: from `jaxcirc.io.load_tokenizer`.
    - `prompts`: facts `(subject, template, answer)` or `(subject, template, answer,
      distractor)`, the template holding `{}` for the subject; default: the shipped `FACTS`.
      Answers are written without the leading space (`"Paris"`; it is added). A user fact whose
      answer or distractor is not one token raises `ValueError`; shipped facts are dropped.
      Without a distractor, another fact's answer is used.
    - `seed`: shuffles the facts (an int or a `jax.random` key).
    - `seq_len`: keep only the facts of this many tokens; default: keep every fact, the
      shorter ones right-padded (`lengths` holds each fact's token count).

    **Returns:** a `Task` with `corrupt == clean` (noise the subject instead), `answer` and
    `distractor` `[batch]`, metric `logit_diff` at each fact's last token, and
    `positions["subject_mask"]` `[batch, seq]` (`False` on padding).
    """
    user = prompts is not None
    facts = list(FACTS if prompts is None else prompts)
    if not facts:
        raise ValueError("factual: no prompts given")
    rows = []  # (prompt, ids, start, stop, answer id, distractor id or None)
    for i, fact in enumerate(facts):
        if len(fact) not in (3, 4):
            raise ValueError(
                f"factual: fact {i} {fact!r} should be (subject, template, answer[, distractor])"
            )
        subject, template, answer = fact[:3]
        distractor = fact[3] if len(fact) == 4 else None
        if template.count("{}") != 1:
            raise ValueError(f"factual: template {template!r} must hold exactly one '{{}}'")
        prompt = template.format(subject)
        words = [(" " + answer.lstrip(), "answer")]
        if distractor is not None:
            words.append((" " + distractor.lstrip(), "distractor"))
        if user:
            ids = [single_token(tokenizer, w, what) for w, what in words]
        else:
            ids = [try_single_token(tokenizer, w) for w, _ in words]
            if None in ids:
                continue
        span = _subject_span(tokenizer, prompt, subject)
        if span is None:
            if user:
                raise ValueError(
                    f"factual: subject {subject!r} does not tokenise on its own inside {prompt!r}"
                )
            continue
        rows.append((prompt, *span, ids[0], ids[1] if distractor is not None else None))
    if not rows:
        raise ValueError("factual: no fact has single-token answers for this tokenizer")
    kept = rows if seq_len is None else [r for r in rows if len(r[1]) == seq_len]
    if not kept:
        lengths = sorted({len(r[1]) for r in rows})
        raise ValueError(
            f"factual: no fact has seq_len={seq_len} tokens; lengths available: {lengths} "
            "(or leave seq_len=None to keep every fact, padded)"
        )
    rng = as_rng(seed)
    kept = [kept[i] for i in rng.permutation(len(kept))]
    answers = np.asarray([r[4] for r in kept], np.int32)
    distractors = []
    for i, r in enumerate(kept):
        if r[5] is not None:
            distractors.append(r[5])
            continue
        others = sorted({r2[4] for r2 in rows if r2[4] != r[4]})
        if not others:
            raise ValueError("factual: every fact has the same answer; give distractors")
        distractors.append(int(others[rng.integers(len(others))]))
    ids = [r[1] for r in kept]
    clean = pad_rows(ids, pad_id(tokenizer))
    mask = np.zeros(clean.shape, bool)
    for i, r in enumerate(kept):
        mask[i, r[2] : r[3]] = True
    lengths = jnp.asarray([len(i) for i in ids], jnp.int32)
    answer = jnp.asarray(answers)
    distractor = jnp.asarray(distractors, jnp.int32)
    return Task(
        clean=clean,
        corrupt=clean,
        answer=answer,
        distractor=distractor,
        metric=last_position_metric(logit_diff, lengths, answer=answer, distractor=distractor),
        positions=dict(subject_mask=jnp.asarray(mask)),
        prompts=tuple(r[0] for r in kept),
        corrupt_prompts=tuple(r[0] for r in kept),
        labels=longest_labels(tokenizer, ids),
        name="factual",
        lengths=lengths,
    )
