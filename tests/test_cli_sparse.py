"""`jaxcirc sparse train|prune` end to end on a tiny weight-sparse model (the real Python corpus
and tasks, a few steps): the files, the JSON against the model they wrote, the checkpoint that a
rerun resumes from, and bad arguments."""

import json

import jax
import numpy as np
import pytest

from jaxcirc import sparse
from jaxcirc.cli import main
from jaxcirc.sparse._train import default_include
from jaxcirc.zoo._induction import _load

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--steps", "4", "--batch", "2", "--seq", "16", "--d-model", "32", "--n-layers", "1",
        "--eval-rows", "4", "--task-prompts", "4", "--no-progress"]  # fmt: skip


def test_train_then_prune(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["sparse", "train", *TINY, "--fraction", "0.25", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    model = _load(out / "model")
    assert model.cfg.d_model == 32 and model.cfg.n_layers == 1 and model.cfg.d_vocab == 2048
    leaves = [x for p, x in jax.tree_util.tree_leaves_with_path(model) if default_include(p, x)]
    nonzero = sum(int(np.count_nonzero(x)) for x in leaves) / sum(x.size for x in leaves)
    assert record["final"]["nonzero"] == pytest.approx(nonzero) and nonzero <= 0.26
    assert len(record["curve"]["loss"]) == 4 and record["eval"][-1]["step"] == 4
    assert set(record["final"]) >= {"loss", "quote", "bracket", "set_or_string"}
    assert (out / "checkpoint").is_dir()
    # a rerun of the same command resumes at the end: nothing retrained, the same model
    assert main(["sparse", "train", *TINY, "--fraction", "0.25", "--out", str(out)]) == 0
    again = _load(out / "model")
    for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(again)):
        if hasattr(a, "shape"):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    pruned = tmp_path / "prune"
    argv = ["sparse", "prune", "--model", str(out / "model"), "--task", "quote",
            "--target-loss", "5", "--steps", "5", "--prompts", "8", "--mean-rows", "4",
            "--out", str(pruned), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert (pruned / "circuit.png").read_bytes().startswith(PNG)
    circuit = json.loads((pruned / "circuit.json").read_text())
    assert circuit["loss"] <= 5 and circuit["total_nodes"] == sum(
        np.size(m) for m in sparse.node_means(model, np.zeros((1, 4), np.int32)).values()
    )
    kept = sum(len(ids) for ids in circuit["nodes"].values())
    assert kept == circuit["n_nodes"] and len(circuit["edges"]) == circuit["n_edges"]
    assert set(circuit["evaluation_fresh_prompts"]) == {"full_model", "circuit_only",
                                                        "circuit_ablated"}  # fmt: skip
    assert "quote:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sparse", "train", "--fraction", "0"], "--fraction: must be in (0, 1]"),
        (["sparse", "train", "--fraction", "1.5"], "--fraction: must be in (0, 1]"),
        (["sparse", "train", "--floor", "-1"], "--floor"),
        (["sparse", "train", "--preset", "gtp2"], "did you mean 'gpt2'"),
        (["sparse", "prune", "--task", "quotes"], "did you mean 'quote'"),
        (["sparse", "prune", "--prompts", "7"], "must be even"),
        (["sparse", "prune", "--k-coef", "-1"], "--k-coef"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["sparse", "prune", "--model", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 1  # fmt: skip
    assert "no model at" in capsys.readouterr().err
