"""Metrics on batched logits: against NumPy/torch, per-example positions, sets, jit/grad, sweeps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

import jaxcirc as jc
from jaxcirc.metrics import (
    at_position,
    bind,
    cross_entropy,
    kl_to_clean,
    logit_diff,
    normalize,
    normalized,
    prob_diff,
)

B, S, V = 4, 6, 11


@pytest.fixture
def logits():
    return jax.random.normal(jax.random.key(0), (B, S, V)) * 3


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_logit_diff_by_hand(logits):
    x = np.asarray(logits)
    a, d = np.array([1, 2, 3, 4]), np.array([5, 0, 0, 10])
    expected = np.mean([x[b, -1, a[b]] - x[b, -1, d[b]] for b in range(B)])
    np.testing.assert_allclose(logit_diff(logits, a, d), expected, rtol=1e-6)
    # a fixed position, a negative one, per-example positions
    expected2 = np.mean([x[b, 2, a[b]] - x[b, 2, d[b]] for b in range(B)])
    np.testing.assert_allclose(logit_diff(logits, a, d, position=2), expected2, rtol=1e-6)
    np.testing.assert_allclose(logit_diff(logits, a, d, position=-4), expected2, rtol=1e-6)
    pos = np.array([0, 5, -1, 3])
    expected3 = np.mean([x[b, pos[b], a[b]] - x[b, pos[b], d[b]] for b in range(B)])
    np.testing.assert_allclose(logit_diff(logits, a, d, position=pos), expected3, rtol=1e-6)
    # a scalar id is shared by the batch
    np.testing.assert_allclose(
        logit_diff(logits, 3, 7), np.mean(x[:, -1, 3] - x[:, -1, 7]), rtol=1e-6
    )


def test_sets_with_padding(logits):
    x = np.asarray(logits)[:, -1]
    answer = np.array([[1, 2, -1], [3, -1, -1], [4, 5, 6], [0, -1, -1]])
    distractor = np.array([[7, -1], [8, 9], [10, -1], [1, 2]])
    p = np_softmax(x.astype(np.float64))
    ld, pd = [], []
    for b in range(B):
        a, d = answer[b][answer[b] >= 0], distractor[b][distractor[b] >= 0]
        ld.append(x[b, a].mean() - x[b, d].mean())
        pd.append(p[b, a].sum() - p[b, d].sum())
    np.testing.assert_allclose(logit_diff(logits, answer, distractor), np.mean(ld), rtol=1e-5)
    np.testing.assert_allclose(prob_diff(logits, answer, distractor), np.mean(pd), atol=1e-6)
    ce = np.mean([-np.log(p[b, answer[b][answer[b] >= 0]].sum()) for b in range(B)])
    np.testing.assert_allclose(cross_entropy(logits, answer), ce, rtol=1e-5)


def test_against_torch(logits):
    x = torch.tensor(np.asarray(logits))
    clean = jax.random.normal(jax.random.key(1), (B, S, V))
    c = torch.tensor(np.asarray(clean))
    a, d = np.array([1, 2, 3, 4]), np.array([5, 0, 0, 10])
    p = torch.softmax(x[:, -1], -1)
    ta, td = torch.tensor(a), torch.tensor(d)
    expected = (p[torch.arange(B), ta] - p[torch.arange(B), td]).mean()
    np.testing.assert_allclose(prob_diff(logits, a, d), expected.numpy(), atol=1e-6)
    expected = F.cross_entropy(x[:, -1], ta)
    np.testing.assert_allclose(cross_entropy(logits, a), expected.numpy(), rtol=1e-5)
    # KL(clean || patched) = kl_div(input=log p_patched, target=log p_clean)
    expected = F.kl_div(
        F.log_softmax(x[:, 2], -1),
        F.log_softmax(c[:, 2], -1),
        log_target=True,
        reduction="batchmean",
    )
    np.testing.assert_allclose(kl_to_clean(logits, clean, position=2), expected.numpy(), rtol=1e-5)
    # clean logits already at the position
    np.testing.assert_allclose(
        kl_to_clean(logits, clean[:, 2], position=2), expected.numpy(), rtol=1e-5
    )
    assert float(kl_to_clean(clean, clean)) == pytest.approx(0.0, abs=1e-6)


def test_grad_and_jit(logits):
    a, d = jnp.array([1, 2, 3, 4]), jnp.array([5, 0, 0, 10])
    g = jax.grad(logit_diff)(logits, a, d, position=1)
    expected = np.zeros((B, S, V), np.float32)
    for b in range(B):
        expected[b, 1, int(a[b])] += 1 / B
        expected[b, 1, int(d[b])] -= 1 / B
    np.testing.assert_allclose(g, expected, atol=1e-7)
    for fn in (prob_diff, logit_diff):
        jitted = jax.jit(fn, static_argnames=())(logits, a, d, position=jnp.array([0, 1, 2, 3]))
        eager = fn(logits, a, d, position=np.array([0, 1, 2, 3]))
        np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    g = jax.grad(kl_to_clean)(logits, logits)  # at its minimum
    np.testing.assert_allclose(g, 0, atol=1e-6)


def test_normalized():
    np.testing.assert_allclose(normalized(jnp.array([1.0, 3.0, 2.0]), 3.0, 1.0), [0, 1, 0.5])
    with pytest.raises(ValueError, match="do not differ"):
        normalized(2.0, 1.5, 1.5)
    with pytest.raises(ValueError, match="do not differ"):
        normalize(lambda x: x.sum(), 1.0, 1.0)
    with pytest.raises(Exception, match="clean value == corrupt value"):
        jax.jit(normalized)(2.0, 1.5, 1.5).block_until_ready()
    np.testing.assert_allclose(jax.jit(normalized)(2.0, 3.0, 1.0), 0.5)
    with pytest.raises(ValueError, match="do not differ"):  # concrete baselines: caught at once
        jax.jit(lambda m: normalized(m, 1.5, 1.5))(2.0)


def test_shape_errors(logits):
    with pytest.raises(ValueError, match=r"logits\[None\]"):
        logit_diff(logits[0], 1, 2)
    with pytest.raises(ValueError, match=r"shape \[batch\] = \[4\]"):
        logit_diff(logits, 1, 2, position=np.array([0, 1]))
    with pytest.raises(ValueError, match="answer must have shape"):
        logit_diff(logits, np.array([1, 2]), 2)
    with pytest.raises(ValueError, match="integer token ids"):
        prob_diff(logits, np.array([1.0, 2, 3, 4]), 2)
    with pytest.raises(ValueError, match="position must be an int"):
        at_position(logits, 1.5)
    with pytest.raises(ValueError, match="clean_logits"):
        kl_to_clean(logits, logits[:, :, :5])


def test_bind_in_a_sweep_reuses_the_compiled_sweep():
    model = tiny("gpt2")
    clean = jax.random.randint(jax.random.key(1), (3, 5), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (3, 5), 0, 50)
    a, d = jnp.array([1, 2, 3]), jnp.array([4, 5, 6])
    traces = []

    def counted(logits, answer, distractor):
        traces.append(1)
        return logit_diff(logits, answer, distractor)

    got = jc.patching.sweep(
        model, clean, corrupt, bind(counted, answer=a, distractor=d), "resid_post", "position"
    )
    n_traces = len(traces)
    clean_v = bind(logit_diff, answer=a, distractor=d)(jax.vmap(model)(clean))
    corrupt_v = bind(logit_diff, answer=a, distractor=d)(jax.vmap(model)(corrupt))
    # the readout sees only the last layer's last position: patching it gives the clean value
    np.testing.assert_allclose(got[-1, -1], clean_v, rtol=1e-5)
    np.testing.assert_allclose(got[-1, :-1], corrupt_v, rtol=1e-5)
    assert not np.allclose(got[0], corrupt_v)  # earlier layers move the metric
    # other answers: new values from the same compiled sweep (the ids are traced, not baked in)
    other = jc.patching.sweep(
        model, clean, corrupt, bind(counted, answer=d, distractor=a), "resid_post", "position"
    )
    np.testing.assert_allclose(other, -got, rtol=1e-5, atol=1e-5)
    assert len(traces) == n_traces
    norm = jc.patching.sweep(
        model,
        clean,
        corrupt,
        normalize(bind(logit_diff, answer=a, distractor=d), clean_v, corrupt_v),
        "resid_post",
        "position",
    )
    np.testing.assert_allclose(
        norm, (got - corrupt_v) / (clean_v - corrupt_v), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(norm[-1, -1], 1.0, atol=1e-4)


@pytest.mark.parametrize("position", [-1, 2, np.array([0, 5, -1, 3])], ids=["last", "2", "array"])
def test_on_positions_equals_the_full_call(logits, position):
    a, d = jnp.array([1, 2, 3, 4]), jnp.array([[5, 6], [0, -1], [0, 7], [10, -1]])
    other = jax.random.normal(jax.random.key(9), (B, S, V))
    kw = {} if isinstance(position, int) and position == -1 else dict(position=position)
    base = bind(logit_diff, answer=a, distractor=d, **kw)
    metrics = {
        "logit_diff": base,
        "prob_diff": bind(prob_diff, answer=a, distractor=d, **kw),
        "cross_entropy": bind(cross_entropy, answer=a, **kw),
        "kl_to_clean": bind(kl_to_clean, clean_logits=other, **kw),
        "normalized": normalize(base, 2.0, -1.0),
    }
    expected = np.broadcast_to(np.where(np.asarray(position) < 0, position + S, position), (B,))
    for name, metric in metrics.items():
        pos = jc.metrics.read_positions(metric, B, S)
        np.testing.assert_array_equal(pos, expected[:, None], err_msg=name)
        read = jnp.take_along_axis(logits, pos[:, :, None], 1)
        assert read.shape == (B, 1, V)
        np.testing.assert_array_equal(metric.on_positions(read), metric(logits), err_msg=name)
        jitted = eqx.filter_jit(lambda m, x: m.on_positions(x))(metric, read)
        np.testing.assert_allclose(jitted, metric(logits), rtol=1e-6, err_msg=name)


def test_read_positions_of_undeclared_metrics(logits):
    assert jc.metrics.read_positions(lambda x: x.sum(), B, S) is None
    custom = bind(lambda x, answer: x[:, :, answer].mean(), answer=3)
    assert jc.metrics.read_positions(custom, B, S) is None
    assert jc.metrics.read_positions(normalize(custom, 1.0, 0.0), B, S) is None
    with pytest.raises(ValueError, match="does not declare the positions"):
        custom.on_positions(logits[:, :1])
    with pytest.raises(ValueError, match=r"\[batch, 1, d_vocab\]; got shape \[4, 6, 11\]"):
        bind(logit_diff, answer=1, distractor=2).on_positions(logits)
    with pytest.raises(ValueError, match=r"shape \[batch\] = \[4\]"):
        bind(logit_diff, answer=1, distractor=2, position=np.array([1, 2])).positions(B, S)
