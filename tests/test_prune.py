"""`prune_model`, interventional-risk pruning of a whole model (Asiaee 2026, arXiv 2602.24266,
the procedure with its interchange check): the driver against the same steps done by hand
(closed-form curvature of the digits MLP's readout, last site first), compiled abstraction ==
masked model, accuracy kept, baselines, the induction transformer's neurons and heads, the
iterative schedule, compile-once and bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc
from jaxcirc.methods._prune import prune_model
from jaxcirc.methods._risk_pruning import prune
from jaxcirc.methods._units import downstream, replace, unit_activations
from jaxcirc.models import MLPClassifier
from jaxcirc.models._replacement import CONSTANT, FOLD
from jaxcirc.solvers import _curvature
from jaxcirc.solvers._curvature import unit_curvature
from jaxcirc.zoo import digits_accuracy

N_CAL = 300
INDUCTION_SITES = ["blocks.1.mlp.hook_post", "blocks.0.attn.hook_z"]


@pytest.fixture(scope="module")
def digits():
    data = jaxcirc.zoo.digits_data()
    return jaxcirc.zoo.digits_mlp(), data


@pytest.fixture(scope="module")
def induction():
    model = jaxcirc.zoo.induction_mlp_model()
    task = jaxcirc.zoo.induction_task(4, 8, seed=3)
    labels = jnp.where(task.metric.weights[None] > 0, task.metric.targets, -1)
    return model, task.clean, labels


@eqx.filter_jit
def logits(model, x):
    return jax.vmap(model)(x)


def close_to_masked(result, x):
    """max |abstraction − masked| over `x`, and the logits' scale."""
    la, lm = logits(result.abstraction, x), logits(result.masked, x)
    return float(jnp.abs(la - lm).max()), float(jnp.abs(lm).max())


def readout_curvature(model: MLPClassifier, a, y):
    """g and the exact Hessian diagonal of CE for the last hidden layer, in closed form
    (Asiaee 2026, second-order expansion: the readout is linear, so Hessian = GGN =
    Wᵀ(diag p − ppᵀ)W)."""
    W, b = np.asarray(model.weights[-1], np.float64), np.asarray(model.biases[-1], np.float64)
    a = np.asarray(a, np.float64)
    z = a @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(W.shape[0])[np.asarray(y)]
    return (p - onehot) @ W, p @ (W * W) - (p @ W) ** 2


def test_digits_fold_matches_hand_steps_and_keeps_accuracy(digits):
    model, data = digits
    x, y = data.x_train[:N_CAL], data.y_train[:N_CAL]
    res = prune_model(model, x, labels=y, sites="hidden.1", keep_fraction=0.5, method="fold")
    (rep,) = res.replacements
    # the driver == prune() on closed-form g, h of the calibration activations
    a = np.asarray(unit_activations(model, x, "hidden.1"))[..., 0]
    g, h = readout_curvature(model, a, y)
    ref = prune(a, g, h, 0.5, site="hidden.1", method="fold")
    np.testing.assert_array_equal(rep.keep, ref.keep)
    np.testing.assert_allclose(rep.offset, ref.offset, atol=2e-4)
    np.testing.assert_allclose(rep.mix, ref.mix, atol=2e-4)
    assert rep.n_kept == 64 and rep.summary() == {"kept": 64, "constant": 0, "fold": 64}
    assert res.curvature == "ggn" and res.loss == "ce"
    # compiled abstraction: narrower, fewer parameters, the masked model's logits
    assert res.abstraction.widths == (64, 128, 64, 10)
    assert res.n_params_after == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert res.n_params_before == model.n_params == 26122
    diff, scale = close_to_masked(res, data.x_test)
    assert diff <= 1e-5 * scale  # float32 rounding: measured 1.5e-5 on logits of scale ~30
    # test accuracy: full 0.982, this abstraction measured 0.982
    full = digits_accuracy(model, data.x_test, data.y_test)
    assert digits_accuracy(res.abstraction, data.x_test, data.y_test) >= full - 0.02
    assert "hidden.1: kept 64/128, constant 0, fold 64" in res.summary()
    np.testing.assert_allclose(
        res.scores["hidden.1"], np.asarray(jaxcirc.methods.constant_scores(a, g, h)[0]),
        rtol=1e-3, atol=1e-6,
    )  # fmt: skip


def _no_curvature(*args, **kwargs):
    raise AssertionError("curvature computed for a method that does not use it")


def test_digits_baselines(digits, monkeypatch):
    from jaxcirc.methods import _prune

    model, data = digits
    x = data.x_train[:N_CAL]
    acc = {}
    for method in ("variance", "random", "constant"):
        if method != "constant":  # they rank by activations alone: no curvature is computed
            monkeypatch.setattr(_prune, "unit_curvature", _no_curvature)
        else:
            monkeypatch.undo()
        res = prune_model(
            model, x, sites="hidden.1", keep_fraction=0.5, method=method, key=jax.random.key(1)
        )
        (rep,) = res.replacements
        assert res.loss == "kl" and rep.n_kept == 64
        assert np.all(np.asarray(rep.kind)[~np.asarray(rep.keep)] == CONSTANT)
        acc[method] = digits_accuracy(res.abstraction, data.x_test, data.y_test)
        diff, scale = close_to_masked(res, data.x_test)
        assert diff <= 1e-5 * scale
        if method == "variance":  # keeps the highest-variance units, constants = means
            a = np.asarray(unit_activations(model, x, "hidden.1"))[..., 0]
            top = np.argsort(-a.var(0), kind="stable")[:64]
            np.testing.assert_array_equal(np.flatnonzero(rep.keep), np.sort(top))
            pruned = ~np.asarray(rep.keep)
            np.testing.assert_allclose(rep.offset[pruned, 0], a.mean(0)[pruned], atol=1e-5)
    # measured: variance 0.970, random 0.946, constant (KL curvature) 0.936; full 0.982
    assert min(acc.values()) >= 0.9, acc


def test_two_sites_last_first_on_the_abstraction(digits):
    """hidden.1 is pruned first; hidden.0 is then measured on the model with hidden.1 replaced."""
    model, data = digits
    x, y = data.x_train[:N_CAL], data.y_train[:N_CAL]
    res = prune_model(
        model, x, labels=y, sites=["hidden.0", "hidden.1"], keep_fraction=[0.25, 0.5],
        method="constant",
    )  # fmt: skip
    r0, r1 = res.replacements
    assert (r0.site, r1.site, r0.n_kept, r1.n_kept) == ("hidden.0", "hidden.1", 32, 64)
    # by hand
    first = prune_model(model, x, labels=y, sites="hidden.1", keep_fraction=0.5, method="constant")
    np.testing.assert_array_equal(first.replacements[0].keep, r1.keep)
    current = replace(model, first.replacements[0])
    a = unit_activations(current, x, "hidden.0")
    # (a key, unused by "ggn", as the driver passes one: the same compiled program)
    c = unit_curvature(
        downstream(current, "hidden.0"), a, x, y, method="ggn", key=jax.random.key(0)
    )
    ref = prune(a, c.grad, c.curv, 0.25, site="hidden.0", method="constant")
    np.testing.assert_array_equal(ref.keep, r0.keep)
    np.testing.assert_allclose(ref.offset, r0.offset, atol=1e-6)
    assert res.abstraction.widths == (64, 32, 64, 10)
    diff, scale = close_to_masked(res, data.x_test)
    assert diff <= 1e-5 * scale


def test_induction_neurons_and_heads_compile_to_a_smaller_transformer(induction):
    model, tokens, labels = induction
    res = prune_model(
        model, tokens, labels=labels, sites=INDUCTION_SITES, keep_fraction=[0.25, 0.5],
        method="fold",
    )  # fmt: skip
    mlp, heads = res.replacements
    assert (mlp.n_kept, heads.n_kept) == (64, 2) and res.curvature == "fisher"
    assert mlp.summary()["fold"] == 192 and heads.summary()["fold"] == 2
    cfg = res.abstraction.cfg
    assert tuple(cfg.layer_d_mlp) == (256, 64) and tuple(cfg.layer_n_heads) == (2, 4)
    # 192 neurons x (64 in + 1 bias + 64 out) and 2 heads x 4 x (64 x 16) + their 3 biases
    removed = 192 * (64 + 1 + 64) + 2 * (4 * 64 * 16 + 3 * 16)
    assert res.n_params_before - res.n_params_after == removed
    evaluation = jaxcirc.zoo.induction_task(16, 8, seed=11).clean
    diff, scale = close_to_masked(res, evaluation)
    assert diff <= 1e-5 * scale  # measured 2.8e-5 on logits of scale ~7 (float32)
    # the masked model is the full model with both sites' replacements
    direct = replace(model, res.replacements)
    np.testing.assert_array_equal(logits(direct, evaluation), logits(res.masked, evaluation))
    # second-half next-token accuracy: full model 1.0, this abstraction measured 0.98
    predicted = logits(res.abstraction, evaluation)[:, 8:-1].argmax(-1)
    assert float((predicted == evaluation[:, 9:]).mean()) >= 0.8


def test_iterative_schedule(digits, monkeypatch):
    model, data = digits
    x, y = data.x_train[:N_CAL], data.y_train[:N_CAL]
    kw = dict(labels=y, sites="hidden.1", keep_fraction=0.5)
    # variance depends only on the site's activations, which its own replacement cannot change
    one = prune_model(model, x, method="variance", **kw)
    it = prune_model(model, x, method="variance", schedule="iterative", block=16, **kw)
    np.testing.assert_array_equal(one.replacements[0].keep, it.replacements[0].keep)
    # constant: the first block is the one-shot ranking's lowest 16; later blocks are re-scored
    # on the model with the constants so far in place, and the curvature program compiles
    # twice in all (the plain downstream, then every re-scoring round)
    counted = eqx.filter_jit(
        eqx.debug.assert_max_traces(_curvature._curvature.__wrapped__, max_traces=2)
    )
    monkeypatch.setattr(_curvature, "_curvature", counted)
    it = prune_model(model, x, method="constant", schedule="iterative", block=16, **kw)
    one = prune_model(model, x, method="constant", **kw)
    first16 = np.argsort(np.asarray(it.scores["hidden.1"]), kind="stable")[:16]
    assert not np.asarray(it.replacements[0].keep)[first16].any()
    assert it.replacements[0].n_kept == one.replacements[0].n_kept == 64
    assert not np.array_equal(it.replacements[0].keep, one.replacements[0].keep)
    # fold: runs, every pruned unit folded, exact compilation, accuracy kept
    fold = prune_model(model, x, method="fold", schedule="iterative", block=16, **kw)
    assert np.all(
        np.asarray(fold.replacements[0].kind)[~np.asarray(fold.replacements[0].keep)] == FOLD
    )
    diff, scale = close_to_masked(fold, data.x_test)
    assert diff <= 1e-5 * scale
    assert digits_accuracy(fold.abstraction, data.x_test, data.y_test) >= 0.95


def test_errors(digits):
    model, data = digits
    x, y = data.x_train[:N_CAL], data.y_train[:N_CAL]
    for bad in (0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match=r"keep_fraction for 'hidden.1' must be in \(0, 1\]"):
            prune_model(model, x, sites="hidden.1", keep_fraction=bad)
    with pytest.raises(ValueError, match="did you mean 'hidden.1'"):
        prune_model(model, x, sites="hiden.1", keep_fraction=0.5)
    with pytest.raises(ValueError, match="listed twice"):
        prune_model(model, x, sites=["hidden.1", "hidden.1"], keep_fraction=0.5)
    with pytest.raises(ValueError, match="did you mean 'fold'"):
        prune_model(model, x, sites="hidden.1", keep_fraction=0.5, method="fld")
    with pytest.raises(ValueError, match="did you mean 'fisher'"):
        prune_model(model, x, sites="hidden.1", keep_fraction=0.5, curvature="fischer")
    with pytest.raises(ValueError, match=r"needs at least 9 calibration rows .* got 5 \(5 inputs"):
        prune_model(model, x[:5], sites="hidden.1", keep_fraction=0.5, method="fold")
    with pytest.raises(ValueError, match=r"labels must have shape \[n\] = \(300,\)"):
        prune_model(model, x, labels=y[:10], sites="hidden.1", keep_fraction=0.5)
    # NaN input weights of unit 7 of hidden.1: its activation, gradient and curvature are NaN
    w = model.weights[1].at[7].set(jnp.nan)
    broken = MLPClassifier((model.weights[0], w, model.weights[2]), model.biases)
    with pytest.raises(ValueError, match="site 'hidden.1'.* not finite at unit 7"):
        prune_model(broken, x, labels=y, sites="hidden.1", keep_fraction=0.5)
    # an infinite readout weight of unit 3: finite activations, non-finite curvature
    w2 = model.weights[2].at[:, 3].set(jnp.inf)
    broken = MLPClassifier((*model.weights[:2], w2), model.biases)
    with pytest.raises(ValueError, match="site 'hidden.1': non-finite .* at unit"):
        prune_model(broken, x, labels=y, sites="hidden.1", keep_fraction=0.5)
    induction = jaxcirc.zoo.induction_mlp_model()
    with pytest.raises(ValueError, match="did you mean 'blocks.0.attn.hook_z'"):
        prune_model(
            induction, jnp.zeros((2, 4), int), sites="blocks.0.attn.hook_zz", keep_fraction=0.5
        )
