"""`jaxcirc.models.narrow`: an abstraction compiled into a smaller model equals the masked
full model (the full model with each site passed through `Replacement.apply`)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc.models import narrow
from jaxcirc.models._replacement import CONSTANT, FOLD, KEPT, Replacement

TOKENS = jax.random.randint(jax.random.key(1), (3, 12), 0, 128)


def _model(family, seed=0, **kw):
    return getattr(jc.models, family)(key=jax.random.key(seed), **kw)


def _random_replacement(site, keep, d_unit, seed, fold=True, junk=True):
    """Constants for every pruned unit, plus (with `fold`) random mixes from kept coordinates
    into every other pruned unit; `junk` fills the entries the convention ignores (rows of kept
    units, columns of pruned units) so a wrong reading of the convention shows."""
    rng = np.random.default_rng(seed)
    keep = np.asarray(keep, bool)
    u, d = keep.size, d_unit
    offset = np.where(keep[:, None], 0.0, rng.normal(size=(u, d)))
    coord_keep = np.repeat(keep, d)
    mix = np.zeros((u * d, u * d))
    kind = np.where(keep, KEPT, CONSTANT)
    if fold:
        folded = (~keep) & (np.arange(u) % 2 == 0)
        rows = np.repeat(folded, d)
        mix[np.ix_(rows, coord_keep)] = rng.normal(size=(rows.sum(), coord_keep.sum())) * 0.3
        kind = np.where(folded, FOLD, kind)
    if junk:
        mix[coord_keep, :] = rng.normal(size=(coord_keep.sum(), u * d))
        mix[:, ~coord_keep] += rng.normal(size=(u * d, (~coord_keep).sum()))
    return Replacement(
        site,
        jnp.asarray(keep),
        jnp.asarray(offset, jnp.float32),
        jnp.asarray(mix, jnp.float32),
        jnp.asarray(kind, jnp.int32),
    )


def _masked(model, replacements):
    """The reference: the full model with each site's activation replaced by `apply`."""

    def fn(rep):
        if rep.site.endswith("mlp.hook_post"):
            return lambda x: rep.apply(x[..., None])[..., 0]
        return lambda x: rep.apply(x)

    return jc.intervene(model, {rep.site: jc.Function(fn(rep)) for rep in replacements})


@eqx.filter_jit
def _logits(model, tokens):
    return jax.vmap(model)(tokens)


def _n_params(model):
    return sum(v.size for v in jc.models.state_dict(model).values())


def _check(model, replacements, tol=1e-5, smaller=True):
    small = narrow(model, replacements)
    want = np.asarray(_logits(_masked(model, replacements), TOKENS))
    got = np.asarray(_logits(small, TOKENS))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    # and the replacements matter: the masked model differs from the full one
    assert np.abs(want - np.asarray(_logits(model, TOKENS))).max() > 1e-3
    assert (_n_params(small) < _n_params(model)) == smaller
    return small


def _keep(n, seed, frac=0.5):
    keep = np.random.default_rng(seed).random(n) < frac
    keep[0], keep[-1] = True, False  # at least one kept and one pruned
    return keep


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_mlp_constants_and_folds(family):
    model = _model(family)
    F = model.cfg.d_mlp
    reps = [
        _random_replacement("blocks.0.mlp.hook_post", _keep(F, 1), 1, 2, fold=False),
        _random_replacement("blocks.1.mlp.hook_post", _keep(F, 3, 0.3), 1, 4, fold=True),
    ]
    small = _check(model, reps)
    assert small.cfg.layer_d_mlp == (int(reps[0].keep.sum()), int(reps[1].keep.sum()))
    assert small.blocks[1].mlp.W_in.shape == (model.cfg.d_model, small.cfg.layer_d_mlp[1])
    assert small.blocks[1].mlp.W_out.shape == (small.cfg.layer_d_mlp[1], model.cfg.d_model)
    if family == "llama":  # no MLP biases: narrowing adds b_out only
        assert model.blocks[0].mlp.b_out is None and small.blocks[0].mlp.b_out is not None
        assert small.blocks[0].mlp.b_in is None and small.cfg.mlp_out_bias is True
        assert small.blocks[0].mlp.W_gate.shape[1] == small.cfg.layer_d_mlp[0]


def test_mlp_fold_matches_hand_derivation():
    """One pruned neuron `a_p = c + m·a_k`: `b_out += c W_out[p]`, `W_out[k] += m W_out[p]`."""
    model = _model("gpt2", d_mlp=4)
    keep = np.array([True, False, True, True])
    mix = np.zeros((4, 4))
    mix[1, 2] = 0.7
    rep = Replacement(
        "blocks.0.mlp.hook_post",
        jnp.asarray(keep),
        jnp.asarray([[0.0], [1.5], [0.0], [0.0]]),
        jnp.asarray(mix, jnp.float32),
        jnp.asarray([KEPT, FOLD, KEPT, KEPT]),
    )
    small = narrow(model, rep)
    W, b = np.asarray(model.blocks[0].mlp.W_out), np.asarray(model.blocks[0].mlp.b_out)
    np.testing.assert_allclose(small.blocks[0].mlp.b_out, b + 1.5 * W[1], atol=1e-7)
    expected = W[[0, 2, 3]].copy()
    expected[1] += 0.7 * W[1]
    np.testing.assert_allclose(small.blocks[0].mlp.W_out, expected, atol=1e-7)
    np.testing.assert_array_equal(small.blocks[0].mlp.W_in, model.blocks[0].mlp.W_in[:, [0, 2, 3]])


def test_heads_and_mlps_at_once_gpt2():
    model = _model("gpt2")
    cfg = model.cfg
    reps = [
        _random_replacement("blocks.0.attn.hook_z", [True, False, True, False], cfg.d_head, 5),
        _random_replacement("blocks.1.attn.hook_z", [False, True, False, False], cfg.d_head, 6),
        _random_replacement("blocks.1.mlp.hook_post", _keep(cfg.d_mlp, 7), 1, 8),
    ]
    small = _check(model, reps)
    assert small.cfg.layer_n_heads == (2, 1) and small.cfg.layer_n_kv_heads == (2, 1)
    attn = small.blocks[1].attn
    assert attn.W_Q.shape[0] == attn.W_K.shape[0] == attn.W_O.shape[0] == 1
    # sites and the run's activations follow the narrower widths
    _, acts = small.run(TOKENS[0])
    assert acts["blocks.0.attn.hook_z"].shape == (12, 2, cfg.d_head)
    assert acts["blocks.1.mlp.hook_post"].shape == (12, int(reps[2].keep.sum()))
    assert jc.sites(small) == jc.sites(model)


def test_grouped_query_heads():
    # 4 query heads in 2 key/value groups, no attention biases; one pattern per layer
    model = _model("llama", n_layers=3)
    patterns = [
        [True, True, False, True],  # groups keep 2 and 1 heads: a kv copy per kept head
        [True, False, True, False],  # 1 and 1: still grouped, group size 1
        [False, False, True, True],  # 0 and 2: one group of 2
    ]
    reps = [
        _random_replacement(f"blocks.{i}.attn.hook_z", keep, model.cfg.d_head, 9 + i)
        for i, keep in enumerate(patterns)
    ]
    small = _check(model, reps)
    assert small.cfg.layer_n_heads == (3, 2, 2)
    assert small.cfg.layer_n_kv_heads == (3, 2, 1)
    assert [b.attn.W_K.shape[0] for b in small.blocks] == [3, 2, 1]
    assert small.blocks[0].attn.b_O is not None and small.cfg.attn_out_bias
    # the uneven layer alone: one more kv head than it drops query heads, so more weights
    _check(model, reps[:1], smaller=False)


def test_layers_may_keep_nothing():
    model = _model("gpt2")
    cfg = model.cfg
    reps = [
        _random_replacement("blocks.0.attn.hook_z", [False] * 4, cfg.d_head, 10, fold=False),
        _random_replacement("blocks.1.mlp.hook_post", [False] * cfg.d_mlp, 1, 11, fold=False),
    ]
    small = _check(model, reps)
    assert small.cfg.layer_n_heads == (0, 4) and small.cfg.layer_d_mlp == (cfg.d_mlp, 0)
    assert np.isfinite(np.asarray(_logits(small, TOKENS))).all()


def test_narrowing_a_narrowed_model_composes():
    model = _model("gpt2")
    cfg = model.cfg
    first = _random_replacement("blocks.0.mlp.hook_post", _keep(cfg.d_mlp, 12), 1, 13)
    head = _random_replacement("blocks.1.attn.hook_z", [True, True, False, True], cfg.d_head, 14)
    once = narrow(model, [first])
    n0 = once.cfg.layer_d_mlp[0]
    second = _random_replacement("blocks.0.mlp.hook_post", _keep(n0, 15), 1, 16)
    twice = narrow(once, [second, head])
    K1 = np.asarray(first.keep)

    def both(x):  # `second` acts on the kept neurons of `first`, which its folds then read
        x = x.at[..., K1].set(second.apply(x[..., K1, None])[..., 0])
        return first.apply(x[..., None])[..., 0]

    reference = jc.intervene(_masked(model, [head]), {first.site: jc.Function(both)})
    want = _logits(reference, TOKENS)
    np.testing.assert_allclose(_logits(twice, TOKENS), want, atol=1e-5, rtol=0)
    assert twice.cfg.layer_d_mlp == (int(second.keep.sum()), cfg.d_mlp)


def test_identity_and_attn_only():
    model = _model("attn_only")
    rep = Replacement.identity("blocks.1.attn.hook_z", 4, model.cfg.d_head)
    same = narrow(model, rep)
    assert same.cfg == model.cfg  # nothing pruned: no per-layer widths
    np.testing.assert_array_equal(_logits(same, TOKENS), _logits(model, TOKENS))
    rep = _random_replacement("blocks.1.attn.hook_z", [True, False, False, True], 16, 17)
    small = _check(model, [rep])
    assert small.cfg.layer_n_heads == (4, 2)


def test_round_trips(tmp_path):
    model = _model("llama")
    cfg = model.cfg
    reps = [
        _random_replacement("blocks.0.attn.hook_z", [True, True, False, True], cfg.d_head, 18),
        _random_replacement("blocks.1.mlp.hook_post", _keep(cfg.d_mlp, 19), 1, 20),
    ]
    small = narrow(model, reps)
    want = np.asarray(_logits(small, TOKENS))
    again = jc.TransformerConfig.from_json(small.cfg.to_json())
    assert again == small.cfg and hash(again) == hash(small.cfg)
    rebuilt = jc.models.from_state_dict(again, jc.models.state_dict(small))
    np.testing.assert_array_equal(_logits(rebuilt, TOKENS), want)
    jc.save(tmp_path / "small", small)
    loaded = jc.load(tmp_path / "small")
    assert loaded.cfg == small.cfg
    np.testing.assert_array_equal(_logits(loaded, TOKENS), want)
    # an unnarrowed config writes no per-layer fields (files written before stay identical)
    assert "layer_n_heads" not in model.cfg.to_json() and "mlp_out_bias" not in model.cfg.to_json()


def test_same_pattern_compiles_once():
    """Which units are kept is structure; the constants are arrays: a new abstraction with
    the same kept units reuses the compiled forward pass."""
    model = _model("gpt2")
    keep = _keep(model.cfg.d_mlp, 21)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(model, tokens):
        return jax.vmap(model)(tokens)

    for seed in (22, 23):
        run(narrow(model, _random_replacement("blocks.0.mlp.hook_post", keep, 1, seed)), TOKENS)


def test_tools_that_need_uniform_widths_refuse():
    model = _model("gpt2")
    rep = _random_replacement("blocks.0.attn.hook_z", [True, False, True, True], 16, 24)
    small = narrow(model, rep)
    with pytest.raises(ValueError, match="jaxcirc.graph assumes every layer"):
        jc.graph.graph(small)
    _, acts = small.run(TOKENS[0])
    with pytest.raises(ValueError, match="cannot stack 'z'.*narrowed"):
        acts.stack("z")
    assert acts.stack("mlp_post").shape == (2, 12, model.cfg.d_mlp)  # uniform kinds still stack


def test_bad_input():
    model = _model("gpt2")
    F = model.cfg.d_mlp
    ok = Replacement.identity("blocks.0.mlp.hook_post", F)
    with pytest.raises(ValueError, match=r"unknown site 'blocks.0.mlp.hook_pots'.*did you mean"):
        narrow(model, Replacement.identity("blocks.0.mlp.hook_pots", F))
    with pytest.raises(ValueError, match="kind 'resid_pre'.*cannot be narrowed.*hook_post"):
        narrow(model, Replacement.identity("blocks.0.hook_resid_pre", 64))
    with pytest.raises(ValueError, match="no site 'blocks.5.mlp.hook_post'"):
        narrow(model, Replacement.identity("blocks.5.mlp.hook_post", F))
    with pytest.raises(ValueError, match="no site 'blocks.0.mlp.hook_post'"):
        narrow(_model("attn_only"), ok)
    with pytest.raises(ValueError, match=r"\[n_units, d_unit\] = \(100, 1\).*expects \(256, 1\)"):
        narrow(model, Replacement.identity("blocks.0.mlp.hook_post", 100))
    with pytest.raises(ValueError, match=r"\(4, 1\).*expects \(4, 16\)"):
        narrow(model, Replacement.identity("blocks.0.attn.hook_z", 4))
    with pytest.raises(ValueError, match="two replacements for site"):
        narrow(model, [ok, ok])
    with pytest.raises(TypeError, match="Replacement"):
        narrow(model, {"blocks.0.mlp.hook_post": ok})
    with pytest.raises(TypeError, match="expects a Transformer"):
        narrow("gpt2", ok)
    bad = Replacement.constants("blocks.0.mlp.hook_post", np.arange(F) > 2, np.full(F, np.nan))
    with pytest.raises(ValueError, match="non-finite offset or mix \\(units \\[0, 1, 2"):
        narrow(model, bad)
    with pytest.raises(ValueError, match="carries interventions"):
        narrow(_masked(model, [ok]), ok)
    with pytest.raises(ValueError, match="cannot run under jit"):
        jax.jit(lambda off: narrow(model, dataclasses.replace(ok, offset=off)))(ok.offset)


def test_config_validates_layer_widths():
    cfg = jc.models.gpt2()
    with pytest.raises(ValueError, match=r"layer_n_heads=\(4,\): expected None or 2 \(n_layers\)"):
        cfg.replace(layer_n_heads=(4,))
    with pytest.raises(ValueError, match="layer_d_mlp=.*non-negative"):
        cfg.replace(layer_d_mlp=(3, -1))
    with pytest.raises(ValueError, match="layer_d_mlp.*attn_only"):
        jc.models.attn_only().replace(layer_d_mlp=(1, 1))
    with pytest.raises(ValueError, match="a divisor of layer 0's 3 query heads"):
        cfg.replace(layer_n_heads=(3, 4), layer_n_kv_heads=(2, 4))
    with pytest.raises(ValueError, match="layer_n_kv_heads.*unless layer_n_heads"):
        cfg.replace(layer_n_kv_heads=(4, 4))
    narrowed = cfg.replace(layer_n_heads=[3, 0], layer_n_kv_heads=[3, 0])
    assert narrowed.layer_n_heads == (3, 0) and not narrowed.uniform and cfg.uniform


def test_mlp_classifier_narrows_by_the_same_algebra():
    # narrow dispatches on the model class: an MLPClassifier becomes a narrower one
    weights = [jax.random.normal(jax.random.key(i), s) for i, s in enumerate([(6, 5), (4, 6)])]
    mlp = jc.models.MLPClassifier(weights, [jnp.zeros(6), jnp.ones(4)])
    keep = np.array([True, False, True, False, True, True])
    r = _random_replacement("hidden.0", keep, 1, seed=3)
    x = jax.random.normal(jax.random.key(9), (7, 5))
    small = narrow(mlp, r)
    assert isinstance(small, jc.models.MLPClassifier) and small.widths == (5, 4, 4)
    a = jax.vmap(mlp.run)(x)[1]["hidden.0"]
    want = jax.vmap(lambda v: mlp.from_layer(r.apply(v[:, None])[:, 0], "hidden.0"))(a)
    np.testing.assert_allclose(jax.vmap(small)(x), want, atol=1e-5)
    masked = jc.models.MLPClassifier(weights, mlp.biases, [r])
    with pytest.raises(ValueError, match="'hidden.0' already carries an intervention"):
        narrow(masked, r)
    with pytest.raises(ValueError, match=r"\(5, 1\).*expects \(6, 1\)"):
        narrow(mlp, Replacement.identity("hidden.0", 5))
    with pytest.raises(ValueError, match="did you mean 'hidden.0'"):
        narrow(mlp, Replacement.identity("hiden.0", 6))
