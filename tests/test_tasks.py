"""Tasks: determinism, shapes, answers at the right tokens, single-token errors, SmolLM2 IOI."""

import dataclasses
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc.tasks import (
    ABBA_TEMPLATES,
    BABA_TEMPLATES,
    FACTS,
    NAMES,
    NOUNS,
    OBJECTS,
    PLACES,
    factual,
    from_strings,
    greater_than,
    induction,
    ioi,
)

_PIECES = re.compile(r" ?[A-Za-z]+| ?\d\d|\d| ?[^\sA-Za-z\d]+|\s+")


class WordTokenizer:
    """A GPT-2-like stand-in: `" word"` and `" 17"`/`"32"` pieces are one token when in the
    vocabulary; other pieces split into characters. Same interface as `jc.io.load_tokenizer`."""

    def __init__(self, texts, *, drop=(), bos=None):
        words = {p for t in texts for p in _PIECES.findall(t)}
        words |= {f"{y:02d}" for y in range(100)} | {" 17"}
        words = (words - set(drop)) | {chr(c) for c in range(32, 127)}
        self.vocab = ["<bos>", *sorted(words)]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.bos_token_id = 0 if bos else None

    def encode(self, text, *, add_special_tokens=True):
        ids = [0] if add_special_tokens and self.bos_token_id is not None else []
        for piece in _PIECES.findall(text):
            ids += [self.ids[piece]] if piece in self.ids else [self.ids[c] for c in piece]
        return np.asarray(ids, np.int32)

    def decode(self, ids):
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))


def _all_texts():
    fills = [f" {w}" for w in (*NAMES, *PLACES, *OBJECTS, *NOUNS)]
    facts = [t.format(s) + f" {a} {d}" for s, t, a, d in FACTS]
    return [*BABA_TEMPLATES, *fills, *facts, "The lasted from the year to the"]


@pytest.fixture(scope="module")
def tok():
    # a few names, nouns and answers are not single tokens: generators must drop them
    return WordTokenizer(_all_texts(), drop={" Alice", " Bob", " war", " Paris", " Tokyo"})


# ---------------------------------------------------------------------------------------------
# IOI
# ---------------------------------------------------------------------------------------------


def test_templates_follow_the_paper():
    assert len(BABA_TEMPLATES) == len(ABBA_TEMPLATES) == 15
    assert len(set(BABA_TEMPLATES)) == 15
    for baba, abba in zip(BABA_TEMPLATES, ABBA_TEMPLATES):
        for t in (baba, abba):
            assert [t.count(k) for k in ("{S1}", "{IO}", "{S2}")] == [1, 1, 1]
            assert t.endswith(" to")
        assert baba.index("{S1}") < baba.index("{IO}") < baba.index("{S2}")
        assert abba.index("{IO}") < abba.index("{S1}") < abba.index("{S2}")
        assert baba.replace("{S1}", "X").replace("{IO}", "Y") == abba.replace("{IO}", "X").replace(
            "{S1}", "Y"
        )


@pytest.mark.parametrize("templates", ["BABA", "ABBA", "mixed"])
@pytest.mark.parametrize("corruption", ["ABC", "S2"])
def test_ioi_answers_and_corruptions(tok, templates, corruption):
    task = ioi(tok, 12, seed=3, templates=templates, corruption=corruption)
    assert task.clean.shape == task.corrupt.shape and task.clean.shape[0] == 12
    assert task.answer.shape == task.distractor.shape == (12,)
    clean, corrupt = np.asarray(task.clean), np.asarray(task.corrupt)
    p = {k: np.asarray(v) for k, v in task.positions.items()}
    lengths = np.asarray(task.lengths)
    assert lengths.max() == clean.shape[1]
    for i, prompt in enumerate(task.prompts):
        names = re.findall(r"\b[A-Z][a-z]+\b", prompt)
        names = [w for w in names if w in NAMES]
        assert len(names) == 3
        s = max(set(names), key=names.count)
        io = next(w for w in names if w != s)
        assert names.count(s) == 2
        assert tok.decode([int(task.answer[i])]) == " " + io
        assert tok.decode([int(task.distractor[i])]) == " " + s
        assert clean[i, p["io"][i]] == task.answer[i]
        assert clean[i, p["s1"][i]] == clean[i, p["s2"][i]] == task.distractor[i]
        kind = templates if templates != "mixed" else ("BABA", "ABBA")[i % 2]
        assert (p["s1"][i] < p["io"][i]) == (kind == "BABA")
        assert p["s2"][i] > max(p["s1"][i], p["io"][i]) and p["end"][i] == lengths[i] - 1
        assert not {"Alice", "Bob"} & set(names)  # not single tokens here: dropped
        assert list(tok.encode(prompt)) == list(clean[i, : lengths[i]])
        assert (clean[i, lengths[i] :] == 0).all() and (corrupt[i, lengths[i] :] == 0).all()
        named = [p["io"][i], p["s1"][i], p["s2"][i]]
        others = np.setdiff1d(np.arange(clean.shape[1]), named)
        np.testing.assert_array_equal(clean[i, others], corrupt[i, others])
        if corruption == "ABC":
            new = corrupt[i, named]
            assert len(set(new.tolist())) == 3
            assert not {int(task.answer[i]), int(task.distractor[i])} & set(new.tolist())
        else:
            assert corrupt[i, p["io"][i]] == corrupt[i, p["s2"][i]] == task.answer[i]
            assert corrupt[i, p["s1"][i]] == task.distractor[i]
    # the default metric is the logit difference IO - S at each prompt's last token
    logits = jax.random.normal(jax.random.key(0), (*task.clean.shape, len(tok.vocab)))
    np.testing.assert_allclose(
        task.metric(logits),
        jc.metrics.logit_diff(logits, task.answer, task.distractor, position=lengths - 1),
        rtol=1e-6,
    )


def test_ioi_deterministic_and_seeded(tok):
    a = ioi(tok, 8, seed=0, templates="mixed")
    b = ioi(tok, 8, seed=0, templates="mixed")
    c = ioi(tok, 8, seed=1, templates="mixed")
    assert a.prompts == b.prompts and a.corrupt_prompts == b.corrupt_prompts
    np.testing.assert_array_equal(a.clean, b.clean)
    np.testing.assert_array_equal(a.corrupt, b.corrupt)
    assert a.prompts != c.prompts
    d = ioi(tok, 8, seed=jax.random.key(5))
    assert d.prompts == ioi(tok, 8, seed=jax.random.key(5)).prompts
    # several templates are used, uniformly over templates, of several token lengths
    many = ioi(tok, 40, seed=0)
    assert len({re.sub(r"[A-Z][a-z]+", "N", p) for p in many.prompts}) > 3
    assert len(set(np.asarray(many.lengths).tolist())) > 1
    # seq_len keeps only the prompts of that length
    one = ioi(tok, 8, seed=0, seq_len=int(many.lengths[0]))
    assert one.clean.shape[1] == int(many.lengths[0]) and (one.lengths == one.clean.shape[1]).all()


def test_ioi_errors(tok):
    with pytest.raises(ValueError, match="did you mean 'BABA'"):
        ioi(tok, 4, templates="BAAB")
    with pytest.raises(ValueError, match="did you mean 'ABC'"):
        ioi(tok, 4, corruption="abc")
    with pytest.raises(ValueError, match="lengths available"):
        ioi(tok, 4, seq_len=3)
    few = WordTokenizer(BABA_TEMPLATES + tuple(f" {w}" for w in (*PLACES, *OBJECTS, *NAMES[:3])))
    with pytest.raises(ValueError, match="only 3 of the"):
        ioi(few, 4)


# ---------------------------------------------------------------------------------------------
# Induction, greater-than, factual, user rows
# ---------------------------------------------------------------------------------------------


def test_induction_wraps_the_zoo_task():
    task = induction(5, half_len=6, d_vocab=20, seed=2)
    zoo = jc.zoo.induction_task(5, 6, 2, d_vocab=20)
    assert task.clean.shape == (5, 11)
    np.testing.assert_array_equal(task.clean, zoo.clean[:, :-1])
    np.testing.assert_array_equal(task.corrupt, zoo.corrupt[:, :-1])
    np.testing.assert_array_equal(task.answer, task.clean[:, 5])  # the repeat's next token
    for row, d in zip(np.asarray(task.clean), np.asarray(task.distractor)):
        assert d not in row
    assert task.labels[6] == "A0" and len(task.labels) == 11
    assert task.prompts == ()
    logits = jax.random.normal(jax.random.key(1), (5, 11, 20))
    # the metric is the zoo's, read over the (truncated) repeated half
    np.testing.assert_allclose(
        task.metric(logits),
        zoo.metric(jnp.pad(logits, ((0, 0), (0, 1), (0, 0)))),
        rtol=1e-5,
    )
    with_bos = induction(5, half_len=6, d_vocab=20, seed=2, bos=3)
    assert with_bos.clean.shape == (5, 12)
    assert (with_bos.clean[:, 0] == 3).all() and (with_bos.clean[:, 1:] != 3).all()
    assert (with_bos.corrupt[:, 1:] != 3).all()
    np.testing.assert_array_equal(with_bos.answer, with_bos.clean[:, 6])
    np.testing.assert_array_equal(with_bos.metric.targets[:, :-1], with_bos.clean[:, 1:])
    key = jax.random.key(7)
    np.testing.assert_array_equal(induction(2, seed=key).clean, induction(2, seed=key).clean)
    with pytest.raises(ValueError, match="bos=20"):
        induction(2, half_len=4, d_vocab=20, bos=20)


def test_induction_on_the_zoo_model():
    model = jc.zoo.induction_model()
    task = induction(32, half_len=12, seed=0)
    clean, corrupt = task.evaluate(model)
    assert clean > -0.5 and corrupt < clean - 2  # log-probs of the induction tokens
    logits = jax.vmap(model)(task.clean)
    assert jc.metrics.logit_diff(logits, task.answer, task.distractor) > 3


def test_greater_than(tok):
    task = greater_than(tok, 10, seed=0)
    assert task.clean.shape == task.corrupt.shape and task.clean.shape[0] == 10
    assert task.answer.shape == task.distractor.shape == (10, 100)
    for i, prompt in enumerate(task.prompts):
        m = re.fullmatch(r"The (\w+) lasted from the year 17(\d\d) to the year 17", prompt)
        assert m and m.group(1) != "war"  # " war" is not one token here
        yy = int(m.group(2))
        assert 2 <= yy <= 98 and yy == int(task.positions["yy"][i])
        assert task.corrupt_prompts[i] == prompt.replace(f"17{yy:02d}", "1701", 1)
        assert tok.decode([int(task.clean[i, int(task.positions["year"][i])])]) == f"{yy:02d}"
        above = [tok.decode([int(t)]) for t in task.answer[i] if t >= 0]
        below = [tok.decode([int(t)]) for t in task.distractor[i] if t >= 0]
        assert above == [f"{y:02d}" for y in range(yy + 1, 100)]
        assert below == [f"{y:02d}" for y in range(yy + 1)]
    assert greater_than(tok, 10, seed=0).prompts == task.prompts
    assert greater_than(tok, 10, seed=1).prompts != task.prompts
    # the metric: sum p(y > YY) - sum p(y <= YY), by hand
    logits = jax.random.normal(jax.random.key(0), (*task.clean.shape, len(tok.vocab)))
    p = np.asarray(jax.nn.softmax(logits[:, -1]))
    years = np.array([tok.ids[f"{y:02d}"] for y in range(100)])
    yy = np.asarray(task.positions["yy"])
    expected = np.mean(
        [p[i, years[yy[i] + 1 :]].sum() - p[i, years[: yy[i] + 1]].sum() for i in range(10)]
    )
    np.testing.assert_allclose(task.metric(logits), expected, rtol=1e-5)


def test_greater_than_needs_two_digit_year_tokens():
    digits = WordTokenizer(["The war lasted from the year"], drop={f"{y:02d}" for y in range(100)})
    with pytest.raises(ValueError, match=r"'00' into \['0', '0'\]"):
        greater_than(digits, 4)


def test_factual(tok):
    task = factual(tok, seed=0)
    mask = np.asarray(task.positions["subject_mask"])
    assert mask.shape == task.clean.shape and mask.any(1).all()
    np.testing.assert_array_equal(task.clean, task.corrupt)
    facts = {t.format(s): (s, a, d) for s, t, a, d in FACTS}
    assert len(task.prompts) > 5
    for i, prompt in enumerate(task.prompts):
        subject, answer, distractor = facts[prompt]
        assert tok.decode(task.clean[i][mask[i]]).strip() == subject
        assert tok.decode([int(task.answer[i])]) == " " + answer
        assert tok.decode([int(task.distractor[i])]) == " " + distractor
        assert answer not in ("Paris", "Tokyo")  # not single tokens here: dropped
    assert sorted(factual(tok, seed=1).prompts) == sorted(task.prompts)
    assert factual(tok, seed=1).prompts != task.prompts
    assert factual(tok, seed=0).prompts == task.prompts


def test_factual_user_prompts(tok):
    facts = [
        ("Colosseum", "The {} is located in the city of", "Rome"),
        ("Kremlin", "The {} is located in the city of", "Moscow"),
        ("Acropolis", "The {} is located in the city of", "Athens", "Cairo"),
    ]
    task = factual(tok, prompts=facts, seed=0)
    assert task.clean.shape[0] == 3
    for i, prompt in enumerate(task.prompts):
        ans = tok.decode([int(task.answer[i])])
        assert ans != tok.decode([int(task.distractor[i])])
        assert tok.decode([int(task.distractor[i])]).strip() in (
            "Rome",
            "Moscow",
            "Athens",
            "Cairo",
        )
    with pytest.raises(ValueError, match=r"answer ' Paris' is 6 tokens for this tokenizer"):
        factual(tok, prompts=[("Eiffel Tower", "The {} is located in the city of", "Paris")])
    with pytest.raises(ValueError, match="distractor ' Tokyo'"):
        factual(tok, prompts=[("Colosseum", "The {} is in", "Rome", "Tokyo")])
    # facts of different token lengths are all kept, right-padded
    mixed = factual(tok, prompts=[*facts[:2], ("Big Ben", "{} is in", "London")], seed=0)
    lengths = np.asarray(mixed.lengths)
    assert len(mixed) == 3 and len(set(lengths.tolist())) == 2
    assert mixed.clean.shape[1] == lengths.max() == len(mixed.labels)
    mask = np.asarray(mixed.positions["subject_mask"])
    for i, prompt in enumerate(mixed.prompts):
        assert list(tok.encode(prompt)) == list(np.asarray(mixed.clean)[i, : lengths[i]])
        assert not mask[i, lengths[i] :].any()
    with pytest.raises(ValueError, match=r"no fact has seq_len=2 tokens; lengths available"):
        factual(tok, prompts=facts, seq_len=2)


def test_from_strings(tok):
    rows = [
        (
            "Then, John and Mary went to the store. John gave a drink to",
            "Then, John and Mary went to the store. Mary gave a drink to",
            " Mary",
            " John",
        ),
        (
            "Then, Paul and Anna went to the store. Paul gave a drink to",
            "Then, Paul and Anna went to the store. Anna gave a drink to",
            " Anna",
            " Paul",
        ),
    ]
    task = from_strings(tok, rows)
    assert task.clean.shape == (2, len(tok.encode(rows[0][0])))
    assert [tok.decode([int(i)]) for i in task.answer] == [" Mary", " Anna"]
    assert task.labels[2] == " John" and len(task) == 2
    with pytest.raises(
        ValueError, match=r"answer ' Alice' is 6 tokens for this tokenizer \(\[' ', 'A'"
    ):
        from_strings(tok, [(rows[0][0], rows[0][1], " Alice", " John")])
    with pytest.raises(ValueError, match=r"did you mean ' Mary'"):
        from_strings(tok, [(rows[0][0], rows[0][1], "Mary", " John")])
    with pytest.raises(ValueError, match="row 0: clean .* is 15 tokens but corrupt .* is 25"):
        from_strings(tok, [(rows[0][0], rows[0][1].replace("Mary", "Alice"), " Mary", " John")])
    # rows of different lengths are right-padded; the metric reads each at its last token
    short = ("The store was", "The store wax", " Mary", " John")
    mixed = from_strings(tok, [rows[0], short])
    n = len(tok.encode(short[0]))
    np.testing.assert_array_equal(mixed.lengths, [15, n])
    np.testing.assert_array_equal(mixed.clean[1], [*tok.encode(short[0]), *[0] * (15 - n)])
    np.testing.assert_array_equal(mixed.corrupt[1, :n], tok.encode(short[1]))
    assert mixed.labels == tuple(tok.decode([i]) for i in tok.encode(rows[0][0]))
    logits = jax.random.normal(jax.random.key(0), (2, 15, len(tok.vocab)))
    last = np.array([14, n - 1])
    np.testing.assert_allclose(
        mixed.metric(logits),
        jc.metrics.logit_diff(logits, mixed.answer, mixed.distractor, position=last),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"lengths\[1\] = 16 is outside 1..seq = 1..15"):
        dataclasses.replace(mixed, lengths=jnp.array([3, 16]))


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_lm):
    return smollm2_lm


@pytest.mark.slow
def test_smollm2_ioi_and_factual(smollm2):
    model, tokenizer = smollm2
    start = time.perf_counter()
    task = ioi(tokenizer, 16, seed=0, templates="BABA", corruption="S2")
    clean, corrupt = task.evaluate(model)
    # the model prefers the indirect object (about 6 here); the S2 corruption flips the answer
    assert clean > 1.0, clean
    assert corrupt < 0.0, corrupt
    facts = factual(tokenizer, seed=0)
    assert facts.clean.shape[0] >= 8
    clean, corrupt = facts.evaluate(model)
    assert clean > 1.0 and clean == corrupt  # corrupt is clean: tracing corrupts by noise
    assert time.perf_counter() - start < 120


def test_smollm2_tokenizer_has_no_greater_than(smollm2):
    _, tokenizer = smollm2  # SmolLM2 writes numbers digit by digit
    with pytest.raises(ValueError, match="two-digit year"):
        greater_than(tokenizer, 4)
