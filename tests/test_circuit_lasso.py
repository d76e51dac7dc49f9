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


def test_one_trace_per_shape_whatever_the_path(monkeypatch):
    """Sub-problems of one padded shape share one compiled program, and λ is traced: a second
    path with other λs (and another selection) compiles nothing new."""
    counted = eqx.debug.assert_max_traces(cl._one_problem, max_traces=8)
    monkeypatch.setattr(cl, "_one_problem", counted)
    blocks, _ = sem(n=90, widths=(2, 3, 4, 3, 2), seed=1)
    fit = cl.block_lasso(blocks, select="bic", n_alphas=4, eps=0.1)
    first = eqx.debug.get_num_traces(counted)
    assert 1 <= first <= 8  # a few padded shapes (here one per target-width bucket)
    fit = cl.block_lasso(blocks, select="bic", n_alphas=7, eps=0.05, refine=0)
    assert eqx.debug.get_num_traces(counted) == first
    assert fit.block_scores.shape == (5, 5) and np.isfinite(fit.block_scores).all()


def _direct(blocks, valid, alpha):
    """The slow reference: every target column's Lasso on the standardised columns of its
    valid sources, solved by scikit-learn's coordinate descent on the raw samples."""
    from sklearn.linear_model import Lasso

    z = [(b - b.mean(0)) / b.std(0) for b in blocks]
    X = np.concatenate(z, 1)
    src = np.repeat(np.arange(len(blocks)), [b.shape[1] for b in blocks])
    A = np.zeros((X.shape[1], X.shape[1]))
    for t, zt in enumerate(z):
        sel = np.flatnonzero(valid[src, t])
        if not sel.size:
            continue
        m = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
        m.fit(X[:, sel], zt)
        off = int(np.flatnonzero(src == t)[0])
        A[np.ix_(sel, np.arange(off, off + zt.shape[1]))] = m.coef_.reshape(zt.shape[1], -1).T
    return A


@pytest.mark.parametrize("n", [40, 400])  # fewer samples than columns (raw), more (one QR)
@pytest.mark.parametrize("prefix", [True, False])
def test_grouped_compressed_form_equals_the_direct_lasso(n, prefix):
    """The fast form (targets grouped by source set, one QR of all sources, sub-problems cut
    to a prefix of R's rows, padded and stacked) gives the coefficients of the plain
    per-target Lasso on the samples (scikit-learn), with or without prefix sources."""
    from jaxcirc.solvers import FISTA

    widths = (3, 5, 4, 6, 2, 3) if n > 40 else (8, 9, 7, 10, 8, 9)
    blocks, _ = sem(n=n, widths=widths, seed=3)
    blocks = blocks + [blocks[-1] + 0.0]  # a sixth-source copy: one more target group
    blocks[-1] = blocks[-1] + np.random.default_rng(4).normal(size=blocks[-1].shape)
    valid = np.triu(np.ones((len(blocks),) * 2, bool), 1)
    if not prefix:  # non-prefix source sets: skip some earlier blocks
        valid[1, 3] = valid[0, 4] = valid[2, 6] = False
    fit = cl.block_lasso(
        blocks, blocks, valid, alpha=0.05, solver=FISTA(rtol=1e-9, max_steps=50_000)
    )
    ref = _direct(blocks, valid, 0.05)
    np.testing.assert_allclose(fit.coef, ref, atol=2e-4, rtol=0)
    assert ((fit.coef != 0) == (np.abs(ref) > 1e-6)).mean() > 0.98


def test_bic_on_the_compressed_form_equals_the_residual_on_the_samples():
    """BIC's residual comes from the compressed sub-problems plus the part of each target
    outside their rows; it must equal the residual of the coefficients on the samples."""
    from jaxcirc.solvers import FISTA

    blocks, _ = sem(n=300, widths=(3, 4, 3, 5, 3), seed=5)
    fit = cl.block_lasso(
        blocks, select="bic", n_alphas=6, eps=0.05, refine=0, early_stop=False,
        solver=FISTA(rtol=1e-9, max_steps=50_000),  # the path (10x rtol) as exact as the refit
    )  # fmt: skip
    z = np.concatenate([(b - b.mean(0)) / b.std(0) for b in blocks], 1)
    fitted = (z - z @ fit.coef.astype(np.float64))[:, 3:]  # block 0 has no sources
    rss = np.sum(fitted**2)
    n, k = fitted.shape
    want = n * k * np.log(rss / (n * k)) + int((fit.coef != 0).sum()) * np.log(n)
    np.testing.assert_allclose(fit.bic[fit.index], want, rtol=1e-4)


def test_path_resolves_where_edges_enter():
    """Near-exact linear blocks (as in tracr) put every edge in between the first two λs of a
    coarse grid (counts 0, 9, 9, 9). The refined path splits the intervals where edges enter:
    its edge counts step through intermediate values, the λs stay decreasing and include the
    grid, and `refine=0` keeps the plain grid."""
    rng = np.random.default_rng(7)
    n, blocks = 400, []
    strengths = {(0, 1): 1.0, (0, 2): 0.8, (1, 3): 0.6, (2, 4): 0.45, (3, 4): 0.35}
    for b in range(5):
        x = 0.1 * rng.normal(size=(n, 2))
        for (a, c), s in strengths.items():
            if c == b:
                x = x + s * blocks[a] / blocks[a].std()
        blocks.append(x)
    kw = dict(select="bic", n_alphas=4, eps=1e-3, early_stop=False)
    plain = cl.block_lasso(blocks, refine=0, **kw)
    assert len(plain.alphas) == 4
    assert len(set(map(int, plain.edge_counts[1:]))) == 1  # degenerate: one count after λ_max
    fit = cl.block_lasso(blocks, refine=12, **kw)
    assert len(fit.alphas) > 4 and np.all(np.diff(fit.alphas) < 0)
    assert all(np.isclose(fit.alphas, a, rtol=1e-9).any() for a in plain.alphas)
    inner = set(int(c) for c in fit.edge_counts) - {0, int(plain.edge_counts.max())}
    assert len(inner) >= 2, fit.edge_counts  # intermediate counts: edges resolved in turn


def test_early_stop_keeps_the_held_out_choice():
    """Stopping the path once the held-out error has risen twice past its minimum chooses
    the same λ as the whole path."""
    blocks, _ = sem(n=400, seed=2, strength=0.3)
    groups = np.arange(400) // 10
    full = cl.block_lasso(blocks, n_alphas=12, groups=groups, early_stop=False, refine=0)
    fast = cl.block_lasso(blocks, n_alphas=12, groups=groups, refine=0)
    assert fast.alpha == full.alpha and len(fast.alphas) <= len(full.alphas)
    np.testing.assert_allclose(fast.block_scores, full.block_scores, rtol=1e-5, atol=1e-7)


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


def test_zero_variance_columns_dropped_with_one_short_warning():
    blocks, _ = sem(n=60)
    blocks[1] = blocks[1].copy()
    blocks[1][:, 2] = 7.0  # constant
    blocks[3] = np.concatenate([blocks[3], np.ones((60, 200))], 1)  # 200 constant columns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = cl.block_lasso(blocks, alpha=0.05)
    msgs = [str(w.message) for w in caught if "zero-variance" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "dropped 201 zero-variance column(s) in 2 block(s)" in msgs[0]
    assert "source1[2]" in msgs[0] and msgs[0].count("[") <= 4 and len(msgs[0]) < 400
    assert "source1[2]" in fit.dropped and len(fit.dropped) == 201
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
        free = cl.circuit_lasso(p.model, p.clean, p.corrupt)  # held-out λ: no truth used
    row = score(p, "CircuitLasso", res.scores, 0.0)
    assert row["edge_auroc"] >= 0.9 and row["shd_at_k"] <= 2
    assert res.circuit.values.sum() <= len(p.truth)
    assert free.fit.select == "heldout"
    assert score(p, "CircuitLasso", free.scores, 0.0)["edge_auroc"] >= 0.9


def test_feature_ranking_finds_the_predictive_features():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 10))
    y = 2.0 * z[:, 3] - 1.5 * z[:, 7] + 0.1 * rng.normal(size=200)
    r = cl.feature_ranking(z, y)
    assert set(r.order[:2]) == {3, 7} and r.prompt.shape == (200, 10)
    labels = (z[:, 3] - z[:, 7] > 0).astype(int)
    r = cl.feature_ranking(z, labels, loss="logistic", alpha=0.02)
    assert set(r.order[:2]) == {3, 7}
