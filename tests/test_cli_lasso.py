"""`jaxcirc lasso`: CircuitLasso from the command line on a tracr case and a saved model."""

import json

import jax
import pytest

import jaxcirc
from jaxcirc.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.filterwarnings("ignore:CircuitLasso")
def test_lasso_tracr_case(tmp_path, capsys):
    argv = ["lasso", "--case", "frac_prevs", "--n", "8", "--n-alphas", "6", "--out", str(tmp_path)]
    assert main(argv + ["--select", "count", "--n-edges", "6"]) == 0
    assert (tmp_path / "circuit.png").read_bytes().startswith(PNG)
    record = json.loads((tmp_path / "circuit.json").read_text())
    assert record["case"] == "frac_prevs" and record["select"] == "count"
    # n_alphas points, plus the λs block_lasso adds where several edges enter at once
    assert len(record["circuit"]) <= 6 and len(record["alphas"]) >= 6
    assert record["edge_auroc"] >= 0.9 and record["shd_at_true_count"] <= 2
    assert all(len(row) == 3 for row in record["scores"])
    assert "SHD" in capsys.readouterr().out


def test_lasso_saved_model_and_bad_arguments(tmp_path, capsys):
    model = jaxcirc.models.gpt2(
        key=jax.random.key(0), d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=8,
        n_layers=1,
    )  # fmt: skip
    jaxcirc.save(tmp_path / "model", model)
    out = tmp_path / "out"
    argv = ["lasso", "--model", str(tmp_path / "model"), "--n", "6", "--seq", "5"]
    assert main(argv + ["--alpha", "0.05", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "circuit.json").read_text())
    assert "truth" not in record and record["samples"] == 60
    assert (out / "circuit.png").read_bytes().startswith(PNG)
    assert main(argv + ["--alpha", "-1"]) == 2
    assert "--alpha: must be >= 0" in capsys.readouterr().err
    assert main(argv + ["--select", "count"]) == 2
    assert main(["lasso", "--case", "revrse"]) == 2
    assert "did you mean 'reverse'?" in capsys.readouterr().err
