"""`jaxcirc prune`: interventional-risk pruning from the command line on the shipped digits MLP
and induction transformer (no download): files, JSON fields, the checkpoint against the
in-memory abstraction, bad arguments."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc
from jaxcirc.cli import main
from jaxcirc.methods._prune import prune_model

PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = {"method", "keep", "kept", "units", "kinds", "iia", "n_params", "agreement", "kl"}


@eqx.filter_jit
def logits(model, x):
    return jax.vmap(model)(x)


def test_prune_digits(tmp_path, capsys):
    argv = ["prune", "--keep", "0.5", "--keep", "0.25", "--method", "fold", "--method",
            "variance", "--trials", "200", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "iia.png").read_bytes().startswith(PNG)
    record = json.loads((tmp_path / "prune.json").read_text())
    assert record["model"] == "digits" and record["sites"] == ["hidden.1"]
    assert record["curvature"] == "ggn" and record["loss"] == "ce"
    assert record["checkpoint"]["method"] == "fold" and record["checkpoint"]["keep"] == 0.25
    runs = {(r["method"], r["keep"]): r for r in record["results"]}
    assert set(runs) == {("fold", 0.5), ("fold", 0.25), ("variance", 0.5), ("variance", 0.25)}
    for r in runs.values():
        assert FIELDS | {"accuracy", "accuracy_full"} <= set(r)
        assert len(r["iia"]["hidden.1"]) == 3 and all(0 <= v <= 1 for v in r["iia"]["hidden.1"])
        assert r["kept"]["hidden.1"] == round(r["keep"] * 128)
        assert r["accuracy_full"] == pytest.approx(0.982)
    # measured: fold keeps accuracy 0.976 at keep 0.25, variance falls to 0.78
    assert runs["fold", 0.25]["accuracy"] >= 0.95
    assert runs["fold", 0.25]["accuracy"] > runs["variance", 0.25]["accuracy"]
    assert "wrote" in capsys.readouterr().out
    # the checkpoint is the abstraction prune_model builds with the same settings
    loaded = jaxcirc.load(tmp_path / "abstraction")
    assert loaded.widths == (64, 128, 32, 10)
    data = jaxcirc.zoo.digits_data()
    again = prune_model(
        jaxcirc.zoo.digits_mlp(), data.x_train[:500], labels=data.y_train[:500],
        sites="hidden.1", keep_fraction=0.25, method="fold",
    )  # fmt: skip
    np.testing.assert_allclose(
        logits(loaded, data.x_test), logits(again.abstraction, data.x_test), rtol=1e-6, atol=1e-6
    )


def test_prune_induction_heads(tmp_path):
    out = tmp_path / "out"
    argv = ["prune", "--model", "induction-mlp", "--site", "blocks.0.attn.hook_z", "--keep",
            "0.5", "--trials", "50", "--n", "4", "--n-eval", "8", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "iia.png").read_bytes().startswith(PNG)
    record = json.loads((out / "prune.json").read_text())
    assert record["curvature"] == "fisher" and record["task"].startswith("second-half")
    (r,) = record["results"]
    assert FIELDS <= set(r) and r["kept"] == {"blocks.0.attn.hook_z": 2}
    # the saved checkpoint is a narrowed Transformer with the reported KL and accuracy
    loaded = jaxcirc.load(out / "abstraction")
    assert tuple(loaded.cfg.layer_n_heads) == (2, 4)
    full = jaxcirc.zoo.induction_mlp_model()
    assert r["n_params"] < record["n_params_full"]
    prompts = jaxcirc.zoo.induction_task(8, 16, seed=1).clean
    lf, la = logits(full, prompts), logits(loaded, prompts)
    logp, logq = jax.nn.log_softmax(lf, -1), jax.nn.log_softmax(la, -1)
    kl = float((jnp.exp(logp) * (logp - logq)).sum(-1).mean())
    assert kl == pytest.approx(r["kl"], rel=1e-4, abs=1e-7)
    accuracy = float((la[:, 16:-1].argmax(-1) == prompts[:, 17:]).mean())
    assert accuracy == pytest.approx(r["accuracy"], abs=1e-6)


def test_bad_arguments(tmp_path, capsys):
    base = ["prune", "--out", str(tmp_path)]
    for bad in ("0", "1.5", "-0.1", "half"):
        assert main([*base, "--keep", bad]) == 2
        err = capsys.readouterr().err
        assert "argument --keep" in err and "(0, 1]" in err
    assert main([*base, "--site", "hiden.1"]) == 2
    assert "did you mean 'hidden.1'" in capsys.readouterr().err
    assert main([*base, "--method", "fld"]) == 2
    assert "did you mean 'fold'" in capsys.readouterr().err
    assert main([*base, "--trials", "0"]) == 2
    assert main(["prune", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "prune.json").exists()
