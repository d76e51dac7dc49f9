"""The SAE architectures and the splice: codes against NumPy, an identical forward when
nothing is edited, edits against a hand-built substitution, gradients, and clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc.sae import JumpReLUSAE, Splice, init, splice
from jaxcirc.zoo import induction_model

D_IN, D_SAE = 8, 24


def _random(architecture, key=0, **kwargs):
    """An SAE with random, non-trivial biases (and thresholds)."""
    sae = init(architecture, D_IN, D_SAE, key=jax.random.key(key), **kwargs)
    keys = jax.random.split(jax.random.key(key + 100), 3)
    sae = eqx.tree_at(
        lambda s: (s.b_enc, s.b_dec, s.W_enc),
        sae,
        (
            0.3 * jax.random.normal(keys[0], (D_SAE,)),
            0.2 * jax.random.normal(keys[1], (D_IN,)),
            sae.W_enc + 0.1 * jax.random.normal(keys[2], (D_IN, D_SAE)),
        ),
    )
    return sae


def _numpy_codes(sae, x):
    x = np.asarray(x, np.float64)
    pre = (x - np.asarray(sae.b_dec)) @ np.asarray(sae.W_enc) + np.asarray(sae.b_enc)
    arch = sae.architecture
    if arch == "relu":
        return np.maximum(pre, 0)
    if arch == "topk":
        out = np.zeros_like(pre)
        for row, p in enumerate(pre):
            top = np.argsort(-p)[: sae.k]
            out[row, top] = np.maximum(p[top], 0)
        return out
    if arch == "batchtopk":
        return np.where(np.maximum(pre, 0) > float(sae.threshold), np.maximum(pre, 0), 0)
    theta = np.exp(np.asarray(sae.log_threshold))
    relu = np.maximum(pre, 0)
    return np.where(relu > theta, relu, 0)


@pytest.mark.parametrize(
    "architecture, kwargs",
    [("relu", {}), ("topk", {"k": 5}), ("batchtopk", {"k": 5, "threshold": 0.4}),
     ("jumprelu", {"threshold": 0.3})],
)  # fmt: skip
def test_codes_and_reconstruction_match_numpy(architecture, kwargs):
    sae = _random(architecture, **kwargs)
    x = jax.random.normal(jax.random.key(7), (6, D_IN))
    f = sae.encode(x)
    np.testing.assert_allclose(f, _numpy_codes(sae, x), atol=1e-5)
    expected = _numpy_codes(sae, x) @ np.asarray(sae.W_dec) + np.asarray(sae.b_dec)
    np.testing.assert_allclose(sae(x), expected, atol=1e-5)
    np.testing.assert_allclose(sae.error(x), np.asarray(x) - expected, atol=1e-5)
    if architecture == "topk":
        assert int(jnp.max(jnp.sum(f != 0, -1))) <= 5
    # leading axes are free
    np.testing.assert_allclose(sae.encode(x.reshape(2, 3, D_IN)).reshape(6, D_SAE), f, atol=1e-6)


def test_batchtopk_shares_the_budget_over_the_batch():
    sae = _random("batchtopk", k=3)
    x = jax.random.normal(jax.random.key(3), (5, D_IN))
    f = sae.encode_batch(x)
    pre = np.maximum(np.asarray(sae.pre(x)), 0).ravel()
    kept = np.sort(pre)[-15:]
    assert int(jnp.sum(f != 0)) == int(np.sum(kept > 0))
    np.testing.assert_allclose(np.sort(np.asarray(f).ravel())[-15:], kept, atol=1e-6)


def test_relu_penalty_is_decoder_norm_weighted_l1():
    sae = _random("relu")
    sae = eqx.tree_at(lambda s: s.W_dec, sae, sae.W_dec * jnp.arange(1, D_SAE + 1)[:, None])
    f = jnp.abs(jax.random.normal(jax.random.key(1), (4, D_SAE)))
    norms = np.linalg.norm(np.asarray(sae.W_dec), axis=1)
    np.testing.assert_allclose(sae.penalty(f), np.mean(np.asarray(f) @ norms), rtol=1e-5)


def test_jumprelu_threshold_gradient_is_the_straight_through_estimate():
    """Rajamanoharan et al. 2024: d f_i / d θ_i = −(θ_i/ε) K((z_i − θ_i)/ε), rectangle K."""
    sae = _random("jumprelu", threshold=0.3, bandwidth=0.5)
    x = jax.random.normal(jax.random.key(5), (16, D_IN))
    z = np.maximum(np.asarray(sae.pre(x)), 0)
    theta = np.exp(np.asarray(sae.log_threshold))
    window = (np.abs((z - theta) / 0.5) < 0.5).astype(float)
    g = jax.grad(lambda s: jnp.sum(s.encode(x)))(sae).log_threshold
    # chain rule through θ = exp(log θ)
    np.testing.assert_allclose(g, (-(theta / 0.5) * window).sum(0) * theta, rtol=1e-4, atol=1e-6)
    g0 = jax.grad(lambda s: s.l0_penalty(x))(sae).log_threshold
    np.testing.assert_allclose(g0, (-(1 / 0.5) * window).sum(0) / 16 * theta, rtol=1e-4, atol=1e-6)
    assert isinstance(sae, JumpReLUSAE)


@pytest.fixture(scope="module")
def model_and_tokens():
    model = induction_model()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.cfg.d_vocab, (3, 10)))
    return model, tokens


SITE = "blocks.0.hook_resid_post"


def _model_sae(model, architecture="topk", **kwargs):
    kwargs = {"k": 4} if architecture == "topk" else kwargs
    return init(architecture, model.cfg.d_model, 32, key=jax.random.key(2), site=SITE, **kwargs)


def test_unedited_splice_is_the_identity_bit_for_bit(model_and_tokens):
    model, tokens = model_and_tokens
    sae = _model_sae(model)
    spliced = splice(model, sae, feature_add=jnp.zeros(32), error_add=jnp.zeros(model.cfg.d_model))
    for row in tokens:
        assert bool(jnp.all(splice(model, sae)(row) == model(row)))
        assert bool(jnp.all(spliced(row) == model(row)))


def test_edits_equal_a_hand_built_substitution(model_and_tokens):
    model, tokens = model_and_tokens
    sae = _model_sae(model)
    keep = (jnp.arange(32) % 3 != 0).astype(jnp.float32)
    value = jnp.linspace(-1, 1, 32)
    add = 0.1 * jnp.ones((10, 32))
    edited = splice(model, sae, feature_keep=keep, feature_value=value, feature_add=add,
                    error_keep=0.5)  # fmt: skip

    def by_hand(x):
        f = sae.encode(x)
        f2 = keep * f + (1 - keep) * value + add
        return sae.decode(f2) + 0.5 * (x - sae(x))

    handmade = jc.intervene(model, {SITE: jc.Function(by_hand)})
    for row in tokens:
        np.testing.assert_allclose(edited(row), handmade(row), atol=2e-4)
        _, acts = edited.run(row)
        _, clean = model.run(row)
        np.testing.assert_allclose(acts[SITE], by_hand(clean[SITE]), atol=2e-5)


def test_feature_gradient_is_the_decoder_times_the_site_gradient(model_and_tokens):
    model, tokens = model_and_tokens
    sae = _model_sae(model)
    row = tokens[0]

    def metric_of_add(add):
        return splice(model, sae, feature_add=add)(row)[-1, 3]

    def metric_of_site(delta):
        return jc.intervene(model, {SITE: jc.Add(delta)})(row)[-1, 3]

    g_f = jax.grad(metric_of_add)(jnp.zeros((10, 32)))
    g_x = jax.grad(metric_of_site)(jnp.zeros((10, model.cfg.d_model)))
    np.testing.assert_allclose(g_f, g_x @ sae.W_dec.T, rtol=1e-4, atol=1e-6)


def test_splice_on_a_per_head_site_flattens_the_heads(model_and_tokens):
    model, tokens = model_and_tokens
    cfg = model.cfg
    z = "blocks.1.attn.hook_z"
    sae = init("relu", cfg.n_heads * cfg.d_head, 16, key=jax.random.key(0), site=z)
    _, clean = model.run(tokens[0])
    _, acts = splice(model, sae, error_keep=0.0).run(tokens[0])
    flat = clean[z].reshape(10, -1)
    np.testing.assert_allclose(acts[z].reshape(10, -1), sae(flat), atol=2e-5)


def test_bad_inputs_are_named(model_and_tokens):
    model, tokens = model_and_tokens
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="d_in=7.*width 64"):
        splice(model, init("relu", 7, 8, key=key, site=SITE))
    with pytest.raises(KeyError, match="did you mean 'blocks.0.hook_resid_post'"):
        splice(model, init("relu", 64, 8, key=key, site="blocks.0.hook_resid_pots"))
    with pytest.raises(ValueError, match="layer 5 out of range"):
        splice(model, init("relu", 64, 8, key=key, site="blocks.5.hook_resid_post"))
    with pytest.raises(ValueError, match="no site"):
        splice(model, init("relu", 64, 8, key=key))
    with pytest.raises(ValueError, match="reads site 'blocks.0.hook_resid_post'"):
        jc.intervene(model, {"blocks.1.hook_resid_post": Splice(_model_sae(model))})
    with pytest.raises(ValueError, match=r"feature_keep has shape \(5,\)"):
        splice(model, _model_sae(model), feature_keep=jnp.ones(5))(tokens[0])
    with pytest.raises(ValueError, match=r"k \(active features per example\) must be 1..8; got 9"):
        init("topk", 4, 8, k=9, key=key)
    with pytest.raises(ValueError, match="needs k"):
        init("batchtopk", 4, 8, key=key)
    with pytest.raises(ValueError, match="takes no k"):
        init("relu", 4, 8, k=2, key=key)
    with pytest.raises(ValueError, match="did you mean 'topk'"):
        init("topkk", 4, 8, key=key)
    with pytest.raises(ValueError, match="d_sae"):
        init("relu", 4, 0, key=key)
    with pytest.raises(ValueError, match="W_dec has shape"):
        jc.sae.ReLUSAE(jnp.zeros((4, 8)), jnp.zeros(8), jnp.zeros((4, 8)), jnp.zeros(4))
    sae = init("relu", 4, 8, key=key)
    with pytest.raises(ValueError, match="width d_in=4"):
        sae.encode(jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="d_sae=8"):
        sae.decode(jnp.zeros((2, 5)))
