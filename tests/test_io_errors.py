"""Loading errors: every bad input names the file or weight at fault and what was expected."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxcirc
from jaxcirc.io import hf_config_to_jaxcirc, load_hf

GPT2 = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=11, n_positions=8,
            n_embd=8, n_layer=1, n_head=2, activation_function="gelu_new",
            layer_norm_epsilon=1e-5, tie_word_embeddings=True)


def gpt2_weights(d=8, vocab=11, ctx=8, prefix="transformer."):
    rng = np.random.default_rng(0)
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d), "ln_f.weight": (d,),
              "ln_f.bias": (d,), "h.0.ln_1.weight": (d,), "h.0.ln_1.bias": (d,),
              "h.0.ln_2.weight": (d,), "h.0.ln_2.bias": (d,),
              "h.0.attn.c_attn.weight": (d, 3 * d), "h.0.attn.c_attn.bias": (3 * d,),
              "h.0.attn.c_proj.weight": (d, d), "h.0.attn.c_proj.bias": (d,),
              "h.0.mlp.c_fc.weight": (d, 4 * d), "h.0.mlp.c_fc.bias": (4 * d,),
              "h.0.mlp.c_proj.weight": (4 * d, d), "h.0.mlp.c_proj.bias": (d,)}
    return {prefix + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def write_hf(directory, config=GPT2, weights=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(gpt2_weights() if weights is None else weights, str(directory / "model.safetensors"))
    return directory


def test_handmade_gpt2_directory_loads(tmp_path):
    model = jaxcirc.load(write_hf(tmp_path / "m"))
    assert model(np.arange(5)).shape == (5, 11)
    bare = write_hf(tmp_path / "bare", weights=gpt2_weights(prefix=""))  # hub-style, no prefix
    assert jaxcirc.load(bare).cfg.family == "gpt2"


@pytest.mark.parametrize("kind, hint", [("gptj", "supported: \\['gpt2'"),
                                        ("lama", "did you mean 'llama'"),
                                        ("gpt_neo", "did you mean 'gpt_neox'")])
def test_unsupported_model_type(tmp_path, kind, hint):
    write_hf(tmp_path, dict(GPT2, model_type=kind))
    with pytest.raises(ValueError, match=f"model_type '{kind}'.*not supported.*{hint}"):
        jaxcirc.load(tmp_path)


def test_unsupported_architecture_and_features():
    with pytest.raises(ValueError, match="'GPT2ForSequenceClassification' is not supported"):
        hf_config_to_jaxcirc(dict(GPT2, architectures=["GPT2ForSequenceClassification"]))
    llama = dict(model_type="llama", vocab_size=11, hidden_size=8, num_hidden_layers=1,
                 num_attention_heads=2, intermediate_size=16, max_position_embeddings=32,
                 hidden_act="silu")
    scaled = dict(llama, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match="rope_type='llama3' is not implemented"):
        hf_config_to_jaxcirc(scaled)
    with pytest.raises(ValueError, match="sliding_window=16"):
        hf_config_to_jaxcirc(dict(llama, model_type="mistral", sliding_window=16))
    with pytest.raises(ValueError, match="hidden_act='quick_gelu' is not supported"):
        hf_config_to_jaxcirc(dict(llama, hidden_act="quick_gelu"))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        hf_config_to_jaxcirc(dict(GPT2, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="lacks 'n_embd'"):
        hf_config_to_jaxcirc({k: v for k, v in GPT2.items() if k != "n_embd"})
    with pytest.raises(ValueError, match="dtype='float8'.*expected one of"):
        hf_config_to_jaxcirc(GPT2, dtype="float8")


def test_truncated_safetensors_names_the_file(tmp_path):
    write_hf(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="cannot read safetensors file .*model.safetensors"):
        jaxcirc.load(tmp_path)


@pytest.mark.parametrize("damage", ["json", "length", "empty"])
def test_corrupt_safetensors_header(tmp_path, damage):
    write_hf(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    data = {"json": data[:8] + b"{oops" + data[13:],
            "length": (10**12).to_bytes(8, "little") + data[8:],
            "empty": b""}[damage]
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"cannot read safetensors file {path}.*corrupt"):
        load_hf(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope does not exist; expected a jaxcirc"):
        jaxcirc.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no model"):
        jaxcirc.load(tmp_path / "empty")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps(GPT2))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no model.safetensors.*pytorch_model.bin"):
        jaxcirc.load(tmp_path / "bin")
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        save_file(gpt2_weights(), str(tmp_path / "empty" / "model.safetensors"))
        jaxcirc.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="cannot load the file .*notes.txt"):
        jaxcirc.load(tmp_path / "notes.txt")


def test_missing_shard(tmp_path):
    write_hf(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in gpt2_weights()}
    weight_map["transformer.ln_f.bias"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(FileNotFoundError, match="shard model-00002-of-00002.safetensors listed"):
        jaxcirc.load(tmp_path)


def test_bad_config_json(tmp_path):
    write_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        jaxcirc.load(tmp_path)


def test_weight_of_wrong_shape_is_named(tmp_path):
    weights = gpt2_weights()
    weights["transformer.h.0.attn.c_attn.weight"] = np.zeros((8, 20), np.float32)
    write_hf(tmp_path, weights=weights)
    with pytest.raises(ValueError, match=r"'transformer.h.0.attn.c_attn.weight' in .*model"
                                         r".safetensors has shape \(8, 20\).*\(8, 24\)"):
        jaxcirc.load(tmp_path)


def test_missing_and_unexpected_weights(tmp_path):
    weights = gpt2_weights()
    del weights["transformer.h.0.mlp.c_fc.bias"]
    write_hf(tmp_path / "missing", weights=weights)
    with pytest.raises(ValueError, match="'transformer.h.0.mlp.c_fc.bias' not found"):
        jaxcirc.load(tmp_path / "missing")
    weights = dict(gpt2_weights(), **{"transformer.h.1.ln_1.weight": np.ones(8, np.float32)})
    write_hf(tmp_path / "extra", weights=weights)
    with pytest.raises(ValueError, match="not used.*'transformer.h.1.ln_1.weight'"):
        jaxcirc.load(tmp_path / "extra")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="'nobody/nothing'.*hub failed.*offline"):
        jaxcirc.load("nobody/nothing")
