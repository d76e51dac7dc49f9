"""Hugging Face parity: tiny random `transformers` models load with matching logits."""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jaxcirc  # noqa: E402
from jaxcirc.io import hf_config_to_jaxcirc, load_hf  # noqa: E402

VOCAB, CTX = 61, 24
SMALL = dict(
    vocab_size=VOCAB,
    max_position_embeddings=CTX,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
)
CASES = {
    "gpt2": (
        transformers.GPT2Config,
        transformers.GPT2LMHeadModel,
        dict(vocab_size=VOCAB, n_positions=CTX, n_embd=32, n_layer=2, n_head=4, n_inner=48),
    ),
    "neox_parallel": (
        transformers.GPTNeoXConfig,
        transformers.GPTNeoXForCausalLM,
        dict(SMALL, rotary_pct=0.5, rotary_emb_base=500.0, use_parallel_residual=True),
    ),
    "neox_sequential": (
        transformers.GPTNeoXConfig,
        transformers.GPTNeoXForCausalLM,
        dict(SMALL, rotary_pct=0.25, use_parallel_residual=False, hidden_act="gelu_new"),
    ),
    "llama_gqa": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(SMALL, num_key_value_heads=2, head_dim=12, rope_theta=1000.0, rms_norm_eps=1e-5),
    ),
    "llama_tied": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(SMALL, num_key_value_heads=4, tie_word_embeddings=True),
    ),
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(SMALL, num_key_value_heads=1),
    ),
}


def make_model(case: str, seed: int = 0):
    """A tiny random `transformers` model; every parameter (norms and biases too) perturbed."""
    config_cls, model_cls, kwargs = CASES[case]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)[None]).logits[0].float().numpy()


def tokens(seed: int = 1, n: int = CTX) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    model = make_model(case)
    model.save_pretrained(tmp_path)
    ours = jaxcirc.load(tmp_path)
    assert ours.cfg.family == model.config.model_type
    toks = tokens()
    diff = np.abs(np.asarray(ours(toks)) - torch_logits(model, toks)).max()
    assert diff <= 1e-4, f"{case}: max |logit diff| = {diff}"


def test_config_mapping_of_neox(tmp_path):
    model = make_model("neox_parallel")
    cfg = hf_config_to_jaxcirc(model.config)
    assert (cfg.block, cfg.rotary_dim, cfg.rotary_base) == ("parallel", 4, 500.0)
    seq = hf_config_to_jaxcirc(make_model("neox_sequential").config)
    assert (seq.block, seq.act_fn, seq.rotary_dim) == ("sequential", "gelu_new", 2)
    llama = hf_config_to_jaxcirc(make_model("llama_gqa").config)
    assert (llama.n_kv_heads, llama.d_head, llama.rotary_dim) == (2, 12, 12)


def test_old_style_neox_config_keys(tmp_path):
    """`rotary_pct` / `rotary_emb_base` at top level, as in configs saved by transformers 4."""
    model = make_model("neox_parallel")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")
    config.update(rotary_pct=params["partial_rotary_factor"], rotary_emb_base=params["rope_theta"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = load_hf(tmp_path).cfg
    assert (cfg.rotary_dim, cfg.rotary_base) == (4, 500.0)


def test_sharded_checkpoint_loads(tmp_path):
    model = make_model("llama_gqa")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    toks = tokens()
    diff = np.abs(np.asarray(jaxcirc.load(tmp_path)(toks)) - torch_logits(model, toks)).max()
    assert diff <= 1e-4


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_bfloat16_weights(case, tmp_path):
    make_model(case).to(torch.bfloat16).save_pretrained(tmp_path)
    model_cls = CASES[case][1]  # the bf16 weights, computed in float32:
    reference = torch_logits(model_cls.from_pretrained(tmp_path, dtype=torch.float32), tokens())
    exact = load_hf(tmp_path, dtype="float32")  # bf16 file read into float32 is lossless
    assert np.abs(np.asarray(exact(tokens())) - reference).max() <= 1e-4
    half = load_hf(tmp_path, dtype="bfloat16")
    assert half.embed.W_E.dtype == jax.numpy.bfloat16
    logits = np.asarray(half(tokens()), dtype=np.float32)
    assert np.abs(logits - reference).max() <= 0.1 * np.abs(reference).max() + 0.05
