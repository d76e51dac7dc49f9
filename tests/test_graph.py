"""The edge graph and the masked forward pass, checked against the model and site patches."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.graph import EdgeMask, NodeMask, ablation_values, graph, masked_logits

CASES = {
    "gpt2": {},
    "neox": {},
    "llama_gqa": {"n_kv_heads": 2},
    "attn_only": {},
}


def _model(case):
    return tiny(case.split("_gqa")[0], n_layers=3, **CASES[case])


@pytest.fixture(scope="module", params=sorted(CASES))
def setup(request):
    model = _model(request.param)
    clean = jax.random.randint(jax.random.key(1), (2, 6), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (2, 6), 0, 50)
    g = graph(model)
    return model, g, clean, corrupt, ablation_values(model, clean, corrupt, g=g)


def test_structure():
    g = graph(tiny("gpt2", n_layers=2))
    assert g.sources[:3] == ("embed", "L0H0", "L0H1") and g.sources[-1] == "MLP1"
    assert g.targets[:5] == ("L0H0.q", "L0H1.q", "L0H2.q", "L0H3.q", "L0H0.k")
    assert g.targets[-1] == "logits"
    # embed feeds everything; a head feeds its own layer's MLP but not its own layer's heads
    assert g.valid[0].all()
    assert g.valid[g.source_index("L0H1"), g.target_index("MLP0")]
    assert not g.valid[g.source_index("L0H1"), g.target_index("L0H2.v")]
    assert not g.valid[g.source_index("MLP0"), g.target_index("MLP0")]
    layer0 = 1 * 12 + 5  # embed -> 12 head inputs; embed + 4 heads -> MLP0
    layer1 = 6 * 12 + 10  # 6 sources -> 12 head inputs; 10 sources -> MLP1
    logits = 11
    assert g.n_edges == layer0 + layer1 + logits
    par = graph(tiny("neox", n_layers=2))
    assert not par.valid[par.source_index("L0H1"), par.target_index("MLP0")]
    with pytest.raises(ValueError, match=r"unknown source 'L0H9'.*did you mean"):
        g.source_index("L0H9")
    with pytest.raises(ValueError, match="no edge MLP1 -> L1H0.q"):
        g.edge_index("MLP1", "L1H0.q")


def test_ones_is_the_model_zeros_the_ablation(setup):
    model, g, clean, corrupt, ablated = setup
    ones = masked_logits(model, clean, EdgeMask.ones(g), ablated)
    zeros = masked_logits(model, clean, EdgeMask(jnp.zeros(g.valid.shape), g), ablated)
    np.testing.assert_allclose(ones, jax.vmap(model)(clean), atol=2e-5)
    np.testing.assert_allclose(zeros, jax.vmap(model)(corrupt), atol=2e-5)


def _node_mask(g, name):
    return NodeMask(jnp.ones(g.n_sources).at[g.source_index(name)].set(0.0), g)


def test_node_ablation_is_a_site_patch(setup):
    """Ablating a source everywhere equals patching its corrupted value at its site."""
    model, g, clean, corrupt, ablated = setup
    (c_acts,) = [model.run(corrupt[0])[1]]
    layer = 1
    head = 1
    z = c_acts[jc.SiteRef("z", layer)]
    expected = jc.intervene(model, {jc.SiteRef("z", layer): jc.Patch(z, head=jnp.array(head))})
    got = masked_logits(model, clean[:1], _node_mask(g, f"L{layer}H{head}"), ablated[:1])
    np.testing.assert_allclose(got[0], expected(clean[0]), atol=2e-5)
    if any(node.kind == "mlp" for node in g.source_nodes):
        out = c_acts[jc.SiteRef("mlp_out", 0)]
        expected = jc.intervene(model, {jc.SiteRef("mlp_out", 0): jc.Patch(out)})
        got = masked_logits(model, clean[:1], _node_mask(g, "MLP0"), ablated[:1])
        np.testing.assert_allclose(got[0], expected(clean[0]), atol=2e-5)


def test_target_ablation_is_a_qkv_patch(setup):
    """Cutting every edge into one head's k input equals patching that head's corrupted k."""
    model, g, clean, corrupt, ablated = setup
    c_acts = model.run(corrupt[0])[1]
    kv = "KV" if any(node.kind == "kv" for node in g.target_nodes) else "H"
    for x in ("k", "v"):
        j = g.target_index(f"L2{kv}1.{x}")
        mask = EdgeMask(jnp.ones(g.valid.shape).at[:, j].set(0.0), g)
        site = jc.SiteRef(x, 2)
        expected = jc.intervene(model, {site: jc.Patch(c_acts[site], head=jnp.array(1))})
        got = masked_logits(model, clean[:1], mask, ablated[:1])
        np.testing.assert_allclose(got[0], expected(clean[0]), atol=2e-5)


def test_one_edge_to_logits_is_a_residual_shift(setup):
    """Cutting `L0H2 -> logits` shifts only the final residual by (corrupt - clean) output."""
    model, g, clean, corrupt, ablated = setup
    attn = model.blocks[0].attn

    def head_out(tokens):
        z = model.run(tokens)[1][jc.SiteRef("z", 0)][:, 2]
        return z @ attn.W_O[2]

    delta = head_out(corrupt[0]) - head_out(clean[0])
    last = jc.SiteRef("resid_post", model.cfg.n_layers - 1)
    expected = jc.intervene(model, {last: jc.Add(delta)})
    i, j = g.edge_index("L0H2", "logits")
    mask = EdgeMask(jnp.ones(g.valid.shape).at[i, j].set(0.0), g)
    got = masked_logits(model, clean[:1], mask, ablated[:1])
    np.testing.assert_allclose(got[0], expected(clean[0]), atol=2e-5)


def test_compiles_once_for_any_mask(setup):
    model, g, clean, corrupt, ablated = setup
    from jaxcirc.graph import _masked

    counted = eqx.debug.assert_max_traces(_masked._masked_logits.__wrapped__, max_traces=1)
    run = eqx.filter_jit(counted)
    for seed in range(3):
        w = jax.random.uniform(jax.random.key(seed), g.valid.shape)
        run(model, g, clean, w, ablated)


def test_masks_and_ablations(setup):
    model, g, clean, corrupt, ablated = setup
    mask = EdgeMask.from_edges(g, [("embed", "logits"), ("L0H0", "logits")])
    assert mask.edges() == [("embed", "logits"), ("L0H0", "logits")]
    assert mask.flat().shape == (g.n_edges,)
    mean = ablation_values(model, clean, corrupt, "mean", g)
    np.testing.assert_allclose(mean[0], ablated.mean(0), atol=1e-6)
    assert not ablation_values(model, clean, corrupt, "zero", g).any()
    with pytest.raises(ValueError, match="unknown ablation 'meen'"):
        ablation_values(model, clean, corrupt, "meen", g)
    with pytest.raises(ValueError, match="expected"):
        EdgeMask(jnp.ones((2, 2)), g)
    other = graph(tiny("gpt2", n_layers=1))
    with pytest.raises(ValueError, match="another graph"):
        masked_logits(model, clean, EdgeMask.ones(other), ablated)
