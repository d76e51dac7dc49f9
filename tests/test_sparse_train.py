"""Pretraining with `jaxcirc.sparse.train_lm`: the loss against a NumPy cross-entropy, the task
accuracy against a loop over prompts, the batch order (each epoch a permutation), the nonzero
fraction reached, a killed run resumed from its checkpoint equal to the uninterrupted run, and
the bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcirc import sparse
from jaxcirc.models import weight_sparse
from jaxcirc.sparse._train import batch_rows
from jaxcirc.tasks import Task

VOCAB = 64
SHAPE = dict(d_model=32, n_layers=1, n_heads=2, d_head=8, d_mlp=64, d_vocab=VOCAB, n_ctx=16)


@pytest.fixture(scope="module")
def model():
    return weight_sparse(key=jax.random.key(0), **SHAPE)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    # a learnable stream: every token is the previous one + 1 (mod VOCAB) from a random start
    start = rng.integers(0, VOCAB, size=(24, 1))
    return ((start + np.arange(12)) % VOCAB).astype(np.int32)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_next_token_loss_matches_numpy(model, rows):
    logits = np.asarray(jax.vmap(model)(jnp.asarray(rows[:4])), np.float64)
    logp = log_softmax(logits)
    want = -np.mean([logp[b, t, rows[b, t + 1]] for b in range(4) for t in range(11)])
    got = float(sparse.next_token_loss(model, jnp.asarray(rows[:4])))
    assert got == pytest.approx(want, rel=1e-5)
    assert sparse.lm_loss(model, rows[:4], batch_size=3) == pytest.approx(want, rel=1e-5)


def test_task_accuracy_matches_a_loop(model):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, VOCAB, size=(8, 6)).astype(np.int32)
    lengths = np.array([6, 5, 6, 4, 6, 3, 6, 6], np.int32)
    answer, distractor = rng.integers(0, VOCAB, 8), rng.integers(0, VOCAB, 8)
    ids = [jnp.asarray(x) for x in (tokens, tokens[::-1], answer, distractor)]
    task = Task(*ids, metric=None, positions={}, prompts=(), corrupt_prompts=(), labels=(),
                name="toy", lengths=jnp.asarray(lengths))  # fmt: skip
    deltas = []
    for i in range(8):
        out = np.asarray(model(jnp.asarray(tokens[i])))[lengths[i] - 1]
        deltas.append(out[answer[i]] - out[distractor[i]])
    deltas = np.array(deltas)
    got = sparse.task_scores(model, task)
    assert got["accuracy"] == pytest.approx(np.mean(deltas > 0))
    assert got["loss"] == pytest.approx(np.mean(np.logaddexp(0.0, -deltas)), rel=1e-4)


def test_every_epoch_is_a_permutation():
    n, batch = 10, 4
    order = np.concatenate([batch_rows(3, s, batch, n) for s in range(10)])  # 4 epochs
    for e in range(4):
        assert sorted(order[e * n : (e + 1) * n]) == list(range(n))
    assert not np.array_equal(order[:n], order[n : 2 * n])  # a new order each epoch
    assert np.array_equal(batch_rows(3, 7, batch, n), order[28:32])  # a pure function


def test_sparse_run_reaches_the_fraction_and_learns(model, rows):
    trained, history = sparse.train_lm(
        model, rows, steps=40, batch=8, lr=1e-2, fraction=0.25, floor=1, anneal=(0.0, 0.5),
        eval_tokens=rows[:8], eval_every=20, progress=False,
    )  # fmt: skip
    assert history["fraction"][-1] == pytest.approx(0.25)
    # every included matrix holds exactly its scheduled share (ceil, at least the floor)
    counts = [
        (int(jnp.count_nonzero(x)), x.size)
        for p, x in jax.tree_util.tree_leaves_with_path(trained)
        if sparse.default_include(p, x)
    ]
    assert counts and all(c == int(np.ceil(0.25 * n)) for c, n in counts), counts
    total = sum(c for c, _ in counts) / sum(n for _, n in counts)
    assert total == pytest.approx(history["nonzero"][-1]) and 0.2 < total < 0.35
    assert history["eval"][-1]["loss"] < history["eval"][0]["loss"] + 1e-6
    assert history["loss"][-1] < history["loss"][0]


def test_a_killed_run_resumes_to_the_same_weights(model, rows, tmp_path):
    kw = dict(steps=8, batch=4, lr=1e-2, fraction=0.5, floor=1, key=5, progress=False)
    want, full = sparse.train_lm(model, rows, **kw)

    class Kill(Exception):
        pass

    def kill(step, record):
        if step == 5:
            raise Kill

    with pytest.raises(Kill):
        sparse.train_lm(model, rows, checkpoint=tmp_path, checkpoint_every=3, callback=kill, **kw)
    got, history = sparse.train_lm(model, rows, checkpoint=tmp_path, checkpoint_every=3, **kw)
    assert history["loss"] == full["loss"]  # steps 1..3 from the checkpoint, 4..8 rerun
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="lr=0.01.*lr=0.02"):
        sparse.train_lm(model, rows, checkpoint=tmp_path, **{**kw, "lr": 2e-2})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(fraction=0.0), r"fraction.*0\.0"),
        (dict(fraction=1.5), r"fraction.*1\.5"),
        (dict(seq=17), r"seq = 17.*2\.\.12"),
        (dict(batch=25), r"batch = 25.*1\.\.24"),
        (dict(steps=0), "steps"),
        (dict(warmup=1.0), "warmup"),
    ],
)
def test_bad_inputs_name_the_value(model, rows, kw, match):
    args = dict(steps=2, batch=2, progress=False) | kw
    with pytest.raises(ValueError, match=match):
        sparse.train_lm(model, rows, **args)


def test_tokens_outside_the_vocabulary_are_refused(model, rows):
    bad = rows.copy()
    bad[3, 4] = VOCAB + 7
    with pytest.raises(ValueError, match=str(VOCAB + 7)):
        sparse.train_lm(model, bad, steps=2, batch=2, progress=False)
