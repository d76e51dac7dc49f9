"""The shipped induction model, its task, and the script that trains it."""

import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

import jaxcirc
from jaxcirc import zoo
from jaxcirc.zoo import _induction


@eqx.filter_jit
def _run(model, tokens):
    return jax.vmap(model.run)(tokens)[1]


def _patterns(model, tokens, layer):
    # [batch, head, query, key]
    return np.asarray(_run(model, tokens)[f"blocks.{layer}.attn.hook_pattern"])


def test_shipped_files_are_small_and_load():
    data = Path(jaxcirc.__file__).parent / "data"
    weights = data / f"{_induction.NAME}.safetensors"
    assert weights.stat().st_size < 1_000_000
    cfg = jaxcirc.TransformerConfig.from_json((data / f"{_induction.NAME}.json").read_text())
    model = zoo.induction_model()
    assert model.cfg == cfg == _induction.CONFIG
    assert zoo.induction_model() is model  # cached


def test_shipped_model_does_induction():
    model = zoo.induction_model()
    for half_len in (8, 16, 24):
        task = zoo.induction_task(128, half_len, seed=1234)
        first, second = zoo.induction_accuracy(model, task.clean, half_len)
        assert second > 0.9, (half_len, second)
        assert first < 0.05, (half_len, first)  # chance is 1/64
        _, broken = zoo.induction_accuracy(model, task.corrupt, half_len)
        assert broken < 0.05


def test_shipped_model_has_induction_and_previous_token_heads():
    model = zoo.induction_model()
    L = 16
    task = zoo.induction_task(64, L, seed=7)
    second = np.arange(L, 2 * L)
    induction = _patterns(model, task.clean, 1)[:, :, second, second - L + 1].mean((0, 2))
    assert induction.max() > 0.8, induction
    query = np.arange(1, 2 * L)
    previous = _patterns(model, task.clean, 0)[:, :, query, query - 1].mean((0, 2))
    assert previous.max() > 0.5, previous
    # and it is the layer-0 heads that attend to the previous token, not the layer-1 ones
    assert _patterns(model, task.clean, 1)[:, :, query, query - 1].mean() < 0.2


def test_task_pairs_and_metric():
    task = zoo.induction_task(5, 6, seed=3)
    assert task.clean.shape == task.corrupt.shape == (5, 12)
    clean, corrupt = np.asarray(task.clean), np.asarray(task.corrupt)
    np.testing.assert_array_equal(clean[:, :6], clean[:, 6:])
    np.testing.assert_array_equal(corrupt[:, 6:], clean[:, 6:])
    for row_clean, row_corrupt in zip(clean, corrupt):
        assert len(set(row_clean[:6])) == 6
        assert not set(row_clean[:6]) & set(row_corrupt[:6])
    assert task.labels == tuple(f"A{i}" for i in range(6)) * 2
    np.testing.assert_array_equal(np.asarray(zoo.induction_task(5, 6, seed=3).clean), clean)
    model = zoo.induction_model()
    score = eqx.filter_jit(lambda model, tokens, metric: metric(jax.vmap(model)(tokens)))
    good, bad = (float(score(model, t, task.metric)) for t in (task.clean, task.corrupt))
    assert good > -0.5 and bad < -3.0


@pytest.mark.parametrize(
    "kwargs", [dict(half_len=1), dict(half_len=40), dict(n=0), dict(half_len=2.5)]
)
def test_task_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="induction_task"):
        zoo.induction_task(**{"n": 2, "half_len": 4, **kwargs})


def test_training_is_deterministic():
    _, first = _induction.train(seed=3, steps=3, batch_size=4)
    _, again = _induction.train(seed=3, steps=3, batch_size=4)
    _, other = _induction.train(seed=4, steps=3, batch_size=4)
    assert first == again
    assert first != other
    assert all(np.isfinite(first))


def test_script_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "sub" / "model"
    assert _induction.main(["--out", str(out), "--steps", "3", "--batch-size", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.safetensors"]
    model = zoo.induction_model(out)
    assert model.cfg == _induction.CONFIG
    with pytest.raises(FileNotFoundError, match="no induction model file"):
        zoo.induction_model(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# The model with MLPs (issue 6 prunes its neurons and heads)
# ---------------------------------------------------------------------------------------------


def test_shipped_mlp_model_loads_and_is_small():
    data = Path(jaxcirc.__file__).parent / "data"
    assert (data / f"{_induction.NAME_MLP}.safetensors").stat().st_size < 1_000_000
    model = zoo.induction_mlp_model()
    assert model.cfg == _induction.CONFIG_MLP
    assert model.cfg.block == "sequential" and model.cfg.d_mlp == 256
    assert zoo.induction_mlp_model() is model  # cached
    assert zoo.induction_model() is not model


def test_shipped_mlp_model_does_induction():
    model = zoo.induction_mlp_model()
    for half_len in (8, 16, 24):
        task = zoo.induction_task(128, half_len, seed=1234)
        first, second = zoo.induction_accuracy(model, task.clean, half_len)
        assert second > 0.95, (half_len, second)
        assert first < 0.05, (half_len, first)
        _, broken = zoo.induction_accuracy(model, task.corrupt, half_len)
        assert broken < 0.05
    L = 16
    task = zoo.induction_task(64, L, seed=7)
    second = np.arange(L, 2 * L)
    induction = _patterns(model, task.clean, 1)[:, :, second, second - L + 1].mean((0, 2))
    assert induction.min() > 0.8, induction


def test_mlp_training_is_deterministic_and_the_script_writes_it(tmp_path, capsys):
    model, first = _induction.train(seed=3, steps=3, batch_size=4, mlp=True)
    _, again = _induction.train(seed=3, steps=3, batch_size=4, mlp=True)
    assert first == again and all(np.isfinite(first))
    assert model.cfg == _induction.CONFIG_MLP
    out = tmp_path / "mlp"
    argv = ["--out", str(out), "--steps", "2", "--batch-size", "4", "--mlp"]
    assert _induction.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["mlp"] is True
    assert zoo.induction_mlp_model(out).cfg == _induction.CONFIG_MLP
    with pytest.raises(FileNotFoundError, match="no induction model file"):
        zoo.induction_mlp_model(tmp_path / "missing")
