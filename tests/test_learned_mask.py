"""Learned masks: the straight-through estimator, the penalty's effect, dead units pruned."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

from jaxcirc.methods import _learned_mask
from jaxcirc.methods._learned_mask import hard_concrete_ste, learned_mask


@pytest.fixture(scope="module")
def data():
    clean = jax.random.randint(jax.random.key(1), (4, 5), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (4, 5), 0, 50)
    return clean, corrupt


def test_straight_through():
    theta = jnp.array([-2.0, -0.1, 0.0, 0.7])
    np.testing.assert_array_equal(hard_concrete_ste(theta, 0.5), [0, 0, 1, 1])
    grad = jax.grad(lambda t: (hard_concrete_ste(t, 0.5) * jnp.arange(4.0)).sum())(theta)
    s = jax.nn.sigmoid(theta / 0.5)
    np.testing.assert_allclose(grad, jnp.arange(4.0) * s * (1 - s) / 0.5, rtol=1e-6)


@pytest.fixture(scope="module")
def dead_model():
    model = tiny("attn_only", n_layers=2)
    for layer, head in [(0, 2), (1, 0)]:
        model = eqx.tree_at(
            lambda m: m.blocks[layer].attn.W_O,
            model,
            model.blocks[layer].attn.W_O.at[head].set(0.0),
        )
    return model


def test_node_masks_prune_dead_heads(dead_model, data):
    r = learned_mask(dead_model, *data, level="node", penalty=1e-3, steps=200, ablation="zero")
    g = r.graph
    kept = np.asarray(r.values, bool)
    assert not kept[g.source_index("L0H2")] and not kept[g.source_index("L1H0")]
    assert kept[g.source_index("embed")]  # removing the embedding costs far more than 1e-3
    assert float(r.info["divergence"]) < 1e-3


def test_penalty_trades_size_for_divergence(data):
    model = tiny("gpt2", n_layers=2)
    none = learned_mask(model, *data, penalty=0.0, steps=50)
    big = learned_mask(model, *data, penalty=100.0, steps=100)
    g = none.graph
    assert float(none.values.sum()) == g.n_edges and float(none.info["divergence"]) < 1e-6
    assert float(big.values.sum()) < 0.2 * g.n_edges
    assert float(big.info["divergence"]) > float(none.info["divergence"])


def test_compiles_once(data):
    model = tiny("gpt2", n_layers=1)
    counted = eqx.debug.assert_max_traces(_learned_mask._train.__wrapped__, max_traces=1)
    _learned_mask._train = eqx.filter_jit(counted)
    try:
        for penalty in (0.1, 0.5, 2.0):
            learned_mask(model, *data, penalty=penalty, steps=5)
    finally:
        _learned_mask._train = eqx.filter_jit(_learned_mask._train.__wrapped__.__wrapped__)


def test_bad_input(data):
    model = tiny("gpt2", n_layers=1)
    with pytest.raises(ValueError, match="unknown level 'edges'"):
        learned_mask(model, *data, level="edges")
    with pytest.raises(ValueError, match="penalty must be a finite number >= 0; got -1"):
        learned_mask(model, *data, penalty=-1.0)
