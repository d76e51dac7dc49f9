"""ACDC against an independent Python loop, and a known answer: dead heads are pruned."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

from jaxcirc.graph import EdgeMask, ablation_values, graph, masked_logits
from jaxcirc.methods._acdc import acdc, kl_divergence


@pytest.fixture(scope="module")
def data():
    clean = jax.random.randint(jax.random.key(1), (3, 5), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (3, 5), 0, 50)
    return clean, corrupt


def _kl_numpy(logits, clean_logits):
    def log_softmax(x):
        x = np.asarray(x, np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(clean_logits), log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def naive_acdc(model, clean, corrupt, threshold):
    """Conmy et al.'s algorithm as plain Python: reverse order, test every edge of live nodes."""
    g = graph(model)
    ablated = ablation_values(model, clean, corrupt, g=g)
    clean_logits = jax.vmap(model)(clean)
    kept = g.valid.copy()

    def div(k):
        return _kl_numpy(
            masked_logits(model, clean, EdgeMask(jnp.asarray(k, float), g), ablated), clean_logits
        )

    current = div(kept)
    for j in sorted(range(g.n_targets), key=lambda j: -g.target_order[j]):
        name = g.targets[j]
        node = name.split(".")[0]
        live = name == "logits" or kept[g.sources.index(node)].any()
        for i in reversed(range(g.n_sources)):
            if not g.valid[i, j]:
                continue
            kept[i, j] = False
            if not live:
                continue
            trial = div(kept)
            if trial - current < threshold:
                current = trial
            else:
                kept[i, j] = True
    return kept, current


def test_matches_the_naive_loop(data):
    model = tiny("gpt2", n_layers=2)
    result = acdc(model, *data, threshold=3e-3)
    kept, current = naive_acdc(model, *data, 3e-3)
    np.testing.assert_array_equal(np.asarray(result.values, bool), kept)
    assert result.info["divergence"] == pytest.approx(current, rel=1e-4, abs=1e-7)
    assert 0 < kept.sum() < kept.size  # the threshold prunes some edges, not all
    np.testing.assert_allclose(
        kl_divergence(jax.vmap(model)(data[1]), jax.vmap(model)(data[0])),
        _kl_numpy(jax.vmap(model)(data[1]), jax.vmap(model)(data[0])),
        rtol=1e-5,
    )


def test_dead_heads_are_pruned_untested(data):
    model = tiny("attn_only", n_layers=2)
    dead = [(0, 1), (1, 3)]
    for layer, head in dead:
        model = eqx.tree_at(
            lambda m: m.blocks[layer].attn.W_O,
            model,
            model.blocks[layer].attn.W_O.at[head].set(0.0),
        )
    result = acdc(model, *data, threshold=1e-7)
    g = result.graph
    kept = np.asarray(result.values, bool)
    for layer, head in dead:
        assert not kept[g.source_index(f"L{layer}H{head}")].any()
    # the dead layer-1 head reaches nothing, so its inputs are removed without a test
    for x in "qkv":
        j = g.target_index(f"L1H3.{x}")
        assert not kept[:, j].any()
        assert not np.asarray(result.scores.signed)[:, j].any()
    assert result.info["divergence"] < 1e-6 * 10
    assert result.info["n_tested"] < g.n_edges


def test_bad_threshold(data):
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0; got -1"):
        acdc(tiny("gpt2"), *data, threshold=-1)
