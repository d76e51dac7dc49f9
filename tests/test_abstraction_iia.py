"""`abstraction_iia`: interchange-intervention accuracy of an abstraction against the model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomise

import jaxcirc as jc
from jaxcirc import zoo
from jaxcirc.methods import abstraction_iia, unit_activations
from jaxcirc.models import Replacement

SITE, Z_SITE = "hidden.1", "blocks.1.attn.hook_z"
Z_REF = jc.SiteRef("z", 1)  # resolved without listing the model's sites


@pytest.fixture(scope="module")
def mlp():
    return zoo.digits_mlp()


@pytest.fixture(scope="module")
def data():
    return zoo.digits_data()


@pytest.fixture(scope="module")
def gpt():
    k1, k2 = jax.random.split(jax.random.key(0))
    model = jc.models.gpt2(
        key=k1, n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16
    )
    return randomise(model, k2, scale=0.3)


def _variance_abstraction(mlp, x, n_keep):
    """Keep the `n_keep` highest-variance units of `hidden.1`, the rest at their means."""
    a = np.asarray(unit_activations(mlp, x, SITE))[..., 0]
    keep = np.zeros(a.shape[1], bool)
    keep[np.argsort(-a.var(0))[:n_keep]] = True
    return Replacement.constants(SITE, keep, a.mean(0))


def _draws(key, n_trials, n, n_units):
    """The documented trial draws, one trial at a time."""
    out = []
    for k in jax.random.split(key, n_trials):
        k_i, k_j, k_u = jax.random.split(k, 3)
        i = int(jax.random.randint(k_i, (), 0, n))
        j = (i + int(jax.random.randint(k_j, (), 1, n))) % n
        out.append((i, j, np.asarray(jax.random.uniform(k_u, (n_units,)))))
    return out


def _mlp_logits_from_hidden1(mlp, h):
    w, b = np.asarray(mlp.weights[2], np.float64), np.asarray(mlp.biases[2], np.float64)
    return h @ w.T + b


def test_keep_all_gives_iia_one(mlp, data, gpt):
    r = Replacement.identity(SITE, 128)
    res = abstraction_iia(mlp, r, data.x_test[:100], n_trials=300, key=jax.random.key(0))
    np.testing.assert_array_equal(res.iia, [1.0, 1.0, 1.0])
    assert res.accuracy == 1.0 and res.kl == pytest.approx(0.0, abs=1e-6)
    tokens = jax.random.randint(jax.random.key(1), (8, 6), 0, 50)
    r = Replacement.identity(Z_SITE, 4, 8)
    res = abstraction_iia(gpt, r, tokens, p=0.5, n_trials=16, key=jax.random.key(0))
    np.testing.assert_array_equal(res.iia, [1.0])


def test_mlp_matches_brute_force_loop(mlp, data):
    x, n_trials, ps = data.x_test[:60], 50, (0.1, 0.5, 1.0)
    r = _variance_abstraction(mlp, data.x_train, 24)
    key = jax.random.key(42)
    res = abstraction_iia(
        mlp, r, x, p=ps, n_trials=n_trials, batch_size=16, key=key, labels=data.y_test[:60]
    )
    # reference: float64 numpy, the swap and the replacement written out unit by unit
    a = np.asarray(unit_activations(mlp, x, SITE), np.float64)[..., 0]
    keep, const = np.asarray(r.keep), np.asarray(r.offset, np.float64)[:, 0]
    z = np.zeros((n_trials, len(ps)))
    for t, (i, j, u) in enumerate(_draws(key, n_trials, len(x), 128)):
        assert i != j
        for q, p in enumerate(ps):
            swapped = a[i].copy()
            for k in range(128):
                if keep[k] and u[k] < p:
                    swapped[k] = a[j, k]
            abstract = np.where(keep, swapped, const)
            full = _mlp_logits_from_hidden1(mlp, swapped)
            z[t, q] = full.argmax() != _mlp_logits_from_hidden1(mlp, abstract).argmax()
    np.testing.assert_array_equal(res.iia, 1.0 - z.mean(0))
    assert 0.0 < res.iia[-1] < res.iia[0] < 1.0  # not a trivial case
    # observational agreement, KL and task accuracy
    full = _mlp_logits_from_hidden1(mlp, a)
    abst = _mlp_logits_from_hidden1(mlp, np.where(keep, a, const))
    assert res.accuracy == pytest.approx((full.argmax(-1) == abst.argmax(-1)).mean())
    lp, lq = jax.nn.log_softmax(full), jax.nn.log_softmax(abst)
    assert res.kl == pytest.approx(float((np.exp(lp) * (lp - lq)).sum(-1).mean()), rel=1e-4)
    y = np.asarray(data.y_test[:60])
    assert res.task_accuracy_full == pytest.approx((full.argmax(-1) == y).mean())
    assert res.task_accuracy_abstraction == pytest.approx((abst.argmax(-1) == y).mean())


def test_transformer_matches_brute_force_loop(gpt):
    tokens = jax.random.randint(jax.random.key(2), (10, 6), 0, 50)
    keep = np.array([True, False, True, True])
    const = jax.random.normal(jax.random.key(3), (4, 8))
    r = Replacement.constants(Z_SITE, keep, const)
    key, n_trials, position = jax.random.key(7), 24, 2
    res = abstraction_iia(
        gpt, r, tokens, p=(0.3, 0.8), n_trials=n_trials, batch_size=8, key=key, position=position
    )
    # reference: the library's own Patch intervention, one trial at a time
    _, acts = jax.vmap(gpt.run)(tokens)
    z = np.asarray(acts[Z_SITE])
    run = eqx.filter_jit(lambda m, t: m(t)[position].argmax())
    hits = np.zeros((n_trials, 2))
    for t, (i, j, u) in enumerate(_draws(key, n_trials, len(tokens), 4)):
        for q, p in enumerate((0.3, 0.8)):
            swap = keep & (u < p)  # the same heads at every position
            swapped = np.where(swap[None, :, None], z[j], z[i])
            abstract = np.where(keep[None, :, None], swapped, np.asarray(const)[None])
            full = jc.intervene(gpt, {Z_REF: jc.Patch(jnp.asarray(swapped))})
            abst = jc.intervene(gpt, {Z_REF: jc.Patch(jnp.asarray(abstract))})
            hits[t, q] = run(full, tokens[i]) != run(abst, tokens[i])
    np.testing.assert_array_equal(res.iia, 1.0 - hits.mean(0))
    assert res.iia.min() < 1.0


def test_constant_on_a_unit_nobody_reads_gives_iia_one(mlp, data):
    # zero the outgoing weights of 32 units; replacing them by their true mean changes nothing
    dead = np.arange(128) % 4 == 0
    w2 = jnp.where(jnp.asarray(dead)[None, :], 0.0, mlp.weights[2])
    model = zoo.MLPClassifier((*mlp.weights[:2], w2), mlp.biases)
    x = data.x_test[:200]
    mean = np.asarray(unit_activations(model, x, SITE))[..., 0].mean(0)
    assert mean[dead].max() > 0.1  # the units are alive, just unread
    r = Replacement.constants(SITE, ~dead, mean)
    res = abstraction_iia(model, r, x, n_trials=2000, key=jax.random.key(3))
    np.testing.assert_array_equal(res.iia, [1.0, 1.0, 1.0])
    assert res.accuracy == 1.0
    # the same units in the trained model do matter (the test can fail)
    res = abstraction_iia(mlp, r, x, p=0.5, n_trials=2000, key=jax.random.key(3))
    assert res.iia[0] < 1.0


def test_compiles_once(mlp, data):
    from jaxcirc.methods import _abstraction_iia, downstream

    counted = eqx.debug.assert_max_traces(_abstraction_iia._trials, max_traces=1)
    run = eqx.filter_jit(counted)
    acts = unit_activations(mlp, data.x_test[:50], SITE)
    full = downstream(mlp, SITE)
    p = jnp.array([0.1, 0.5])
    keys = jax.random.split(jax.random.key(0), 64)
    outs = []
    for n_keep in (16, 64):  # other keep sets and constants: the same program
        r = _variance_abstraction(mlp, data.x_train, n_keep)
        outs.append(run(full, r, acts, data.x_test[:50], p, keys, None, 16))
    assert eqx.debug.get_num_traces(counted) == 1
    assert outs[0].shape == (64, 2) and not np.array_equal(outs[0], outs[1])


def test_bad_input(mlp, data, gpt):
    r = Replacement.identity(SITE, 128)
    x = data.x_test[:10]
    for p in (-0.1, 1.5, (0.2, 2.0)):
        with pytest.raises(ValueError, match=r"p must be probabilities in \[0, 1\]"):
            abstraction_iia(mlp, r, x, p=p, key=jax.random.key(0))
    with pytest.raises(ValueError, match="at least 2 inputs"):
        abstraction_iia(mlp, r, x[:1], key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(64, 1\); the site has \(128, 1\)"):
        abstraction_iia(mlp, Replacement.identity(SITE, 64), x, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"did you mean 'hidden.1'"):
        abstraction_iia(mlp, Replacement.identity("hiden.1", 128), x, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_trials must be a positive int"):
        abstraction_iia(mlp, r, x, n_trials=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"labels must have shape \[n=10\]"):
        abstraction_iia(mlp, r, x, labels=data.y_test[:5], key=jax.random.key(0))
    tokens = jnp.zeros((4, 6), jnp.int32)
    with pytest.raises(ValueError, match="position 6 out of range"):
        abstraction_iia(
            gpt, Replacement.identity(Z_SITE, 4, 8), tokens, position=6, key=jax.random.key(0)
        )
