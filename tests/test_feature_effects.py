"""Node effects of SAE features and error nodes (Marks et al. 2025), against references that
share none of the method's code: brute-force patches through `jax.sae.splice` / `Patch`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.methods import feature_effects

SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def _saes(d_sae=40, arch="relu"):
    out = []
    for i, site in enumerate(SITES):
        sae = jc.sae.init(arch, 32, d_sae, key=jax.random.key(10 + i), site=site)
        bias = 0.05 * jax.random.normal(jax.random.key(i), (d_sae,))
        sae = eqx.tree_at(lambda s: s.b_enc, sae, bias)  # about half the features fire
        out.append(sae)
    return out


@pytest.fixture(scope="module")
def setup():
    model = tiny("gpt2", seed=3)
    k1, k2 = jax.random.split(jax.random.key(7))
    clean = jax.random.randint(k1, (2, 5), 0, 50)
    patch = jax.random.randint(k2, (2, 5), 0, 50)
    return model, _saes(), clean, patch


def logit_metric(model, t):
    logits = model(t)
    return logits[-1, 3] - logits[-1, 7]


def _codes(model, saes, tokens):
    """Independent reference: each site's activation from a plain run, encoded."""
    acts = jax.vmap(lambda t: model.run(t)[1])(tokens)
    return [(s.encode(acts[s.site]), acts[s.site] - s(acts[s.site])) for s in saes]


def _with_add(model, saes, t, site, fadd=None, eadd=None):
    table = {s.site: jc.sae.Splice(s) for s in saes}
    table[site] = jc.sae.Splice(table[site].sae, feature_add=fadd, error_add=eadd)
    return jc.sae.splice(model, table)


def test_linear_metric_atp_ig_exact_agree(setup):
    """A metric linear in the last site's activation: every method is exact."""
    model, saes, clean, patch = setup
    w = jax.random.normal(jax.random.key(0), (5, 32))

    def metric(m, t):
        return jnp.sum(w * m.run(t)[1][SITES[1]])

    sae = saes[1:]
    effects = {
        method: feature_effects(model, sae, clean, metric, patch=patch, method=method, steps=3)
        for method in ("atp", "ig", "exact")
    }
    # reference: f' = f + Δf changes the activation by Δf W_dec; the metric by w · Δf W_dec
    (fc, ec), (fp, ep) = _codes(model, sae, clean)[0], _codes(model, sae, patch)[0]
    ref_f = (fp - fc) * jnp.einsum("sd,fd->sf", w, sae[0].W_dec)[None]
    ref_e = jnp.einsum("bsd,sd->bs", ep - ec, w)
    for method, fe in effects.items():
        np.testing.assert_allclose(fe.features[0], ref_f, atol=2e-5, err_msg=method)
        np.testing.assert_allclose(fe.errors[0], ref_e, atol=2e-5, err_msg=method)


def test_atp_is_the_linear_limit_of_exact_patching(setup):
    """`atp` = lim (m(a + εΔa) − m(a)) / ε for single features, on a nonlinear metric."""
    model, saes, clean, patch = setup
    fe = feature_effects(model, saes, clean, logit_metric, patch=patch, method="atp")
    codes_c, codes_p = _codes(model, saes, clean), _codes(model, saes, patch)
    eps = 1e-3
    checked = 0
    for s, site in enumerate(SITES):
        df = np.asarray(codes_p[s][0] - codes_c[s][0])
        for b, p, i in np.argwhere(np.abs(df) > 0.05)[:6]:
            add = jnp.zeros((5, 40)).at[p, i].set(eps * df[b, p, i])
            m = _with_add(model, saes, clean[b], site, fadd=add)
            ref = (logit_metric(m, clean[b]) - logit_metric(model, clean[b])) / eps
            np.testing.assert_allclose(fe.features[s][b, p, i], ref, rtol=2e-2, atol=2e-3)
            checked += 1
        # an error node: its whole vector moved by ε·Δε
        de = codes_p[s][1] - codes_c[s][1]
        m = _with_add(model, saes, clean[0], site, eadd=eps * de[0].at[:-1].set(0.0))
        ref = (logit_metric(m, clean[0]) - logit_metric(model, clean[0])) / eps
        np.testing.assert_allclose(fe.errors[s][0, -1], ref, rtol=2e-2, atol=2e-3)
    assert checked >= 6


def test_exact_is_one_node_patched(setup):
    model, saes, clean, patch = setup
    fe = feature_effects(model, saes, clean, logit_metric, patch=patch, method="exact")
    codes_c, codes_p = _codes(model, saes, clean), _codes(model, saes, patch)
    s, b, p, i = 0, 1, 2, int(np.argmax(np.abs(codes_p[0][0] - codes_c[0][0])[1, 2]))
    add = jnp.zeros((5, 40)).at[p, i].set((codes_p[s][0] - codes_c[s][0])[b, p, i])
    ref = logit_metric(_with_add(model, saes, clean[b], SITES[s], fadd=add), clean[b])
    np.testing.assert_allclose(fe.features[s][b, p, i], ref - logit_metric(model, clean[b]),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_ig_completeness_over_a_site(setup):
    """The IG effects of a site's features and error sum to the effect of patching the whole
    site (the rest of the model clean) as the steps grow."""
    model, saes, clean, patch = setup
    fe = feature_effects(model, saes, clean, logit_metric, patch=patch, method="ig", steps=48)
    atp = feature_effects(model, saes, clean, logit_metric, patch=patch, method="atp")
    acts_p = jax.vmap(lambda t: model.run(t)[1])(patch)
    for s, site in enumerate(SITES):
        for b in range(2):
            patched = jc.intervene(model, {site: jc.interventions.Patch(acts_p[site][b])})
            total = logit_metric(patched, clean[b]) - logit_metric(model, clean[b])
            got = fe.features[s][b].sum() + fe.errors[s][b].sum()
            np.testing.assert_allclose(got, total, rtol=0.03, atol=3e-3)
            linear = atp.features[s][b].sum() + atp.errors[s][b].sum()
            assert abs(got - total) < abs(linear - total) + 1e-6


def test_zero_and_mean_patches_and_padding(setup):
    model, saes, clean, _ = setup
    lengths = np.array([5, 3])
    for patch in (None, "mean"):
        fe = feature_effects(model, saes[:1], clean, logit_metric, patch=patch, method="atp",
                             lengths=lengths)  # fmt: skip
        assert np.all(np.asarray(fe.features[0])[1, 3:] == 0)
        assert np.all(np.asarray(fe.errors[0])[1, 3:] == 0)
    # zero patch: Δf = −f, so a feature that does not fire has no effect
    fe = feature_effects(model, saes[:1], clean, logit_metric, method="atp")
    f = _codes(model, saes[:1], clean)[0][0]
    assert np.all(np.asarray(fe.features[0])[np.asarray(f) == 0] == 0)


def test_aggregate_top_above(setup):
    model, saes, clean, patch = setup
    fe = feature_effects(model, saes, clean, logit_metric, patch=patch, method="atp")
    summed = fe.aggregate("sum_positions")
    np.testing.assert_allclose(summed.features[1], np.asarray(fe.features[1]).mean(0).sum(0),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    none = fe.aggregate("none")
    assert none.features[0].shape == (5, 40) and none.errors[0].shape == (5,)
    top = none.top(4)
    arrays = [x for f, e in zip(none.features, none.errors) for x in (f, e)]
    values = np.concatenate([np.abs(np.asarray(x)).ravel() for x in arrays])
    best = np.sort(values)[::-1][:4]
    for (site, pos, feat), v in zip(top, best):
        s = none.index(site)
        got = none.errors[s][pos] if feat is None else none.features[s][pos, feat]
        np.testing.assert_allclose(abs(float(got)), v, rtol=1e-6)
    assert len(summed.above(float(best[-1]) / 2)) >= 1
    assert all(pos is None for _, pos, _ in summed.top(5))
    with pytest.raises(ValueError, match="un-sum"):
        summed.aggregate("none")


def test_bad_input(setup):
    model, saes, clean, patch = setup
    with pytest.raises(ValueError, match="'igg'.*ig"):
        feature_effects(model, saes, clean, logit_metric, method="igg")
    with pytest.raises(ValueError, match="shape"):
        feature_effects(model, saes, clean, logit_metric, patch=patch[:, :4])
    with pytest.raises(ValueError, match="lengths"):
        feature_effects(model, saes, clean, logit_metric, lengths=[5, 9])
    with pytest.raises(TypeError, match="metric"):
        feature_effects(model, saes, clean, lambda m: 0.0)
    wide = jc.sae.init("relu", 16, 8, key=jax.random.key(0), site=SITES[0])
    with pytest.raises(ValueError, match="d_in=16"):
        feature_effects(model, [wide], clean, logit_metric)
    with pytest.raises((ValueError, KeyError), match="hook_resid_post"):
        bad = jc.sae.init("relu", 32, 8, key=jax.random.key(0), site="blocks.0.hook_resid_pots")
        feature_effects(model, [bad], clean, logit_metric)


def test_non_finite_names_the_site(setup):
    model, saes, clean, patch = setup
    nan = eqx.tree_at(lambda s: s.W_enc, saes[1], saes[1].W_enc.at[0, 3].set(jnp.nan))
    with pytest.raises(jc.NonFiniteError, match=SITES[1].replace(".", r"\.")):
        feature_effects(model, [saes[0], nan], clean, logit_metric, patch=patch, method="atp")
