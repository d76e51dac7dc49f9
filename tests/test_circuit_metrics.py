"""Circuit scores against scikit-learn (ROC, AUROC), hand counts (SHD) and the definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logit_diff, tiny

from jaxcirc.graph import EdgeMask, NodeMask, ablation_values, graph, masked_logits
from jaxcirc.metrics._circuit import (
    above,
    auroc,
    completeness,
    faithfulness,
    faithfulness_curve,
    node_scores,
    roc,
    shd,
    top_n,
)


@pytest.fixture(scope="module")
def model():
    return tiny("gpt2", n_layers=2)


@pytest.fixture(scope="module")
def data():
    clean = jax.random.randint(jax.random.key(1), (3, 5), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (3, 5), 0, 50)
    return clean, corrupt


def _scores(g, seed=0, ties=False):
    v = jax.random.normal(jax.random.key(seed), g.valid.shape)
    if ties:
        v = jnp.round(v * 2) / 2
    return EdgeMask(v, g)


def test_roc_and_auroc_match_sklearn(model):
    metrics = pytest.importorskip("sklearn.metrics")
    g = graph(model)
    truth = np.asarray(jax.random.bernoulli(jax.random.key(7), 0.2, g.valid.shape)) & g.valid
    for ties in (False, True):
        scores = _scores(g, 3, ties)
        y = truth[g.valid]
        s = np.abs(np.asarray(scores.values))[g.valid]
        assert auroc(scores, EdgeMask(jnp.asarray(truth, float), g)) == pytest.approx(
            metrics.roc_auc_score(y, s), abs=1e-12
        )
        fpr, tpr = roc(scores, EdgeMask(jnp.asarray(truth, float), g))
        ref_fpr, ref_tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
    edges = [("embed", "logits"), ("L1H0", "logits")]
    perfect = EdgeMask.from_edges(g, edges)
    assert auroc(perfect, edges) == 1.0
    nodes = node_scores(perfect)
    assert auroc(nodes, edges) == 1.0
    with pytest.raises(ValueError, match="some but not all"):
        auroc(perfect, [])


def test_shd_top_n_above(model):
    g = graph(model)
    truth = [("embed", "logits"), ("L1H0", "logits"), ("L0H1", "L1H0.k")]
    found = EdgeMask.from_edges(g, [("embed", "logits"), ("L0H2", "MLP0")])
    assert shd(found, truth) == 3  # two missed, one extra
    assert shd(EdgeMask.from_edges(g, truth), truth) == 0
    scores = _scores(g)
    best = top_n(scores, 5)
    assert float(best.values.sum()) == 5
    kept = np.abs(np.asarray(scores.values))[np.asarray(best.values, bool)]
    rest = np.abs(np.asarray(scores.values))[~np.asarray(best.values, bool) & g.valid]
    assert kept.min() >= rest.max()
    assert not np.asarray(above(scores, 0.0).values)[~g.valid].any()
    with pytest.raises(ValueError, match="expected 0..110"):
        top_n(scores, 1000)
    nodes = top_n(NodeMask(jnp.arange(g.n_sources, dtype=float), g), 2)
    assert list(np.flatnonzero(nodes.values)) == [g.n_sources - 2, g.n_sources - 1]


def test_faithfulness_is_its_definition(model, data):
    clean, corrupt = data
    g = graph(model)
    ablated = ablation_values(model, clean, corrupt, g=g)

    def m(mask):
        return float(logit_diff(masked_logits(model, clean, mask, ablated)))

    full, empty = m(EdgeMask.ones(g)), m(EdgeMask(jnp.zeros(g.valid.shape), g))
    circuit = top_n(_scores(g), 30)
    expected = (m(circuit) - empty) / (full - empty)
    assert float(faithfulness(model, clean, corrupt, logit_diff, circuit)) == pytest.approx(
        expected, rel=1e-4
    )
    assert float(faithfulness(model, clean, corrupt, logit_diff, EdgeMask.ones(g))) == (
        pytest.approx(1.0, abs=1e-5)
    )
    assert float(completeness(model, clean, corrupt, logit_diff, EdgeMask.ones(g))) == (
        pytest.approx(1.0, abs=1e-5)
    )
    curve = faithfulness_curve(model, clean, corrupt, logit_diff, _scores(g), [0, 30, g.n_edges])
    assert curve.shape == (3,)
    np.testing.assert_allclose(np.asarray(curve)[[0, 2]], [0.0, 1.0], atol=1e-5)
    assert float(curve[1]) == pytest.approx(expected, rel=1e-4)
