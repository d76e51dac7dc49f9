"""Units of a model: reading them, running from them, masking them, compiling the abstraction."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomise

import jaxcirc as jc
from jaxcirc import zoo
from jaxcirc.methods import (
    compile_abstraction,
    downstream,
    replace,
    unit_activations,
    unit_shape,
    unit_sites,
)
from jaxcirc.models._replacement import CONSTANT, FOLD, KEPT, Replacement

MLP_SITE, Z_SITE, POST_SITE = "hidden.1", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"


@eqx.filter_jit
def _batched(f, *args):
    return jax.vmap(f)(*args)


@pytest.fixture(scope="module")
def mlp():
    return zoo.digits_mlp()


@pytest.fixture(scope="module")
def x():
    return zoo.digits_data().x_test[:32]


@pytest.fixture(scope="module")
def gpt():
    k1, k2 = jax.random.split(jax.random.key(0))
    model = jc.models.gpt2(
        key=k1, n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16
    )
    return randomise(model, k2)  # non-trivial norms and biases


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (4, 9), 0, 50)


def _random_replacement(site, n_units, d_unit, seed, kinds, garbage=True):
    """Keep about half the units; the rest constants or folds (per `kinds`). With `garbage`,
    the rows of kept units and the columns of pruned units of `mix` are non-zero too: entries
    that `Replacement.apply` ignores, so compilation must ignore them as well."""
    rng = np.random.default_rng(seed)
    keep = rng.random(n_units) < 0.5
    keep[0], keep[1] = True, False
    kind = np.where(keep, KEPT, rng.choice(kinds, n_units)).astype(np.int32)
    offset = rng.normal(size=(n_units, d_unit)).astype(np.float32)
    fold_rows, kept_cols = np.repeat(kind == FOLD, d_unit), np.repeat(keep, d_unit)
    mix = np.zeros((n_units * d_unit,) * 2, np.float32)
    mix[np.ix_(fold_rows, kept_cols)] = rng.normal(
        scale=0.3, size=(fold_rows.sum(), kept_cols.sum())
    )
    if garbage:
        mix[kept_cols] = 5.0
        mix[:, ~kept_cols] += 7.0
    return Replacement(site, jnp.asarray(keep), jnp.asarray(offset), jnp.asarray(mix), kind)


def _apply_loop(r, a):
    """`Replacement.apply` of one example's `[n_units, d_unit]` by explicit loops."""
    keep, offset, mix = np.asarray(r.keep), np.asarray(r.offset), np.asarray(r.mix)
    u, d = offset.shape
    a = np.asarray(a, np.float64)
    out = a.copy()
    for j in range(u):
        if keep[j]:
            continue
        for e in range(d):
            value = offset[j, e]
            for k in range(u):
                if keep[k]:
                    for f in range(d):
                        value += mix[j * d + e, k * d + f] * a[k, f]
            out[j, e] = value
    return out


# ---------------------------------------------------------------------------------------------
# MLP classifier
# ---------------------------------------------------------------------------------------------


def test_mlp_units_and_downstream_reproduce_forward(mlp, x):
    a = unit_activations(mlp, x, MLP_SITE)
    assert a.shape == (32, 128, 1) and unit_shape(mlp, MLP_SITE) == (128, 1)
    w0, w1, b0, b1 = (np.asarray(v, np.float64) for v in (*mlp.weights[:2], *mlp.biases[:2]))
    h0 = np.maximum(np.asarray(x) @ w0.T + b0, 0)
    np.testing.assert_allclose(a[..., 0], np.maximum(h0 @ w1.T + b1, 0), atol=1e-4)
    for site in unit_sites(mlp):
        f = downstream(mlp, site)
        out = _batched(f, unit_activations(mlp, x, site), x)
        np.testing.assert_allclose(out, jax.vmap(mlp)(x), atol=1e-5)


def test_mlp_interventions_by_site_name(mlp, x):
    """`jc.intervene` and `jc.sites` work on an MLPClassifier by its site names, and check
    unit indices against the site's width."""
    assert jc.sites(mlp) == mlp.sites
    zeroed = jc.intervene(mlp, {MLP_SITE: jc.Zero(unit=jnp.array([0, 5]))})
    logits, acts = jax.vmap(zeroed.run)(x)
    hidden = jax.vmap(mlp.run)(x)[1][MLP_SITE].at[:, jnp.array([0, 5])].set(0.0)
    want = jax.vmap(lambda a: mlp.from_layer(a, MLP_SITE))(hidden)
    np.testing.assert_allclose(acts[MLP_SITE][:, [0, 5]], 0.0)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    width = mlp.widths[2]
    with pytest.raises(ValueError, match=f"unit {width} out of range.*{MLP_SITE}"):
        jc.intervene(mlp, {MLP_SITE: jc.Zero(unit=width)})
    with pytest.raises(ValueError, match="no site 'hiden.1'.*did you mean 'hidden.1'"):
        jc.intervene(mlp, {"hiden.1": jc.Zero()})
    with pytest.raises(ValueError, match="site kinds name transformer sites"):
        jc.sites(mlp, "resid_pre")


def test_mlp_masked_model_matches_loop_reference(mlp, x):
    r = _random_replacement(MLP_SITE, 128, 1, seed=0, kinds=[CONSTANT, FOLD])
    masked = replace(mlp, r)
    a = np.asarray(unit_activations(mlp, x, MLP_SITE))
    replaced = np.stack([_apply_loop(r, row) for row in a])
    np.testing.assert_allclose(unit_activations(masked, x, MLP_SITE), replaced, atol=1e-4)
    w2, b2 = np.asarray(mlp.weights[2], np.float64), np.asarray(mlp.biases[2], np.float64)
    np.testing.assert_allclose(jax.vmap(masked)(x), replaced[..., 0] @ w2.T + b2, atol=1e-4)
    # the identity replacement changes nothing
    same = replace(mlp, Replacement.identity(MLP_SITE, 128))
    np.testing.assert_allclose(jax.vmap(same)(x), jax.vmap(mlp)(x), atol=1e-6)


@pytest.mark.parametrize(
    "kinds, sites",
    [
        ([CONSTANT], ["hidden.1"]),
        ([FOLD], ["hidden.1"]),
        ([CONSTANT, FOLD], ["hidden.0"]),
        ([CONSTANT, FOLD], ["hidden.0", "hidden.1"]),
    ],
)
def test_mlp_compiled_equals_masked(mlp, x, kinds, sites):
    reps = [_random_replacement(s, 128, 1, seed=i + 3, kinds=kinds) for i, s in enumerate(sites)]
    masked, small = replace(mlp, reps), compile_abstraction(mlp, reps)
    expected = jax.vmap(masked)(x)
    assert float(jnp.abs(expected - jax.vmap(mlp)(x)).max()) > 0.1  # the replacement matters
    np.testing.assert_allclose(jax.vmap(small)(x), expected, atol=1e-5, rtol=1e-5)
    assert small.n_params < mlp.n_params
    assert all(r is None for r in small.replacements)
    for r in reps:
        assert small.widths[1 + mlp.layer_index(r.site)] == r.n_kept


def test_mlp_compiled_saves_and_loads(mlp, x, tmp_path):
    from jaxcirc.zoo import _digits

    r = _random_replacement(MLP_SITE, 128, 1, seed=5, kinds=[CONSTANT, FOLD])
    small = compile_abstraction(mlp, {MLP_SITE: r})
    _digits.save(tmp_path / "small", small)
    loaded = zoo.digits_mlp(tmp_path / "small")
    np.testing.assert_array_equal(jax.vmap(loaded)(x), jax.vmap(small)(x))


def test_mlp_errors(mlp, x):
    with pytest.raises(ValueError, match=r"unknown site 'hidden.7'.*did you mean 'hidden.1'"):
        unit_activations(mlp, x, "hidden.7")
    with pytest.raises(ValueError, match=r"did you mean 'hidden.0'"):
        downstream(mlp, "hiden.0")
    bad = Replacement.identity(MLP_SITE, 100)
    with pytest.raises(ValueError, match=r"\(100, 1\); the site has \(128, 1\)"):
        replace(mlp, bad)
    with pytest.raises(ValueError, match=r"\(100, 1\); the site has \(128, 1\)"):
        compile_abstraction(mlp, [bad])
    r = Replacement.identity(MLP_SITE, 128)
    with pytest.raises(ValueError, match="two replacements for site 'hidden.1'"):
        replace(mlp, [r, r])
    with pytest.raises(ValueError, match="already replaced"):
        replace(replace(mlp, r), r)
    with pytest.raises(ValueError, match="keeps no unit"):
        compile_abstraction(mlp, Replacement.constants(MLP_SITE, np.zeros(128, bool), np.ones(128)))
    with pytest.raises(ValueError, match=r"shape \[n, 64\]"):
        unit_activations(mlp, x[:, :10], MLP_SITE)
    with pytest.raises(TypeError, match="jaxcirc.Transformer and jaxcirc.models.MLPClassifier"):
        unit_activations(object(), x, MLP_SITE)


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------


def test_transformer_units_and_downstream(gpt, tokens):
    _, acts = jax.vmap(gpt.run)(tokens)
    cases = {
        POST_SITE: ((4, 9, 64, 1), (64, 1)),
        Z_SITE: ((4, 9, 4, 8), (4, 8)),
        "blocks.1.hook_resid_pre": ((4, 9, 32, 1), (32, 1)),
    }
    logits = jax.vmap(gpt)(tokens)
    for site, (shape, units) in cases.items():
        a = unit_activations(gpt, tokens, site)
        assert a.shape == shape and unit_shape(gpt, site) == units
        np.testing.assert_allclose(a.reshape(acts[site].shape), acts[site], atol=1e-6)
        out = _batched(downstream(gpt, site), a, tokens)
        np.testing.assert_allclose(out, logits, atol=1e-5)
        # and downstream reads `a`: a different value changes the logits
        noise = jax.random.normal(jax.random.key(9), a.shape)
        moved = _batched(downstream(gpt, site), a + noise, tokens)
        assert float(jnp.abs(moved - logits).max()) > 1e-3


def test_transformer_masked_model_matches_patch(gpt, tokens):
    # constant heads through ReplaceUnits == the library's Patch of those heads
    keep = np.array([True, False, True, False])
    const = jax.random.normal(jax.random.key(3), (4, 8))
    r = Replacement.constants(Z_SITE, keep, const)
    masked = replace(gpt, r)
    value = jnp.broadcast_to(const, (tokens.shape[1], 4, 8))
    patched = jc.intervene(gpt, {Z_SITE: jc.Patch(value, head=jnp.array([1, 3]))})
    np.testing.assert_allclose(jax.vmap(masked)(tokens), jax.vmap(patched)(tokens), atol=1e-5)
    # a fold on MLP neurons: the masked site's value is the loop reference of apply
    f = _random_replacement(POST_SITE, 64, 1, seed=1, kinds=[CONSTANT, FOLD])
    a = np.asarray(unit_activations(gpt, tokens, POST_SITE))
    got = unit_activations(replace(gpt, f), tokens, POST_SITE)
    want = np.stack([np.stack([_apply_loop(f, pos) for pos in seq]) for seq in a])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the identity replacement changes nothing
    same = replace(gpt, Replacement.identity(Z_SITE, 4, 8))
    np.testing.assert_allclose(jax.vmap(same)(tokens), jax.vmap(gpt)(tokens), atol=1e-6)


def test_transformer_compiled_equals_masked(gpt, tokens):
    try:
        from jaxcirc.models import narrow  # noqa: F401
    except ImportError:
        pytest.skip("jaxcirc.models.narrow (another engineer's) is not there yet")
    reps = [
        _random_replacement(Z_SITE, 4, 8, seed=2, kinds=[CONSTANT, FOLD], garbage=False),
        _random_replacement(POST_SITE, 64, 1, seed=4, kinds=[CONSTANT, FOLD], garbage=False),
    ]
    masked, small = replace(gpt, reps), compile_abstraction(gpt, reps)
    expected = jax.vmap(masked)(tokens)
    assert float(jnp.abs(expected - jax.vmap(gpt)(tokens)).max()) > 1e-2
    np.testing.assert_allclose(jax.vmap(small)(tokens), expected, atol=1e-5, rtol=1e-5)
    n_params = lambda m: sum(v.size for v in jax.tree_util.tree_leaves(m))
    assert n_params(small) < n_params(gpt)


def test_transformer_errors(gpt, tokens):
    with pytest.raises(ValueError, match=r"no site 'blocks.0.mlp.hook_pots'.*did you mean"):
        unit_activations(gpt, tokens, "blocks.0.mlp.hook_pots")
    with pytest.raises(ValueError, match=r"no site 'blocks.5.attn.hook_z'"):
        downstream(gpt, "blocks.5.attn.hook_z")
    with pytest.raises(ValueError, match="axes .'head', 'position', 'key_position'."):
        unit_activations(gpt, tokens, "blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match=r"\(4, 4\); the site has \(4, 8\)"):
        replace(gpt, Replacement.identity(Z_SITE, 4, 4))
    with pytest.raises(ValueError, match=r"tokens \[n, seq\]"):
        unit_activations(gpt, tokens[0], Z_SITE)
    with pytest.raises(ValueError, match="token id 50"):
        unit_activations(gpt, tokens.at[1, 2].set(50), Z_SITE)
