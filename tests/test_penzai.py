"""penzai interoperability: random Llama-like (MHA, GQA, MQA) and GPT-NeoX penzai models to
jaxcirc and back, logits equal to penzai's own within 1e-5 (penzai's forward is the reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pz = pytest.importorskip("penzai.pz", reason="penzai is not installed (pip install penzai)")
from penzai.models.transformer.variants import gpt_neox, llamalike_common  # noqa: E402

from jaxcirc.io._penzai import from_penzai, to_penzai  # noqa: E402

TOKENS = jnp.asarray([[1, 5, 7, 2, 10, 0], [3, 3, 9, 4, 1, 2]])


def logits(lm):
    out = lm(pz.nx.wrap(TOKENS).tag("batch", "seq"))
    return out.untag("batch", "seq", "vocabulary").unwrap()


def randomised(lm, seed):
    """penzai's init has zero biases and unit norms: perturb every parameter."""
    unbound, params = pz.unbind_params(lm)
    rng = np.random.default_rng(seed)
    new = []
    for p in params:
        axes = tuple(p.value.named_shape)
        noise = rng.standard_normal([p.value.named_shape[a] for a in axes]).astype(np.float32)
        new.append(
            pz.Parameter(
                value=p.value + pz.nx.wrap(jnp.asarray(0.3 * noise)).tag(*axes), label=p.label
            )
        )
    return pz.bind_variables(unbound, new)


CONFIGS = {
    "llama_gqa": lambda: llamalike_common.LlamalikeTransformerConfig(
        num_kv_heads=2,
        query_head_multiplier=2,
        embedding_dim=16,
        projection_dim=4,
        mlp_hidden_dim=24,
        num_decoder_blocks=2,
        vocab_size=11,
        mlp_variant="swiglu",
        tie_embedder_and_logits=False,
    ),
    "llama_mha": lambda: llamalike_common.LlamalikeTransformerConfig(
        num_kv_heads=3,
        query_head_multiplier=1,
        embedding_dim=12,
        projection_dim=4,
        mlp_hidden_dim=20,
        num_decoder_blocks=2,
        vocab_size=11,
        mlp_variant="geglu_approx",
        tie_embedder_and_logits=False,
        rope_wavelength=500.0,
    ),
    "llama_mqa": lambda: llamalike_common.LlamalikeTransformerConfig(
        num_kv_heads=1,
        query_head_multiplier=3,
        embedding_dim=12,
        projection_dim=4,
        mlp_hidden_dim=20,
        num_decoder_blocks=1,
        vocab_size=11,
        mlp_variant="swiglu",
        tie_embedder_and_logits=False,
    ),
    "gpt_neox": lambda: gpt_neox.GPTNeoXTransformerConfig(
        num_attention_heads=2,
        embedding_dim=16,
        projection_dim=8,
        mlp_hidden_dim=24,
        num_decoder_blocks=2,
        vocab_size=11,
        activation_fn="gelu_exact",
        rope_subset_size=4,
        rope_wavelength=10000.0,
        layernorm_epsilon=1e-5,
        parameter_dtype=jnp.float32,
        activation_dtype=jnp.float32,
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_keeps_the_logits(name):
    cfg = CONFIGS[name]()
    build = (
        gpt_neox.build_gpt_neox_transformer
        if name == "gpt_neox"
        else llamalike_common.build_llamalike_transformer
    )
    lm = randomised(build(cfg, init_base_rng=jax.random.key(0)), seed=1)
    model = from_penzai(lm, cfg, n_ctx=8)
    want = logits(lm)
    np.testing.assert_allclose(jax.vmap(model)(TOKENS), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits(to_penzai(model)), want, atol=1e-5, rtol=1e-5)


def test_what_has_no_equivalent_is_named():
    cfg = CONFIGS["llama_gqa"]()
    cfg.final_logit_softcap = 30.0
    lm = llamalike_common.build_llamalike_transformer(cfg, init_base_rng=jax.random.key(0))
    with pytest.raises(ValueError, match="final_logit_softcap=30.0 has no jaxcirc equivalent"):
        from_penzai(lm, cfg)
    import jaxcirc as jc

    gpt2 = jc.models.gpt2(
        d_model=8,
        n_layers=1,
        n_heads=2,
        d_head=4,
        d_mlp=16,
        d_vocab=11,
        n_ctx=8,
        key=jax.random.key(0),
    )
    with pytest.raises(ValueError, match="to_penzai converts Llama-like"):
        to_penzai(gpt2)
