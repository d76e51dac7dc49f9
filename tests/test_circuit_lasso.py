"""CircuitLasso (Yin et al. 2026, arXiv 2606.16939): support recovery on a linear SEM,
compile-once over targets, bad inputs, model granularities and a tracr case."""

import warnings

import equinox as eqx
import jax
import numpy as np
import pytest

import jaxcirc as jc
import jaxcirc.methods._circuit_lasso as cl
from jaxcirc.graph import Circuit, Scores, graph

TRUTH = {(0, 1), (0, 2), (1, 3), (2, 4), (3, 4)}


def sem(n=600, widths=(3, 3, 3, 3, 3), seed=0, strength=0.6):
    """`X_b = Σ_{a<b, (a,b) true} X_a A_ab + noise`, A_ab a scaled identity (sparse, block
    upper-triangular)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for b, d in enumerate(widths):
        x = rng.normal(size=(n, d))
        for a in range(b):
            if (a, b) in TRUTH:
                m = np.eye(widths[a], d) * strength / blocks[a].std()
                x = x + blocks[a] @ m
        blocks.append(x)
    truth = np.zeros((len(widths), len(widths)), bool)
    for a, b in TRUTH:
        truth[a, b] = True
    return blocks, truth


def test_sem_support_recovered_at_the_edge_count():
    blocks, truth = sem()
    fit = cl.block_lasso(blocks, n_edges=len(TRUTH), n_alphas=30, eps=1e-2)
    assert fit.select == "count"
    np.testing.assert_array_equal(fit.support, truth)
    # some λ of the path recovers it, and edge counts grow along the path
    assert len(TRUTH) in fit.edge_counts
    assert np.all(np.diff(fit.edge_counts) >= 0)
    # A is block upper-triangular: nothing on or below the diagonal blocks
    A = fit.coef
    assert A.shape == (15, 15)
    for a in range(5):
        for b in range(a + 1):
            assert not A[3 * a : 3 * a + 3, 3 * b : 3 * b + 3].any()
    # true blocks outscore every false one, so the ranking is perfect
    s = fit.block_scores[np.triu(np.ones((5, 5), bool), 1)]
    t = truth[np.triu(np.ones((5, 5), bool), 1)]
    assert s[t].min() > s[~t].max()


def test_one_trace_for_all_targets(monkeypatch):
    """Targets of different widths share one compiled path (masked, padded columns)."""
    counted = eqx.debug.assert_max_traces(cl._one_problem, max_traces=1)
    monkeypatch.setattr(cl, "_one_problem", counted)
    blocks, _ = sem(n=90, widths=(2, 3, 4, 3, 2), seed=1)
    fit = cl.block_lasso(blocks, select="bic", n_alphas=4, eps=0.1)
    assert eqx.debug.get_num_traces(counted) == 1
    assert fit.block_scores.shape == (5, 5) and np.isfinite(fit.block_scores).all()


def test_bad_inputs_are_named():
    blocks, _ = sem(n=60)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0; got -0.5"):
        cl.block_lasso(blocks, alpha=-0.5)
    with pytest.raises(ValueError, match="at least 3 samples"):
        cl.block_lasso([b[:2] for b in blocks], alpha=0.1)
    with pytest.raises(ValueError, match="at least 2 groups"):
        cl.block_lasso(blocks, groups=np.zeros(60, int))
    with pytest.raises(ValueError, match="unknown select 'cv'"):
        cl.block_lasso(blocks, select="cv")
    with pytest.raises(ValueError, match="block 'b' has shape"):
        cl.block_lasso({"a": blocks[0], "b": blocks[1][:10]}, alpha=0.1)


def test_zero_variance_columns_dropped_with_a_warning():
    blocks, _ = sem(n=60)
    blocks[1] = blocks[1].copy()
    blocks[1][:, 2] = 7.0  # constant
    with pytest.warns(UserWarning, match=r"zero-variance.*source1\[2\]"):
        fit = cl.block_lasso(blocks, alpha=0.05)
    assert "source1[2]" in fit.dropped
    assert np.isfinite(fit.coef).all() and np.isfinite(fit.block_scores).all()
    assert not fit.coef[5].any() and not fit.coef[:, 5].any()


@pytest.fixture(scope="module")
def tiny():
    return jc.models.gpt2(
        key=jax.random.key(0), d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=8,
        n_layers=2,
    )  # fmt: skip


def test_sites_out_of_computation_order(tiny):
    tokens = np.random.default_rng(0).integers(0, 20, (4, 6))
    bad = ["blocks.1.mlp.hook_post", "blocks.0.mlp.hook_post"]
    with pytest.raises(ValueError, match="computation order.*'blocks.0.mlp.hook_post'"):
        cl.circuit_lasso(tiny, tokens, granularity="neurons", sites=bad, alpha=0.1)
    with pytest.raises(ValueError, match="unknown site 'blocks.0.mlp.hook_psot'"):
        cl.circuit_lasso(tiny, tokens, granularity="neurons", sites=["blocks.0.mlp.hook_psot"])
    with pytest.raises(ValueError, match="unknown granularity 'edges'"):
        cl.circuit_lasso(tiny, tokens, granularity="edges")


def test_non_finite_activations_name_their_site(tiny):
    blocks, _ = sem(n=60)
    blocks[2] = blocks[2].copy()
    blocks[2][5, 1] = np.inf
    with pytest.raises(ValueError, match=r"block 'source2' has 1 NaN .*sample 5, column 1"):
        cl.block_lasso(blocks, alpha=0.1)
    broken = eqx.tree_at(lambda m: m.blocks[1].mlp.W_out, tiny, tiny.blocks[1].mlp.W_out * np.nan)
    tokens = np.random.default_rng(0).integers(0, 20, (4, 6))
    with pytest.raises(ValueError, match="block 'MLP1' has .* NaN"):
        cl.circuit_lasso(broken, tokens, alpha=0.1)
    with pytest.raises(ValueError, match="block 'blocks.1.hook_resid_post' has .* NaN"):
        cl.circuit_lasso(
            broken, tokens, granularity="neurons", alpha=0.1,
            sites=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
        )  # fmt: skip


def test_neurons_and_sae_map_to_graph_edges(tiny):
    rng = np.random.default_rng(0)
    clean, corrupt = rng.integers(0, 20, (6, 6)), rng.integers(0, 20, (6, 6))
    sites = ["blocks.0.attn.hook_z", "blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    g = graph(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cl.circuit_lasso(tiny, clean, corrupt, granularity="neurons", sites=sites)
    assert res.fit.sources == (
        "blocks.0.attn.hook_z[0]", "blocks.0.attn.hook_z[1]", "blocks.0.mlp.hook_post",
        "blocks.1.mlp.hook_post",
    )  # fmt: skip
    values = np.asarray(res.scores.values)
    mapped = np.zeros_like(values, bool)
    for s in ("L0H0", "L0H1"):
        mapped[g.source_index(s), [g.target_index("MLP0"), g.target_index("MLP1")]] = True
    mapped[g.source_index("MLP0"), g.target_index("MLP1")] = True
    assert not values[~mapped].any() and values[mapped].any()
    W = rng.normal(size=(32, 12)).astype(np.float32)
    res = cl.circuit_lasso(
        tiny, clean, corrupt, granularity="sae", sites=sites[1:],
        encoder=lambda x: jax.nn.relu(x @ W), alpha=0.05,
    )  # fmt: skip
    assert res.fit.coef.shape == (24, 24) and res.scores.values.shape == g.valid.shape


def test_components_on_a_task_like_object(tiny):
    rng = np.random.default_rng(1)

    class Pair:
        clean = rng.integers(0, 20, (5, 6))
        corrupt = rng.integers(0, 20, (5, 6))
        metric = None

    res = cl.circuit_lasso(tiny, Pair(), alpha=0.05)
    g = graph(tiny)
    assert isinstance(res.scores, Scores) and res.scores.graph == g
    assert isinstance(res.circuit, Circuit) and res.circuit.scores is res.scores
    v = np.asarray(res.scores.values)
    assert np.isfinite(v).all() and not v[~g.valid].any() and v[g.valid].any()
    assert set(res.seconds) == {"collect", "regress"}


def test_tracr_case_scored():
    from jaxcirc.bench._ground_truth import problem, score

    p = problem("frac_prevs", n=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cl.circuit_lasso(p.model, p.clean, p.corrupt, n_edges=len(p.truth))
    row = score(p, "CircuitLasso", res.scores, 0.0)
    assert row["edge_auroc"] >= 0.9 and row["shd_at_k"] <= 2
    assert res.circuit.values.sum() <= len(p.truth)


def test_feature_ranking_finds_the_predictive_features():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 10))
    y = 2.0 * z[:, 3] - 1.5 * z[:, 7] + 0.1 * rng.normal(size=200)
    r = cl.feature_ranking(z, y)
    assert set(r.order[:2]) == {3, 7} and r.prompt.shape == (200, 10)
    labels = (z[:, 3] - z[:, 7] > 0).astype(int)
    r = cl.feature_ranking(z, labels, loss="logistic", alpha=0.02)
    assert set(r.order[:2]) == {3, 7}
