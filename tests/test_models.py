"""Models: shapes, batching, dtypes, configs, weight processing, DCE, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES, tiny

import jaxcirc as jc
from jaxcirc.models import TransformerConfig


def test_logits_shape_and_batching(family_model):
    tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    logits = jax.vmap(family_model)(tokens)
    assert logits.shape == (2, 4, family_model.cfg.d_vocab)
    np.testing.assert_allclose(logits[1], family_model(tokens[1]), atol=1e-5)


def test_causal(family_model):
    a = family_model(jnp.array([1, 2, 3, 4, 5]))
    b = family_model(jnp.array([1, 2, 3, 9, 9]))
    np.testing.assert_allclose(a[:3], b[:3], atol=1e-5)
    assert not np.allclose(a[3:], b[3:], atol=1e-3)


def test_run_returns_tl_names(family_model):
    logits, acts = family_model.run(jnp.arange(5))
    np.testing.assert_array_equal(logits, family_model(jnp.arange(5)))
    cfg = family_model.cfg
    assert acts["blocks.1.hook_resid_pre"].shape == (5, cfg.d_model)
    assert acts[jc.SiteRef("z", 0)].shape == (5, cfg.n_heads, cfg.d_head)
    assert acts["blocks.0.attn.hook_k"].shape == (5, cfg.kv_heads, cfg.d_head)
    assert acts["blocks.0.attn.hook_pattern"].shape == (cfg.n_heads, 5, 5)
    assert acts.stack("resid_post").shape == (cfg.n_layers, 5, cfg.d_model)
    np.testing.assert_allclose(
        acts["blocks.1.hook_resid_post"] @ np.eye(cfg.d_model),
        acts["blocks.1.hook_resid_post"],
        atol=1e-6,
    )
    with pytest.raises(KeyError, match="did you mean 'blocks.0.hook_resid_pre'"):
        acts["blocks.0.hook_resid_pr"]


def test_residual_stream_adds_up():
    m = tiny("gpt2")
    _, acts = m.run(jnp.arange(6))
    np.testing.assert_allclose(
        acts["blocks.0.hook_resid_post"],
        acts["blocks.0.hook_resid_pre"]
        + acts["blocks.0.hook_attn_out"]
        + acts["blocks.0.hook_mlp_out"],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        acts["blocks.0.hook_resid_pre"], acts["hook_embed"] + acts["hook_pos_embed"], atol=1e-6
    )
    np.testing.assert_allclose(acts["blocks.0.attn.hook_pattern"].sum(-1), 1.0, atol=1e-5)


def test_sites_in_computation_order():
    refs = jc.sites(tiny("gpt2"))
    names = [r.name for r in refs]
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized"
    assert names.index("blocks.0.hook_resid_pre") < names.index("blocks.0.attn.hook_q")
    assert names.index("blocks.0.attn.hook_z") < names.index("blocks.0.hook_attn_out")
    assert [r.layer for r in jc.sites(tiny("gpt2"), kind="z")] == [0, 1]
    assert jc.sites(tiny("neox"), kind="resid_mid") == ()  # parallel blocks have none
    with pytest.raises(ValueError, match="did you mean 'resid_pre'"):
        jc.sites(tiny("gpt2"), kind="resid_pr")


def test_bfloat16():
    m32 = tiny("llama")
    cfg = m32.cfg.replace(dtype="bfloat16")
    m16 = jc.models.from_state_dict(cfg, jc.models.state_dict(m32))
    out = m16(jnp.arange(6))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), m32(jnp.arange(6)), atol=0.1)


def test_state_dict_roundtrip(family_model):
    again = jc.models.from_state_dict(family_model.cfg, jc.models.state_dict(family_model))
    np.testing.assert_array_equal(again(jnp.arange(4)), family_model(jnp.arange(4)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_weight_processing_keeps_the_function(family):
    m = tiny(family, seed=3, n_layers=3)
    tokens = jnp.arange(7)
    logits = m(tokens)
    folded = jc.models.fold_layer_norm(m)
    np.testing.assert_allclose(folded(tokens), logits, atol=1e-4)
    if m.cfg.norm == "layernorm":
        centred = jc.models.center_writing_weights(folded)
        np.testing.assert_allclose(centred(tokens), logits, atol=1e-4)
        resid = centred.run(tokens)[1]["blocks.1.hook_resid_pre"]
        np.testing.assert_allclose(resid.mean(-1), 0.0, atol=1e-5)
    else:
        with pytest.raises(ValueError, match="needs LayerNorm"):
            jc.models.center_writing_weights(m)
    unembedded = jc.models.center_unembed(m)
    np.testing.assert_allclose(
        jax.nn.log_softmax(unembedded(tokens)), jax.nn.log_softmax(logits), atol=1e-4
    )
    # processing is pure: the original is untouched
    np.testing.assert_array_equal(m(tokens), logits)


def test_unused_activations_are_not_materialised():
    m = tiny("gpt2", d_vocab=4099)
    tokens = jnp.arange(5)
    only_resid = (
        jax.jit(lambda t: m.run(t)[1]["blocks.0.hook_resid_pre"]).lower(tokens).compile().as_text()
    )
    full = jax.jit(lambda t: m.run(t)).lower(tokens).compile().as_text()
    # the logits [5, 4099] are computed only when read
    assert "f32[5,4099]" in full and "f32[5,4099]" not in only_resid


def test_bad_tokens(model):
    with pytest.raises(ValueError, match="token id 50 at position 2 is outside"):
        model(jnp.array([1, 2, 50]))
    with pytest.raises(ValueError, match="outside"):
        model(jnp.array([-1, 2]))
    with pytest.raises(ValueError, match="empty"):
        model(jnp.zeros(0, jnp.int32))
    with pytest.raises(ValueError, match="one example"):
        model(jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(TypeError, match="integers"):
        model(jnp.zeros(3))
    with pytest.raises(ValueError, match="exceed the context"):
        model(jnp.zeros(40, jnp.int32))
    with pytest.raises(Exception, match="d_vocab=50"):
        jax.jit(lambda t: model(t))(jnp.array([1, 60]))


def test_bad_config():
    with pytest.raises(ValueError, match="n_kv_heads=3: expected a divisor of n_heads=4"):
        jc.models.llama(key=jax.random.key(0), n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="act_fn"):
        TransformerConfig(
            d_model=8, n_layers=1, n_heads=2, d_head=4, d_vocab=10, n_ctx=8, d_mlp=8, act_fn="tanh"
        )
    with pytest.raises(ValueError, match="rotary_dim"):
        jc.models.neox(rotary_dim=3)
    cfg = jc.models.gpt2()
    assert TransformerConfig.from_json(cfg.to_json()) == cfg
