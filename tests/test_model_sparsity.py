"""The weight-sparse architecture pieces (Gao et al. 2025, arXiv 2511.13653): AbsTopK activation
sparsity, the attention sink and the bigram logit table, each against a NumPy reference, and
the library's engines (split form, edge methods, patching, save/load) on a model that has them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc import models
from jaxcirc.graph import graph, run_graph
from jaxcirc.methods import eap, edge_patching
from jaxcirc.metrics import bind, logit_diff

ALL = ("attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp_neuron", "mlp_out")
SMALL = dict(d_vocab=40, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16)


def _model(seed=0, **overrides):
    cfg = models.weight_sparse(**{**SMALL, **overrides})
    model = models.build(cfg, key=jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
    # larger, non-zero weights everywhere (the sink and bigram start at zero)
    return jax.tree_util.tree_map(
        lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape) if eqx.is_inexact_array(x)
        else x, model,
    )  # fmt: skip


def _np_abs_topk(x, k):
    out = np.zeros_like(x)
    for row in np.ndindex(x.shape[:-1]):
        keep = np.argsort(-np.abs(x[row]), kind="stable")[:k]
        out[row][keep] = x[row][keep]
    return out


def test_abs_topk_matches_numpy():
    x = np.asarray(jax.random.normal(jax.random.key(0), (5, 7, 24)))
    for k in (1, 6, 24):
        np.testing.assert_array_equal(np.asarray(models.abs_topk(jnp.asarray(x), k)),
                                      _np_abs_topk(x, k))  # fmt: skip
    # over two axes: the heads' channels of a position together
    y = np.asarray(models.abs_topk(jnp.asarray(x), 9, axes=2))
    np.testing.assert_array_equal(y.reshape(5, -1), _np_abs_topk(x.reshape(5, -1), 9))
    # ties: exactly k survive
    assert int((models.abs_topk(jnp.ones(10), 3) != 0).sum()) == 3
    # gradients flow through the kept entries only
    g = jax.grad(lambda v: models.abs_topk(v, 2).sum())(jnp.array([3.0, -1.0, -5.0, 0.5]))
    np.testing.assert_array_equal(np.asarray(g), [1, 0, 1, 0])


def test_sites_record_the_sparse_values():
    model = _model(act_topk_at=ALL)
    _, acts = model.run(jnp.arange(9) % 40)
    k = int(0.25 * 32)
    for name in ("blocks.0.ln1.hook_normalized", "blocks.1.hook_attn_out",
                 "blocks.0.ln2.hook_normalized", "blocks.1.hook_mlp_out"):  # fmt: skip
        np.testing.assert_array_equal(np.asarray((acts[name] != 0).sum(-1)), k)
    q = acts["blocks.0.attn.hook_q"]
    np.testing.assert_array_equal(np.asarray((q.reshape(9, -1) != 0).sum(-1)), int(0.25 * 32))
    post = acts["blocks.0.mlp.hook_post"]
    np.testing.assert_array_equal(np.asarray((post != 0).sum(-1)), 16)


def _np_attention_with_sink(x, attn, ln_w, eps):
    """One attention layer with an attention sink, in NumPy: RMSNorm, heads, causal softmax
    over the real keys plus a key of logit `sink[h]` and value zero."""
    x = np.asarray(x, np.float64)
    h = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * np.asarray(ln_w)
    weights = (attn.W_Q, attn.W_K, attn.W_V, attn.W_O)
    W_Q, W_K, W_V, W_O = (np.asarray(w, np.float64) for w in weights)
    sink = np.asarray(attn.sink, np.float64)
    seq, out = x.shape[0], np.zeros_like(x)
    for head in range(W_Q.shape[0]):
        q, k, v = h @ W_Q[head], h @ W_K[head], h @ W_V[head]
        for i in range(seq):
            logits = np.append(q[i] @ k[: i + 1].T / np.sqrt(q.shape[-1]), sink[head])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            out[i] += (p[:-1] @ v[: i + 1]) @ W_O[head]
    return out


def test_attention_sink_matches_numpy():
    model = _model(act_topk=0.0)
    model = eqx.tree_at(lambda m: m.blocks[0].attn.sink, model, jnp.array([-1.0, 0.0, 2.0, 5.0]))
    tokens = jnp.arange(7) % 40
    _, acts = model.run(tokens)
    block = model.blocks[0]
    want = _np_attention_with_sink(acts["blocks.0.hook_resid_pre"], block.attn, block.ln1.w,
                                   block.ln1.eps)  # fmt: skip
    np.testing.assert_allclose(np.asarray(acts["blocks.0.hook_attn_out"]), want, atol=2e-5)
    # the sink takes mass: rows of the pattern sum to less than one
    mass = np.asarray(acts["blocks.0.attn.hook_pattern"]).sum(-1)
    assert (mass < 1).all()


def test_bigram_table_adds_the_current_tokens_row():
    model = _model(bigram=True)
    table = jax.random.normal(jax.random.key(5), (40, 40))
    model = eqx.tree_at(lambda m: m.unembed.bigram, model, table)
    plain = eqx.tree_at(lambda m: m.unembed.bigram, model, None, is_leaf=lambda x: x is None)
    tokens = jnp.array([3, 1, 4, 1, 5, 9, 2, 6])
    np.testing.assert_allclose(np.asarray(model(tokens)),
                               np.asarray(plain(tokens)) + np.asarray(table)[np.asarray(tokens)],
                               atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="bigram logit table"):
        model.logits_at(jnp.zeros((8, 32)))


@pytest.mark.parametrize("bigram", [False, True])
def test_split_form_and_edge_methods_run_the_same_model(bigram):
    model = _model(act_topk_at=ALL, bigram=bigram)
    if bigram:
        model = eqx.tree_at(lambda m: m.unembed.bigram, model,
                            jax.random.normal(jax.random.key(7), (40, 40)))  # fmt: skip
    clean = jax.random.randint(jax.random.key(2), (3, 8), 0, 40)
    corrupt = jax.random.randint(jax.random.key(3), (3, 8), 0, 40)
    g = graph(model)
    for t in clean:
        x0 = model.embed_tokens(t)[0]
        logits = run_graph(model, g, x0, jnp.ones(g.valid.shape),
                           jnp.zeros((g.n_sources, 8, 32)), tokens=t)[0]  # fmt: skip
        np.testing.assert_allclose(np.asarray(logits), np.asarray(model(t)), atol=3e-5)
    metric = bind(logit_diff, answer=[1, 2, 3], distractor=[4, 5, 6])
    exact = edge_patching(model, clean, corrupt, metric)
    approx = eap(model, clean, corrupt, metric)
    assert np.isfinite(np.asarray(exact.values)).all()
    assert np.isfinite(np.asarray(approx.values)).all()
    # a sanity link to the reference: the two agree in sign on the strongest edges
    top = np.argsort(-np.abs(np.asarray(exact.flat())))[:5]
    agree = np.sign(np.asarray(exact.flat())[top]) == np.sign(np.asarray(approx.flat())[top])
    assert agree.mean() >= 0.6


def test_patching_runs_and_a_bigram_model_refuses_clearly():
    model = _model()
    clean = jax.random.randint(jax.random.key(2), (2, 6), 0, 40)
    corrupt = jax.random.randint(jax.random.key(3), (2, 6), 0, 40)
    metric = bind(logit_diff, answer=[1, 2], distractor=[4, 5])
    result = jc.patching.sweep(model, clean, corrupt, metric, "resid_pre")
    assert np.isfinite(np.asarray(result.values if hasattr(result, "values") else result)).all()
    with pytest.raises(ValueError, match="bigram logit table"):
        jc.patching.sweep(_model(bigram=True), clean, corrupt, metric, "resid_pre")


def test_save_load_round_trip(tmp_path):
    model = _model(act_topk_at=ALL, bigram=True)
    jc.save(tmp_path / "m", model)
    loaded = jc.load(tmp_path / "m")
    assert loaded.cfg == model.cfg
    tokens = jnp.arange(8) % 40
    np.testing.assert_array_equal(np.asarray(loaded(tokens)), np.asarray(model(tokens)))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(act_topk=1.5), "act_topk=1.5"),
        (dict(act_topk_at=("attn_inn",)), "did you mean 'attn_in'"),
        (dict(attn_out_bias=True), "attn_out_bias"),
        (dict(norm="none"), "norm='none'"),
        (dict(act_topk_at="attn_in"), "act_topk_at='attn_in'"),
    ],
)
def test_bad_sparsity_configs(overrides, match):
    with pytest.raises(ValueError, match=match):
        models.weight_sparse(**{**SMALL, **overrides})
