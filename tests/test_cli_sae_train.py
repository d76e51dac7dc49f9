"""`jaxcirc sae train` on a tiny saved model: outputs, resuming, bad arguments."""

import json

import jax
import numpy as np

import jaxcirc
from jaxcirc.cli import main


def test_sae_train_tiny_model(tmp_path, capsys):
    model = jaxcirc.models.gpt2(
        key=jax.random.key(0), d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=16,
        n_layers=2,
    )  # fmt: skip
    jaxcirc.save(tmp_path / "model", model)
    out = tmp_path / "out"
    argv = ["sae", "train", "--model", str(tmp_path / "model"), "--site",
            "blocks.0.hook_resid_post", "--site", "blocks.1.hook_resid_post", "--d-sae", "32",
            "--k", "4", "--seq", "9", "--batch-rows", "4", "--tokens", "320", "--eval-rows",
            "4", "--checkpoint-every", "5", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["steps"] == 10 and record["train_tokens"] == 320
    assert record["text"].startswith("random tokens")
    for entry in record["saes"]:
        sae = jaxcirc.sae.load(out / entry["site"])
        assert sae.site == entry["site"] and sae.k == 4 and sae.d_sae == 32
        assert 0 <= entry["fvu"] < 2 and entry["l0"] <= 4
        assert entry["ce_clean"] > 0 and entry["loss_recovered"] is not None
    first = np.asarray(jaxcirc.sae.load(out / "blocks.1.hook_resid_post").W_dec)
    # rerunning resumes the finished run: no new steps, the same SAEs
    assert main(argv) == 0
    np.testing.assert_array_equal(jaxcirc.sae.load(out / "blocks.1.hook_resid_post").W_dec, first)
    assert "FVU" in capsys.readouterr().out
    # the same folder for another architecture: the checkpoint says what it holds
    assert main(argv + ["--arch", "relu"]) == 1
    assert "a 'topk' SAE (d_in=16, d_sae=32, k=4)" in capsys.readouterr().err
    # --init goes on from the saved SAEs: at a vanishing learning rate they come back unchanged
    again = tmp_path / "again"
    tuned = argv[:-3] + ["--out", str(again), "--init", str(out), "--lr", "1e-12",
                         "--no-progress"]  # fmt: skip
    assert main(tuned) == 0
    assert json.loads((again / "metrics.json").read_text())["init"] == str(out)
    for site in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        a, b = jaxcirc.sae.load(out / site), jaxcirc.sae.load(again / site)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    one = str(out / "blocks.0.hook_resid_post")  # an SAE folder for one of the two sites
    missing = argv[:-3] + ["--out", str(tmp_path / "x"), "--init", one, "--no-progress"]
    assert main(missing) == 2
    assert "no SAE in" in capsys.readouterr().err
    nowhere = argv[:-3] + ["--out", str(tmp_path / "x"), "--init", str(tmp_path / "none")]
    assert main(nowhere) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "is not a folder" in err and "--saes" not in err


def test_sae_train_bad_arguments(tmp_path, capsys):
    model = jaxcirc.models.gpt2(
        key=jax.random.key(0), d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=16,
        n_layers=1,
    )  # fmt: skip
    jaxcirc.save(tmp_path / "model", model)
    base = ["sae", "train", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "o")]
    assert main(base + ["--site", "blocks.0.hook_resid_post", "--arch", "topkk"]) == 2
    assert "did you mean 'topk'" in capsys.readouterr().err
    assert main(base + ["--site", "blocks.0.hook_resid_post", "--seq", "1"]) == 2
