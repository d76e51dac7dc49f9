"""The shipped digits MLP, its data split, its files and the script that trains it."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc
from jaxcirc import zoo
from jaxcirc.models import Replacement
from jaxcirc.models._replacement import ReplaceUnits, with_interventions
from jaxcirc.zoo import _digits


def _numpy_forward(model, x):
    """Reference forward pass in float64 numpy: every hidden layer and the logits."""
    a, hidden = np.asarray(x, np.float64), []
    for w, b in zip(model.weights[:-1], model.biases[:-1]):
        a = np.maximum(a @ np.asarray(w, np.float64).T + np.asarray(b, np.float64), 0.0)
        hidden.append(a)
    logits = a @ np.asarray(model.weights[-1], np.float64).T + np.asarray(model.biases[-1])
    return hidden, logits


def test_data_split_is_fixed_and_scaled():
    data = zoo.digits_data()
    assert data.x_train.shape == (1297, 64) and data.x_test.shape == (500, 64)
    assert data.y_train.shape == (1297,) and data.y_test.shape == (500,)
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert set(np.unique(np.asarray(data.y_test))) == set(range(10))
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    np.testing.assert_array_equal(np.asarray(data.y_test), y[order][1297:])
    np.testing.assert_allclose(np.asarray(data.x_train), x[order][:1297] / 16.0, rtol=1e-7)


def test_shipped_model_is_small_and_accurate():
    data_dir = Path(jaxcirc.__file__).parent / "data"
    assert (data_dir / f"{_digits.NAME}.safetensors").stat().st_size < 200_000
    model = zoo.digits_mlp()
    assert zoo.digits_mlp() is model  # cached
    assert model.widths == (64, 128, 128, 10)
    assert model.sites == ("hidden.0", "hidden.1")
    data = zoo.digits_data()
    test = zoo.digits_accuracy(model, data.x_test, data.y_test)
    assert test == pytest.approx(0.982, abs=1e-3)  # the number in the module docstring
    assert zoo.digits_accuracy(model, data.x_train, data.y_train) == 1.0


def test_forward_hidden_and_from_layer_match_numpy():
    model = zoo.digits_mlp()
    x = zoo.digits_data().x_test[:16]
    hidden, logits = _numpy_forward(model, x)
    np.testing.assert_allclose(jax.vmap(model)(x), logits, atol=1e-4)
    acts = jax.vmap(model.run)(x)[1]
    for layer, site in enumerate(model.sites):
        np.testing.assert_allclose(acts[site], hidden[layer], atol=1e-4)
        out = jax.vmap(lambda a: model.from_layer(a, site))(acts[site])
        np.testing.assert_allclose(out, logits, atol=1e-4)
    # from_layer really uses its argument: zeroing the last hidden layer leaves the bias
    zero = model.from_layer(jnp.zeros(128), "hidden.1")
    np.testing.assert_allclose(zero, model.biases[-1], atol=1e-6)


def test_hidden_sites_take_interventions():
    model = zoo.digits_mlp()
    x = zoo.digits_data().x_test[:8]
    assert [(s.name, s.axes) for s in model.hidden] == [
        ("hidden.0", ("unit",)),
        ("hidden.1", ("unit",)),
    ]
    _, acts = jax.vmap(model.run)(x)
    zeroed = with_interventions(model, {"hidden.1": jaxcirc.Zero(unit=jnp.array([3, 5]))})
    logits, new = jax.vmap(zeroed.run)(x)
    want = acts["hidden.1"].at[:, jnp.array([3, 5])].set(0.0)
    np.testing.assert_array_equal(new["hidden.1"], want)
    np.testing.assert_allclose(new["hidden.0"], acts["hidden.0"])
    expected = jax.vmap(lambda a: model.from_layer(a, "hidden.1"))(want)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # a replacement given to the constructor is a ReplaceUnits intervention at its site
    r = Replacement.constants("hidden.0", jnp.arange(128) < 64, jnp.ones(128))
    masked = zoo.MLPClassifier(model.weights, model.biases, [r, None])
    assert isinstance(masked.hidden[0].intervention, ReplaceUnits)
    assert masked.replacements[1] is None and masked.replacements[0].site == "hidden.0"
    np.testing.assert_array_equal(jax.vmap(masked.run)(x)[1]["hidden.0"][:, 64:], 1.0)
    with pytest.raises(ValueError, match="replacement for site 'hidden.1' is for 'hidden.0'"):
        zoo.MLPClassifier(model.weights, model.biases, [None, r])


def test_save_load_roundtrip_and_errors(tmp_path):
    model = _digits.init((5, 7, 3), key=jax.random.key(1))
    _digits.save(tmp_path / "m", model)
    loaded = zoo.digits_mlp(tmp_path / "m")
    assert loaded.widths == (5, 7, 3)
    for a, b in zip(loaded.weights + loaded.biases, model.weights + model.biases):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no MLP classifier file"):
        zoo.digits_mlp(tmp_path / "missing")
    masked = zoo.MLPClassifier(model.weights, model.biases, [Replacement.identity("hidden.0", 7)])
    with pytest.raises(ValueError, match="compile it first"):
        _digits.save(tmp_path / "masked", masked)


def test_bad_input_errors():
    model = zoo.digits_mlp()
    with pytest.raises(ValueError, match=r"unknown site 'hiden.1'.*did you mean 'hidden.1'"):
        model.from_layer(jnp.zeros(128), "hiden.1")
    with pytest.raises(ValueError, match=r"shape \[128\]"):
        model.from_layer(jnp.zeros(64), "hidden.0")
    with pytest.raises(ValueError, match=r"input must have shape \[64\]"):
        model(jnp.zeros((2, 64)))
    with pytest.raises(ValueError, match="do not match|reads 4 inputs"):
        zoo.MLPClassifier([jnp.zeros((3, 2)), jnp.zeros((2, 4))], [jnp.zeros(3), jnp.zeros(2)])


def test_training_script_is_deterministic(tmp_path):
    # two epochs twice: bit-identical weights, a loss that goes down, files that load
    for name in ("a", "b"):
        assert _digits.main(["--out", str(tmp_path / name), "--epochs", "2"]) == 0
    a, b = zoo.digits_mlp(tmp_path / "a"), zoo.digits_mlp(tmp_path / "b")
    for wa, wb in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(wa, wb)
    _, losses = _digits.train(epochs=3)
    assert losses[-1] < losses[0]
