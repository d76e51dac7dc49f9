"""Loading errors: every bad input names the file or weight at fault and what was expected."""

import json
import re
import time

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxcirc
from jaxcirc.io import NonFiniteWeightError, hf_config_to_jaxcirc, load_hf

GPT2 = dict(
    model_type="gpt2",
    architectures=["GPT2LMHeadModel"],
    vocab_size=11,
    n_positions=8,
    n_embd=8,
    n_layer=1,
    n_head=2,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
)


def gpt2_weights(d=8, vocab=11, ctx=8, prefix="transformer."):
    rng = np.random.default_rng(0)
    shapes = {
        "wte.weight": (vocab, d),
        "wpe.weight": (ctx, d),
        "ln_f.weight": (d,),
        "ln_f.bias": (d,),
        "h.0.ln_1.weight": (d,),
        "h.0.ln_1.bias": (d,),
        "h.0.ln_2.weight": (d,),
        "h.0.ln_2.bias": (d,),
        "h.0.attn.c_attn.weight": (d, 3 * d),
        "h.0.attn.c_attn.bias": (3 * d,),
        "h.0.attn.c_proj.weight": (d, d),
        "h.0.attn.c_proj.bias": (d,),
        "h.0.mlp.c_fc.weight": (d, 4 * d),
        "h.0.mlp.c_fc.bias": (4 * d,),
        "h.0.mlp.c_proj.weight": (4 * d, d),
        "h.0.mlp.c_proj.bias": (d,),
    }
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


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("gptj", "supported: \\['gpt2'"),
        ("lama", "did you mean 'llama'"),
        ("gpt_neo", "did you mean 'gpt_neox'"),
    ],
)
def test_unsupported_model_type(tmp_path, kind, hint):
    write_hf(tmp_path, dict(GPT2, model_type=kind))
    with pytest.raises(ValueError, match=f"model_type '{kind}'.*not supported.*{hint}"):
        jaxcirc.load(tmp_path)


def test_unsupported_architecture_and_features():
    with pytest.raises(ValueError, match="'GPT2ForSequenceClassification' is not supported"):
        hf_config_to_jaxcirc(dict(GPT2, architectures=["GPT2ForSequenceClassification"]))
    llama = dict(
        model_type="llama",
        vocab_size=11,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        hidden_act="silu",
    )
    scaled = dict(llama, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match="rope_type='llama3' is not implemented; supported"):
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
    data = {
        "json": data[:8] + b"{oops" + data[13:],
        "length": (10**12).to_bytes(8, "little") + data[8:],
        "empty": b"",
    }[damage]
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"cannot read safetensors file {path}.*corrupt"):
        load_hf(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope does not exist.*; expected a jaxcirc"):
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
    with pytest.raises(
        ValueError,
        match=r"'transformer.h.0.attn.c_attn.weight' in .*model"
        r".safetensors has shape \(8, 20\).*\(8, 24\)",
    ):
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


def test_hub_needs_hf_scheme_and_offline_is_a_clear_error(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def offline(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("revision")))
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(
        FileNotFoundError, match="hf://nobody/nothing from the .*hub failed.*offline"
    ):
        jaxcirc.load("hf://nobody/nothing@v1")
    assert calls == [("nobody/nothing", "v1")]
    with pytest.raises(ValueError, match="'hf://no body' is not a hub model id"):
        jaxcirc.load("hf://no body")
    assert len(calls) == 1


@pytest.mark.parametrize(
    "path", ["runs/exp1", "nobody/nothing", "./runs/exp1", "~/runs/exp1x", "runs/exp1/model.gguf"]
)
def test_local_looking_paths_never_reach_the_hub(tmp_path, monkeypatch, path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("hub was asked"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs" / "exp2").mkdir(parents=True)  # the path exists partially
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        jaxcirc.load(path)
    message = str(info.value)
    if path in ("runs/exp1", "nobody/nothing"):
        assert f"write 'hf://{path}'" in message
    if path == "runs/exp1":
        assert "did you mean 'exp2'" in message


def test_missing_path_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope is missing\).*expected a jaxcirc"):
        jaxcirc.load(tmp_path / "nope" / "deeper")


@pytest.mark.parametrize(
    "shard", ["../x.safetensors", "/abs/x.safetensors", "sub/x.safetensors", "..", 7]
)
def test_shards_are_confined_to_the_directory(tmp_path, shard):
    model = write_hf(tmp_path / "m")
    save_file(gpt2_weights(), str(tmp_path / "x.safetensors"))  # what '../x' would reach
    (model / "model.safetensors").unlink()
    weight_map = {k: shard for k in gpt2_weights()}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        ValueError,
        match=f"maps 'transformer.\\S+' to {re.escape(repr(shard))}; "
        "a shard must be a plain file name",
    ):
        jaxcirc.load(model)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("n_head", 0, "n_head=0: expected a positive int"),
        ("n_embd", "8", "n_embd='8': expected a positive int"),
        ("n_embd", 8.5, "n_embd=8.5: expected a positive int"),
        ("n_positions", -8, "n_positions=-8: expected a positive int"),
        ("n_inner", True, "n_inner=True: expected a positive int"),
        ("layer_norm_epsilon", "1e-5", "layer_norm_epsilon='1e-5': expected a small"),
    ],
)
def test_bad_sizes_in_config_json(tmp_path, key, value, match):
    write_hf(tmp_path, dict(GPT2, **{key: value}))
    with pytest.raises(ValueError, match=match):
        jaxcirc.load(tmp_path)


def test_absurd_layer_count_is_refused_quickly(tmp_path):
    write_hf(tmp_path, dict(GPT2, n_layer=10**7))
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match="n_layer=10000000, but the safetensors files .* hold only 1 layers"
    ):
        jaxcirc.load(tmp_path)
    assert time.perf_counter() - start < 5


def test_nonfinite_safetensors_weight_is_named(tmp_path):
    weights = gpt2_weights()
    weights["transformer.h.0.mlp.c_fc.weight"][2, 5] = np.inf
    weights["transformer.h.0.mlp.c_fc.weight"][3, 1] = np.nan
    write_hf(tmp_path, weights=weights)
    with pytest.raises(
        NonFiniteWeightError,
        match=r"'transformer.h.0.mlp.c_fc.weight' in "
        r".*model.safetensors holds 1 NaN and 1 inf "
        r"values \(the first at index \(2, 5\)\)",
    ):
        jaxcirc.load(tmp_path)
    model = jaxcirc.load(tmp_path, allow_nonfinite=True)
    assert np.isinf(model.blocks[0].mlp.W_in[2, 5])


def test_nonfinite_gguf_tensor_is_named(tmp_path):
    pytest.importorskip("gguf")
    from test_gguf import tiny_llama, write_llama_gguf

    source = tiny_llama()
    source = eqx.tree_at(
        lambda m: m.blocks[1].mlp.W_out, source, source.blocks[1].mlp.W_out.at[4, 2].set(jnp.nan)
    )
    path = write_llama_gguf(tmp_path / "nan.gguf", source)
    with pytest.raises(
        NonFiniteWeightError,
        match="'blk.1.ffn_down.weight' in GGUF file .*nan.gguf.* holds 1 NaN.*allow_nonfinite",
    ):
        jaxcirc.load(path)
    assert np.isnan(jaxcirc.load(path, allow_nonfinite=True).blocks[1].mlp.W_out[4, 2])


LLAMA = dict(
    model_type="llama",
    vocab_size=11,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=32,
    hidden_act="silu",
)


def test_rope_settings_are_honoured_or_refused():
    linear = {"rope_type": "linear", "factor": 4.0}
    assert hf_config_to_jaxcirc(dict(LLAMA, rope_scaling=linear)).rotary_scale == 4.0
    both = dict(
        LLAMA,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rope_scaling={"type": "linear", "factor": 4.0},
    )  # rope_scaling wins, as in HF
    assert hf_config_to_jaxcirc(both).rotary_scale == 4.0
    plain = dict(LLAMA, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    assert (hf_config_to_jaxcirc(plain).rotary_scale, hf_config_to_jaxcirc(plain).rotary_base) == (
        1.0,
        500.0,
    )
    for kind in ("dynamic", "yarn", "llama3", "longrope"):
        with pytest.raises(
            ValueError,
            match=f"rope_type='{kind}' is not implemented; "
            r"supported: \['default', 'linear'\]",
        ):
            hf_config_to_jaxcirc(dict(LLAMA, rope_scaling={"rope_type": kind, "factor": 2.0}))
    with pytest.raises(ValueError, match="linear RoPE factor=0: expected a positive number"):
        hf_config_to_jaxcirc(dict(LLAMA, rope_scaling={"type": "linear", "factor": 0}))
    with pytest.raises(ValueError, match="rope_theta='big': expected a positive number"):
        hf_config_to_jaxcirc(dict(LLAMA, rope_theta="big"))


def test_linear_rope_scaling_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        **{k: v for k, v in LLAMA.items() if k != "model_type"}, num_key_value_heads=2
    )
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    reference.save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    hf["rope_scaling"] = {"type": "linear", "factor": 4.0}  # the config: both keys
    (tmp_path / "config.json").write_text(json.dumps(hf))
    scaled = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = np.arange(32) % 11
    with torch.no_grad():
        want = scaled(torch.as_tensor(tokens)[None]).logits[0].numpy()
        unscaled = reference(torch.as_tensor(tokens)[None]).logits[0].numpy()
    assert np.abs(want - unscaled).max() > 1e-3  # transformers does scale it
    ours = jaxcirc.load(tmp_path)
    assert ours.cfg.rotary_scale == 4.0
    np.testing.assert_allclose(np.asarray(ours(tokens)), want, atol=1e-5)


def test_gguf_rope_scaling(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    import test_gguf

    real = gguf.GGUFWriter.add_rope_freq_base
    scaling = {}

    def with_scaling(writer, base):
        real(writer, base)
        writer.add_string("llama.rope.scaling.type", scaling["type"])
        writer.add_float32("llama.rope.scaling.factor", 2.0)

    monkeypatch.setattr(gguf.GGUFWriter, "add_rope_freq_base", with_scaling)
    source = test_gguf.tiny_llama()
    scaling["type"] = "linear"
    path = test_gguf.write_llama_gguf(tmp_path / "linear.gguf", source)
    assert jaxcirc.load(path).cfg.rotary_scale == 2.0
    scaling["type"] = "yarn"
    path = test_gguf.write_llama_gguf(tmp_path / "yarn.gguf", source)
    with pytest.raises(
        ValueError,
        match=r"rope scaling 'yarn'; jaxcirc supports \['none', "
        r"'linear'\]",
    ):
        jaxcirc.load(path)


def test_gguf_block_count_beyond_its_tensors_is_refused(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    import test_gguf

    monkeypatch.setattr(
        gguf.GGUFWriter,
        "add_block_count",
        lambda writer, n: writer.add_uint32("llama.block_count", 10**7),
    )
    path = test_gguf.write_llama_gguf(tmp_path / "deep.gguf", test_gguf.tiny_llama())
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match="block_count=10000000, but the file holds tensors of 2 blocks"
    ):
        jaxcirc.load(path)
    assert time.perf_counter() - start < 5
