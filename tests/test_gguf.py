"""GGUF loading: tiny written files round-trip, SmolLM2 matches transformers, clear errors."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc.io import load_gguf, load_tokenizer
from jaxcirc.io._gguf import smollm2_gguf_path

gguf = pytest.importorskip("gguf")

PROMPT = "The capital of France is"


def _permute(w, n_heads):
    """llama.cpp's `convert_hf_to_gguf` permutation of q/k rows (rotate-half -> interleaved)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_llama_gguf(path, model, arch="llama", tied=None, drop=(), dtype=np.float32):
    """Write `model` as llama.cpp would: HF layouts, permuted q/k, ggml-reversed shapes."""
    cfg = model.cfg
    sd = {k: np.asarray(v, np.float32) for k, v in jc.models.state_dict(model).items()}
    tied = cfg.tied_embeddings if tied is None else tied
    H, KV, M = cfg.n_heads, cfg.kv_heads, cfg.d_model
    heads = lambda w: w.transpose(0, 2, 1).reshape(-1, M)  # [h, M, D] -> [h * D, M]
    tensors = {"token_embd.weight": sd["embed.W_E"], "output_norm.weight": sd["ln_final.w"]}
    if not tied:
        tensors["output.weight"] = sd["unembed.W_U"].T
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        tensors.update(
            {
                f"blk.{i}.attn_norm.weight": sd[b + "ln1.w"],
                f"blk.{i}.ffn_norm.weight": sd[b + "ln2.w"],
                f"blk.{i}.attn_q.weight": _permute(heads(sd[b + "attn.W_Q"]), H),
                f"blk.{i}.attn_k.weight": _permute(heads(sd[b + "attn.W_K"]), KV),
                f"blk.{i}.attn_v.weight": heads(sd[b + "attn.W_V"]),
                f"blk.{i}.attn_output.weight": sd[b + "attn.W_O"].reshape(-1, M).T,
                f"blk.{i}.ffn_gate.weight": sd[b + "mlp.W_gate"].T,
                f"blk.{i}.ffn_up.weight": sd[b + "mlp.W_in"].T,
                f"blk.{i}.ffn_down.weight": sd[b + "mlp.W_out"].T,
            }
        )
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.n_ctx)
    writer.add_embedding_length(M)
    writer.add_feed_forward_length(cfg.d_mlp)
    writer.add_head_count(H)
    writer.add_head_count_kv(KV)
    writer.add_rope_freq_base(cfg.rotary_base)
    writer.add_rope_dimension_count(cfg.rotary_dim)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    for name, value in tensors.items():
        if name not in drop:
            is_norm = value.ndim == 1
            writer.add_tensor(name, np.ascontiguousarray(value, np.float32 if is_norm else dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_llama(tied=False, seed=0):
    """A random tiny Llama, built without running JAX ops (norm weights near one)."""
    cfg = jc.models.llama(
        d_model=32,
        n_heads=4,
        d_head=8,
        rotary_dim=8,
        d_mlp=64,
        d_vocab=50,
        n_ctx=64,
        tied_embeddings=tied,
    )
    skeleton = eqx.filter_eval_shape(jc.models.build, cfg, key=jax.random.key(0))
    rng = np.random.default_rng(seed)
    model = jax.tree_util.tree_map(
        lambda s: jnp.asarray((len(s.shape) == 1) + 0.2 * rng.standard_normal(s.shape), s.dtype),
        skeleton,
    )
    return eqx.tree_at(lambda m: m.unembed.W_U, model, model.embed.W_E.T) if tied else model


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_matches_source(tmp_path, tied):
    source = tiny_llama(tied)
    path = write_llama_gguf(tmp_path / "tiny.gguf", source)
    loaded = load_gguf(path)
    assert loaded.cfg.norm_eps == pytest.approx(source.cfg.norm_eps)  # stored as float32
    assert loaded.cfg.replace(norm_eps=source.cfg.norm_eps) == source.cfg
    weights = jc.models.state_dict(loaded)
    for name, value in jc.models.state_dict(source).items():
        np.testing.assert_allclose(weights[name], value, atol=1e-6, err_msg=name)
    tokens = jnp.array([3, 1, 4, 1, 5, 9, 2, 6])
    np.testing.assert_allclose(loaded(tokens), source(tokens), atol=1e-5)


def test_float16_tensors_and_dtype(tmp_path):
    source = tiny_llama()
    path = write_llama_gguf(tmp_path / "f16.gguf", source, dtype=np.float16)
    loaded = load_gguf(path, dtype="bfloat16")
    assert loaded.cfg.dtype == "bfloat16" and loaded.blocks[0].attn.W_Q.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(loaded.blocks[1].attn.W_K, np.float32), source.blocks[1].attn.W_K, atol=2e-2
    )


def test_unsupported_architecture(tmp_path):
    path = write_llama_gguf(tmp_path / "bloom.gguf", tiny_llama(), arch="bloom")
    with pytest.raises(ValueError, match=r"'bloom'.*'llama'"):
        load_gguf(path)


def test_missing_tensor_and_bad_dtype(tmp_path):
    path = write_llama_gguf(tmp_path / "gap.gguf", tiny_llama(), drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match="blk.1.ffn_up.weight"):
        load_gguf(path)
    with pytest.raises(ValueError, match=r"dtype='float64'.*float32"):
        load_gguf(path, dtype="float64")


def test_missing_garbage_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_gguf(tmp_path / "nope.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="garbage.gguf.*not a readable GGUF"):
        load_gguf(garbage)
    data = write_llama_gguf(tmp_path / "whole.gguf", tiny_llama()).read_bytes()
    for n in (10, 200, len(data) // 2, len(data) - 7):
        cut = tmp_path / f"cut{n}.gguf"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=f"cut{n}.gguf"):
            load_gguf(cut)


def test_reader_equals_gguf_packages_reader(tmp_path):
    """Our one-pass parser against `gguf.GGUFReader`: every field, every tensor's bytes."""
    from jaxcirc.io._gguf_file import read

    source = tiny_llama()
    path = write_llama_gguf(tmp_path / "mixed.gguf", source, dtype=np.float16)
    ours, theirs = read(path), gguf.GGUFReader(path)
    assert set(ours.fields) == set(theirs.fields) - {
        "GGUF.version",
        "GGUF.tensor_count",
        "GGUF.kv_count",
    }
    for key, value in ours.fields.items():
        assert value == pytest.approx(theirs.fields[key].contents()), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.tensor_type == b.tensor_type and a.shape == tuple(int(n) for n in b.shape)
        np.testing.assert_array_equal(a.data, b.data, err_msg=a.name)
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape


def test_quantized_tensors_dequantize_like_the_gguf_package(tmp_path):
    from gguf.quants import quantize

    from jaxcirc.io._gguf_file import dequantize, read

    rng = np.random.default_rng(0)
    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    values = {}
    for kind in ("Q8_0", "Q4_0", "Q4_1", "Q5_0"):  # Q5_0: the `gguf` package's fallback
        qtype = gguf.GGMLQuantizationType[kind]
        values[kind] = rng.standard_normal((3, 64)).astype(np.float32)
        writer.add_tensor(kind, quantize(values[kind], qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    theirs = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for tensor in read(path).tensors:
        got = dequantize(tensor)
        want = gguf.quants.dequantize(theirs[tensor.name].data, tensor.tensor_type)
        assert got.dtype == np.float32 and got.shape == (3, 64)
        np.testing.assert_array_equal(got, want)
        step = {"Q8_0": 0.03, "Q4_0": 0.4, "Q4_1": 0.25, "Q5_0": 0.2}[tensor.name]  # rounding
        np.testing.assert_allclose(got, values[tensor.name], atol=step)


# --- the real SmolLM2-135M-Instruct (Q4_1) -------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    try:
        return smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smollm2_model(smollm2):
    return jc.load(smollm2)


@pytest.fixture(scope="module")
def smollm2_logits(smollm2, smollm2_model):
    tokens = load_tokenizer(smollm2).encode(PROMPT)
    return tokens, np.asarray(jax.jit(lambda m, t: m(t))(smollm2_model, tokens))


@pytest.mark.slow
def test_smollm2_config(smollm2_model):
    cfg = smollm2_model.cfg
    shape = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head)
    assert shape == (30, 576, 9, 3, 64)
    assert (cfg.d_mlp, cfg.d_vocab, cfg.rotary_base) == (1536, 49152, 1e5)
    assert cfg.tied_embeddings and cfg.rotary_dim == 64
    assert isinstance(smollm2_model, jc.Transformer)


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2, smollm2_logits):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2.parent), gguf_file=smollm2.name, dtype=torch.float32
    )
    tokens, logits = smollm2_logits
    with torch.no_grad():
        expected = ref(torch.tensor(tokens[None], dtype=torch.long)).logits[0].numpy()
    assert logits.shape == expected.shape == (len(tokens), 49152)
    assert np.abs(logits - expected).max() < 1e-3


@pytest.mark.slow
def test_smollm2_says_paris(smollm2, smollm2_logits):
    _, logits = smollm2_logits
    assert load_tokenizer(smollm2).decode([int(logits[-1].argmax())]) == " Paris"
