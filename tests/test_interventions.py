"""Interventions: properties (hypothesis), hand-computed references, jit/vmap/grad, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxcirc as jc
from jaxcirc.models._transformer import forward

MODEL = tiny("gpt2", seed=5)
SITES = jc.sites(MODEL)
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
run = eqx.filter_jit(lambda m, t: m.run(t))


def tokens_for(seed):
    return jax.random.randint(jax.random.key(seed), (6,), 0, MODEL.cfg.d_vocab)


@SETTINGS
@given(site=st.sampled_from(SITES), seed=st.integers(0, 2**16))
def test_patching_a_site_with_its_own_activation_changes_nothing(site, seed):
    tokens = tokens_for(seed)
    logits, acts = run(MODEL, tokens)
    patched = jc.intervene(MODEL, {site: jc.Patch(acts[site])})
    np.testing.assert_allclose(run(patched, tokens)[0], logits, atol=1e-5)


@SETTINGS
@given(site=st.sampled_from(SITES), seed=st.integers(0, 2**16), factor=st.floats(-2, 2))
def test_intervening_leaves_the_original_untouched(site, seed, factor):
    tokens = tokens_for(seed)
    before = run(MODEL, tokens)[0]
    changed = jc.intervene(MODEL, {site: jc.Scale(jnp.float32(factor))})
    run(changed, tokens)
    np.testing.assert_array_equal(run(MODEL, tokens)[0], before)
    assert all(
        s.intervention is None
        for s in jax.tree_util.tree_leaves(
            MODEL, is_leaf=lambda x: isinstance(x, jc.interventions.Site)
        )
        if isinstance(s, jc.interventions.Site)
    )
    assert jc.clear(changed).blocks[0].hook_resid_pre == MODEL.blocks[0].hook_resid_pre


@SETTINGS
@given(layer=st.integers(0, 1), head=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_zeroing_a_head_equals_recomputing_by_hand(layer, head, seed):
    tokens = tokens_for(seed)
    _, acts = run(MODEL, tokens)
    _, zeroed = run(jc.intervene(MODEL, {jc.SiteRef("z", layer): jc.Zero(head=head)}), tokens)
    attn = MODEL.blocks[layer].attn
    z = acts[jc.SiteRef("z", layer)].at[:, head].set(0.0)
    by_hand = jnp.einsum("qhd,hdm->qm", z, attn.W_O) + attn.b_O
    np.testing.assert_allclose(zeroed[jc.SiteRef("attn_out", layer)], by_hand, atol=1e-5)


@SETTINGS
@given(unit=st.integers(0, 63), seed=st.integers(0, 2**16))
def test_zeroing_a_neuron_equals_recomputing_by_hand(unit, seed):
    tokens = tokens_for(seed)
    _, acts = run(MODEL, tokens)
    _, zeroed = run(jc.intervene(MODEL, {"blocks.1.mlp.hook_post": jc.Zero(unit=unit)}), tokens)
    mlp = MODEL.blocks[1].mlp
    post = acts["blocks.1.mlp.hook_post"].at[:, unit].set(0.0)
    np.testing.assert_allclose(
        zeroed["blocks.1.hook_mlp_out"], post @ mlp.W_out + mlp.b_out, atol=1e-5
    )


def _scale_then_shift(x):
    return x * 0.5 + 0.25


@SETTINGS
@given(
    site=st.sampled_from([s for s in SITES if s.kind not in ("attn_scores", "pattern")]),
    seed=st.integers(0, 2**16),
)
def test_interventions_compose(site, seed):
    tokens = tokens_for(seed)
    first, second = jc.Scale(jnp.float32(0.5)), jc.Add(jnp.float32(0.25))
    twice = jc.intervene(jc.intervene(MODEL, {site: first}), {site: second})
    listed = jc.intervene(MODEL, {site: [first, second]})
    by_hand = jc.intervene(MODEL, {site: jc.Function(_scale_then_shift)})
    reference = run(by_hand, tokens)[0]
    np.testing.assert_allclose(run(twice, tokens)[0], reference, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(run(listed, tokens)[0], reference, atol=1e-4, rtol=1e-5)


def test_selection_by_index_equals_mask():
    tokens = tokens_for(0)
    _, acts = run(MODEL, tokens)
    value = acts["blocks.0.attn.hook_z"] + 1.0
    mask = np.zeros((6, 4, 1), np.float32)
    mask[[1, 4], 2] = 1.0
    by_index = jc.intervene(
        MODEL, {"blocks.0.attn.hook_z": jc.Patch(value, position=jnp.array([1, 4]), head=2)}
    )
    by_mask = jc.intervene(MODEL, {"blocks.0.attn.hook_z": jc.Patch(value, mask=mask)})
    z = run(by_index, tokens)[1]["blocks.0.attn.hook_z"]
    np.testing.assert_allclose(z, run(by_mask, tokens)[1]["blocks.0.attn.hook_z"], atol=1e-6)
    np.testing.assert_allclose(
        z, np.where(mask > 0, value, acts["blocks.0.attn.hook_z"]), atol=1e-6
    )
    # negative indices count from the end, as in numpy
    last = jc.intervene(MODEL, {"blocks.0.hook_resid_pre": jc.Zero(position=-1)})
    np.testing.assert_array_equal(run(last, tokens)[1]["blocks.0.hook_resid_pre"][-1], 0.0)


def test_mean_add_noise_subspace():
    tokens = tokens_for(1)
    _, acts = run(MODEL, tokens)
    x = acts["blocks.1.hook_resid_pre"]
    mean = x.mean(0)
    out = run(jc.intervene(MODEL, {"blocks.1.hook_resid_pre": jc.Mean(mean)}), tokens)[1]
    np.testing.assert_allclose(
        out["blocks.1.hook_resid_pre"], np.broadcast_to(mean, x.shape), atol=1e-6
    )
    key = jax.random.key(7)
    noisy = jc.intervene(MODEL, {"blocks.1.hook_resid_pre": jc.Noise(jnp.float32(0.5), key)})
    n1 = run(noisy, tokens)[1]["blocks.1.hook_resid_pre"]
    np.testing.assert_array_equal(n1, run(noisy, tokens)[1]["blocks.1.hook_resid_pre"])  # seeded
    # position p draws from fold_in(key, p), so the noise does not depend on padding
    by_position = [jax.random.normal(jax.random.fold_in(key, p), x.shape[1:]) for p in range(6)]
    np.testing.assert_allclose(n1 - x, 0.5 * jnp.stack(by_position), atol=1e-5)
    # a full-rank subspace replaces everything; a one-dimensional one only that component
    other = x[::-1]
    full = jc.Subspace(jnp.eye(32), other)
    np.testing.assert_allclose(
        run(jc.intervene(MODEL, {"blocks.1.hook_resid_pre": full}), tokens)[1][
            "blocks.1.hook_resid_pre"
        ],
        other,
        atol=1e-4,
    )
    u = jax.random.normal(jax.random.key(3), (1, 32))
    line = run(jc.intervene(MODEL, {"blocks.1.hook_resid_pre": jc.Subspace(3 * u, other)}), tokens)[
        1
    ]
    got = line["blocks.1.hook_resid_pre"]
    unit = u[0] / jnp.linalg.norm(u)
    np.testing.assert_allclose(got @ unit, other @ unit, atol=1e-4)
    np.testing.assert_allclose(
        got - jnp.outer(got @ unit, unit), x - jnp.outer(x @ unit, unit), atol=1e-4
    )


def test_jit_vmap_grad():
    batch = jax.random.randint(jax.random.key(2), (3, 6), 0, 50)

    def loss(factor):
        m = jc.intervene(MODEL, {"blocks.0.hook_attn_out": jc.Scale(factor, head=None)})
        return jax.vmap(m)(batch)[:, -1, 3].sum()

    g = jax.jit(jax.grad(loss))(jnp.float32(1.0))
    eps = 1e-2
    numeric = (loss(jnp.float32(1 + eps)) - loss(jnp.float32(1 - eps))) / (2 * eps)
    np.testing.assert_allclose(g, numeric, rtol=2e-2)


def test_errors():
    with pytest.raises(KeyError, match="did you mean 'blocks.0.attn.hook_z'"):
        jc.intervene(MODEL, {"blocks.0.attn.hook_zz": jc.Zero()})
    with pytest.raises(ValueError, match="layer 2 out of range .* 2 layers"):
        jc.intervene(MODEL, {jc.SiteRef("z", 2): jc.Zero()})
    with pytest.raises(ValueError, match="unknown site kind 'resid_pr' .did you mean 'resid_pre'"):
        jc.SiteRef("resid_pr", 0)
    with pytest.raises(ValueError, match="head 4 out of range .* head axis has size 4"):
        jc.intervene(MODEL, {jc.SiteRef("z", 0): jc.Zero(head=4)})(tokens_for(0))
    with pytest.raises(ValueError, match="cannot select by 'head'"):
        jc.intervene(MODEL, {jc.SiteRef("resid_pre", 0): jc.Zero(head=1)})(tokens_for(0))
    with pytest.raises(
        ValueError, match=r"Patch value has shape \(5, 32\); it must equal .* \(6, 32\)"
    ):
        jc.intervene(MODEL, {jc.SiteRef("resid_pre", 0): jc.Patch(jnp.zeros((5, 32)))})(
            tokens_for(0)
        )
    with pytest.raises(ValueError, match="mask of shape"):
        jc.intervene(MODEL, {jc.SiteRef("resid_pre", 0): jc.Zero(mask=jnp.ones(5))})(tokens_for(0))
    with pytest.raises(ValueError, match="no site 'blocks.0.hook_resid_mid'"):
        jc.intervene(tiny("neox"), {jc.SiteRef("resid_mid", 0): jc.Zero()})
    with pytest.raises(TypeError, match="must be an intervention"):
        jc.intervene(MODEL, {jc.SiteRef("resid_pre", 0): 3.0})


def test_indices_become_int32_arrays():
    for value in (3, [1, 2], np.int64(2), np.array([0, 255], np.uint8), jnp.arange(2)):
        index = jc.Zero(head=value).head
        assert isinstance(index, jax.Array) and index.dtype == jnp.int32
        np.testing.assert_array_equal(index, np.asarray(value).astype(np.int32))
    assert isinstance(jc.Zero(mask=np.ones(3, bool)).mask, jax.Array)
    assert isinstance(jc.Zero(mask=[0.0, 1.0]).mask, jax.Array)
    assert jc.Zero().head is None and jc.Zero().mask is None
    built = []  # under jit a Python int stays concrete, so it is still range-checked
    jax.jit(lambda: built.append(jc.Zero(head=2).head) or 0)()
    assert not isinstance(built[0], jax.core.Tracer)
    for big in (np.int64(2**32 + 5), 2**32 + 5, [1, 2**70], -(2**31) - 1):
        with pytest.raises(ValueError, match="unit index .* does not fit in int32"):
            jc.Zero(unit=big)
    for bad in (1.0, True, np.array([1.5]), jnp.ones(2)):
        with pytest.raises(TypeError, match="position index must be integers"):
            jc.Zero(position=bad)
    with pytest.raises(TypeError, match="head index must be integers"):
        jax.jit(lambda h: jc.Zero(head=h).head)(1.0)


def test_indices_checked_when_intervening():
    """Under `jit` an index is traced, so concrete head and unit indices are checked by
    `intervene`, against the site's sizes; position indices where the site runs eagerly."""
    with pytest.raises(ValueError, match="head 4 out of range for site blocks.0.attn.hook_z .its"):
        jc.intervene(MODEL, {"blocks.0.attn.hook_z": jc.Zero(head=[0, 4])})
    with pytest.raises(ValueError, match="unit -65 out of range .* size 64.*nearest valid: -64"):
        jc.intervene(MODEL, {"blocks.0.mlp.hook_post": jc.Zero(unit=-65)})
    with pytest.raises(ValueError, match="cannot select by 'unit'"):
        jc.intervene(MODEL, {"blocks.0.attn.hook_pattern": jc.Zero(unit=0)})
    with pytest.raises(ValueError, match="position 6 out of range .* size 6.*nearest valid: 5"):
        forward(jc.intervene(MODEL, {"hook_embed": jc.Zero(position=6)}), tokens_for(0))
    # the sites of a model carrying a patch made for 6 tokens are still listed
    patched = jc.intervene(MODEL, {"blocks.0.hook_resid_pre": jc.Patch(jnp.zeros((6, 32)))})
    assert jc.sites(patched) == SITES
    jc.intervene(patched, {"blocks.1.hook_resid_pre": jc.Zero(position=0)})
