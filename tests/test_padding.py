"""Right-padded batches of prompts of different lengths equal each prompt run alone.

In a causal model a token after a prompt's last one cannot change any earlier position, so the
padding (random ids here: pads are never read) needs no attention mask.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES, tiny
from test_tasks import WordTokenizer, _all_texts

import jaxcirc as jc
from jaxcirc.methods._tracing import causal_trace, noise_keys
from jaxcirc.metrics import bind, logit_diff
from jaxcirc.tasks import factual, from_strings

LENGTHS = (4, 7, 5)
SEQ = max(LENGTHS)
ATOL = 1e-5


def padded(seed: int):
    """A `[3, SEQ]` batch: row `i` is `LENGTHS[i]` prompt tokens, then random padding."""
    return jax.random.randint(jax.random.key(seed), (len(LENGTHS), SEQ), 0, 50)


CLEAN, CORRUPT = padded(1), padded(2).at[:, 0].set(padded(1)[:, 0])
ANSWER, DISTRACTOR = jnp.array([3, 7, 11]), jnp.array([5, 2, 9])


def row_logit_diff(logits, row, answer, distractor, position):
    """The logit difference of one row of the batch only (`row` traced: one compiled sweep)."""
    one = lambda x: jax.lax.dynamic_slice_in_dim(x, row, 1)
    return logit_diff(one(logits), one(answer), one(distractor), position=position)


def row_metric(i: int):
    row, last = jnp.int32(i), jnp.int32(LENGTHS[i] - 1)
    return bind(row_logit_diff, row=row, answer=ANSWER, distractor=DISTRACTOR, position=last)


def alone_metric(i: int):
    return bind(logit_diff, answer=ANSWER[i : i + 1], distractor=DISTRACTOR[i : i + 1])


def alone(tokens, i: int):
    return tokens[i : i + 1, : LENGTHS[i]]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits(family):
    model = tiny(family)
    logits = jax.vmap(model)(CLEAN)
    for i, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[i, :n], model(CLEAN[i, :n]), atol=ATOL)


def test_sweep():
    model = tiny("llama", n_layers=3)
    for i, n in enumerate(LENGTHS):
        metric = row_metric(i)
        got = jc.patching.sweep(model, CLEAN, CORRUPT, metric, site="resid_pre", per="position")
        assert got.shape == (3, SEQ)
        own = jc.patching.sweep(model, alone(CLEAN, i), alone(CORRUPT, i), alone_metric(i))
        np.testing.assert_allclose(got[:, :n], own, atol=ATOL)
        unpatched = metric(jax.vmap(model)(CORRUPT))
        np.testing.assert_allclose(got[:, n:], np.full((3, SEQ - n), unpatched), atol=ATOL)


def test_causal_trace():
    model = tiny("gpt2", n_layers=3)
    mask = jnp.zeros((3, SEQ), bool).at[0, 1:3].set(True).at[1, 2].set(True).at[2, 0:2].set(True)
    keys = noise_keys(jax.random.key(0), 3, 2)
    kw = dict(noise_std=0.5, n_samples=2, window=2, chunk_size=3)
    got = causal_trace(model, CLEAN, mask, ANSWER, lengths=jnp.array(LENGTHS), key=keys, **kw)
    runs = [
        causal_trace(model, alone(CLEAN, i), alone(mask, i), ANSWER[i : i + 1], key=keys[i : i + 1],
                     **kw)
        for i in range(3)
    ]  # fmt: skip
    for kind, grid in got.indirect.items():
        own = [
            np.concatenate([r.indirect[kind], np.full((3, SEQ - n), r.corrupt_prob)], axis=1)
            for r, n in zip(runs, LENGTHS)
        ]
        np.testing.assert_allclose(grid, np.mean(own, 0), atol=ATOL, err_msg=kind)
    np.testing.assert_allclose(got.clean_prob, np.mean([r.clean_prob for r in runs]), atol=ATOL)
    np.testing.assert_allclose(got.corrupt_prob, np.mean([r.corrupt_prob for r in runs]), atol=ATOL)
    # padding is never noised, and lengths are checked
    with pytest.raises(ValueError, match="prompt 0 marks position 5, at or beyond its length 4"):
        causal_trace(model, CLEAN, mask.at[0, 5].set(True), ANSWER, lengths=jnp.array(LENGTHS),
                     key=keys, **kw)  # fmt: skip
    with pytest.raises(ValueError, match=r"lengths\[1\] = 8 is outside 1..seq = 1..7"):
        causal_trace(model, CLEAN, mask, ANSWER, lengths=jnp.array([4, 8, 5]), key=keys, **kw)
    with pytest.raises(ValueError, match=r"\[batch, n_samples\] = \[3, 2\]"):
        causal_trace(model, CLEAN, mask, ANSWER, key=keys[:2], **kw)


def test_noise_does_not_depend_on_the_padded_length():
    model = tiny("gpt2")
    key = jax.random.key(4)
    noisy = jc.intervene(model, {jc.SiteRef("embed"): jc.Noise(0.5, key)})
    long = noisy.run(CLEAN[1])[1][jc.SiteRef("embed")]
    short = noisy.run(CLEAN[1, :4])[1][jc.SiteRef("embed")]
    np.testing.assert_array_equal(long[:4], short)


def test_eap():
    model = tiny("gpt2", seed=3)
    for i in range(3):
        got = jc.methods.eap(model, CLEAN, CORRUPT, row_metric(i))
        own = jc.methods.eap(model, alone(CLEAN, i), alone(CORRUPT, i), alone_metric(i))
        np.testing.assert_allclose(got.values, own.values, atol=ATOL)


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer(_all_texts())


@eqx.filter_jit
def _metric(model, task):
    return task.metric(jax.vmap(model)(task.clean))


def test_factual_and_from_strings_keep_every_length(tok):
    model = tiny("gpt2", d_vocab=len(tok.vocab))
    facts = [
        ("Colosseum", "The {} is located in the city of", "Rome", "Paris"),
        ("Big Ben", "{} is in", "London", "Rome"),
        ("Spain", "The capital city of {} is", "Madrid", "Rome"),
    ]
    task = factual(tok, prompts=facts, seed=0)
    assert len(task) == 3 and len(set(np.asarray(task.lengths).tolist())) == 3
    each = [float(_metric(model, factual(tok, prompts=[f]))) for f in facts]
    np.testing.assert_allclose(_metric(model, task), np.mean(each), atol=ATOL)
    rows = [(task.prompts[i], task.prompts[i], " Rome", " Paris") for i in range(3)]
    rows[0] = (rows[0][0], rows[0][0].replace("The", "A", 1), " Rome", " Paris")
    strings = from_strings(tok, rows)
    np.testing.assert_array_equal(strings.lengths, task.lengths)
    each = [float(_metric(model, from_strings(tok, [r]))) for r in rows]
    np.testing.assert_allclose(_metric(model, strings), np.mean(each), atol=ATOL)
