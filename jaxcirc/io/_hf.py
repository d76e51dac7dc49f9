"""Hugging Face `transformers` checkpoints (safetensors) to a jaxcirc `Transformer`.

Loading is faithful: weights are only reshaped into jaxcirc's per-head layout (TransformerLens's
`W_Q: [n_heads, d_model, d_head]`, ...), never folded or centred. Supported `model_type`s are the
keys of `SUPPORTED`; anything the forward pass does not implement (RoPE scaling other than
linear, sliding-window attention, unusual attention scales) is refused with an error rather than
loaded approximately. Sizes in `config.json` are checked (positive ints, as many layers as the
files hold) before anything is built; shard names must be plain file names in the directory; a
weight holding NaN or inf is refused with its name unless `allow_nonfinite=True`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from .._model_parallel import Placer, layout
from ..models import Transformer, TransformerConfig, from_state_dict, scan_layers
from ..models._builders import weight_shapes
from ..models._config import DTYPES
from ..models._site import nearest

# model_type -> (architectures accepted, prefix of the base model's weights)
SUPPORTED: dict[str, tuple[tuple[str, ...], str]] = {
    "gpt2": (("GPT2LMHeadModel", "GPT2Model"), "transformer."),
    "gpt_neox": (("GPTNeoXForCausalLM",), "gpt_neox."),
    "llama": (("LlamaForCausalLM",), "model."),
    "mistral": (("MistralForCausalLM",), "model."),
    "qwen2": (("Qwen2ForCausalLM",), "model."),
}
_ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# Non-weight buffers some (older) checkpoints carry: causal masks and rotary frequencies.
_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"


class NonFiniteWeightError(ValueError):
    """A weight holds NaN or inf (or overflows the requested dtype); `allow_nonfinite=True`
    loads it anyway."""


def check_finite(value, name: str, where: str, dtype: str = "float32", allow: bool = False) -> None:
    """Raise `NonFiniteWeightError` naming weight `name` (read from `where`) if it holds NaN or
    inf, or values that become inf when cast to `dtype`; `allow=True` skips the check."""
    if allow:
        return
    value = np.asarray(value)
    if value.dtype.kind in "biu":
        return
    try:
        finite = np.isfinite(value)
    except TypeError:  # a float type numpy lacks a ufunc for
        finite = np.isfinite(value.astype(np.float32))
    hint = "; pass allow_nonfinite=True to load it anyway"
    if not finite.all():
        nan = int(np.isnan(value.astype(np.float32)).sum())
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise NonFiniteWeightError(
            f"weight {name!r} in {where} holds {nan} NaN and {int((~finite).sum()) - nan} inf "
            f"values (the first at index {first}): the file is corrupt or the model diverged" + hint
        )
    limit = float(np.finfo(DTYPES[dtype]).max)
    if value.size and value.dtype != np.dtype(DTYPES[dtype]):
        peak = float(np.abs(value.astype(np.float32)).max())
        if peak > limit:
            raise NonFiniteWeightError(
                f"weight {name!r} in {where} holds values up to {peak:.4g}, which overflow "
                f"{dtype} (largest {limit:.4g}) to inf; load it with dtype='float32' or "
                "'bfloat16'" + hint
            )


def placer(cfg: TransformerConfig, mesh: Mesh | None, axis: str) -> dict:
    """Where a loader stores its converted tensors: a plain dict, or with `mesh` a `Placer`
    that splits each over `axis` as it arrives (the layout checked first against `cfg`)."""
    if mesh is None:
        return {}
    shapes = weight_shapes(cfg)
    return Placer(layout(shapes, mesh, axis), shapes, mesh, DTYPES[cfg.dtype])


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not supported; expected one of {sorted(DTYPES)}"
            f"{nearest(dtype, DTYPES)}"
        )
    return dtype


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed `config.json` of a Hugging Face model directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no config.json in {Path(directory)}: expected a Hugging Face "
            "model directory (config.json + model.safetensors)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}; expected a JSON object")
    return config


def _need(hf: dict, *names: str):
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    kind = hf.get("model_type")
    raise ValueError(f"config.json of model_type {kind!r} lacks {' or '.join(map(repr, names))}")


def _size(hf: dict, *names: str) -> int:
    """A size field (the first of `names` present) as a positive int, or a `ValueError`."""
    value = _need(hf, *names)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # some exporters write 768.0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        key = next(n for n in names if hf.get(n) is not None)
        raise ValueError(f"config.json {key}={value!r}: expected a positive int")
    return value


def _optional(hf: dict, name: str) -> int | None:
    return None if hf.get(name) is None else _size(hf, name)


def _eps(hf: dict, name: str, default: float) -> float:
    value = hf.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"config.json {name}={value!r}: expected a small non-negative number")
    return float(value)


def _layer_key(hf: dict) -> str:
    return "n_layer" if hf.get("model_type") == "gpt2" else "num_hidden_layers"


def _act(hf: dict, key: str) -> str:
    name = _need(hf, key)
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"config.json {key}={name!r} is not supported; expected one of "
            f"{sorted(_ACTIVATIONS)}{nearest(name, _ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]


ROPE_TYPES = ("default", "linear")


def _rope(hf: dict) -> tuple[float, float, float]:
    """`(rope_theta, partial_rotary_factor, position scale)` from old or new configs.

    As in `transformers`, a non-empty `rope_scaling` takes precedence over `rope_parameters`;
    rope types other than `ROPE_TYPES` are refused. Linear scaling (Chen et al. 2023,
    arXiv:2306.15595) divides every position by `factor`.
    """
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    if not isinstance(params, Mapping):
        raise ValueError(f"config.json {key}={params!r}: expected a JSON object")
    if any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError(f"per-layer-type {key} {sorted(params)} are not supported")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"config.json {key} rope_type={kind!r} is not implemented; supported: "
            f"{list(ROPE_TYPES)}{nearest(kind, ROPE_TYPES)}"
        )
    scale = 1.0
    if kind == "linear":
        scale = params.get("factor")
        if (
            not isinstance(scale, (int, float))
            or isinstance(scale, bool)
            or not 0 < scale < float("inf")
        ):
            raise ValueError(
                f"config.json {key} linear RoPE factor={scale!r}: expected a positive number"
            )
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    factor = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
    )
    for name, value in (("rope_theta", theta), ("partial_rotary_factor", factor)):
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not 0 < value < float("inf")
        ):
            raise ValueError(f"config.json {name}={value!r}: expected a positive number")
    return float(theta), float(factor), float(scale)


def hf_config_to_jaxcirc(hf_config, dtype: str = "float32") -> TransformerConfig:
    """The `TransformerConfig` of a Hugging Face config (a `config.json` dict or a
    `transformers.PretrainedConfig`); raises `ValueError` for what jaxcirc cannot run faithfully.
    """
    hf = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(
            f"model_type {kind!r} (architectures {hf.get('architectures')}) is not supported; "
            f"supported: {sorted(SUPPORTED)}{nearest(kind, SUPPORTED)}"
        )
    accepted = SUPPORTED[kind][0]
    for arch in hf.get("architectures") or []:
        if arch not in accepted:
            raise ValueError(
                f"architecture {arch!r} is not supported for model_type {kind!r}; "
                f"supported: {list(accepted)}{nearest(arch, accepted)}"
            )
    common = dict(dtype=check_dtype(dtype), family=kind, d_vocab=_size(hf, "vocab_size"))
    d, heads = (
        (_size(hf, "n_embd"), _size(hf, "n_head"))
        if kind == "gpt2"
        else (_size(hf, "hidden_size"), _size(hf, "num_attention_heads"))
    )
    if kind in ("gpt2", "gpt_neox") and d % heads:
        raise ValueError(f"hidden size {d} is not divisible by the number of heads {heads}")
    if kind == "gpt2":
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
            raise ValueError(
                "gpt2 attention scaling other than 1/sqrt(d_head) "
                "(scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True) "
                "is not implemented"
            )
        return TransformerConfig(
            d_model=d,
            n_layers=_size(hf, "n_layer"),
            n_heads=heads,
            d_head=d // heads,
            n_ctx=_size(hf, "n_positions", "n_ctx"),
            d_mlp=_optional(hf, "n_inner") or 4 * d,
            act_fn=_act(hf, "activation_function"),
            norm="layernorm",
            norm_eps=_eps(hf, "layer_norm_epsilon", 1e-5),
            positional="learned",
            block="sequential",
            tied_embeddings=hf.get("tie_word_embeddings", True),
            **common,
        )
    theta, factor, scale = _rope(hf)
    size = dict(
        d_model=d,
        n_layers=_size(hf, "num_hidden_layers"),
        n_heads=heads,
        d_mlp=_size(hf, "intermediate_size"),
        n_ctx=_size(hf, "max_position_embeddings"),
        act_fn=_act(hf, "hidden_act"),
        positional="rotary",
        rotary_base=theta,
        **({"rotary_scale": scale} if scale != 1.0 else {}),
    )
    if kind == "gpt_neox":
        bias = hf.get("attention_bias", True)
        return TransformerConfig(
            **size,
            d_head=d // heads,
            rotary_dim=int(d // heads * factor),
            norm="layernorm",
            norm_eps=_eps(hf, "layer_norm_eps", 1e-5),
            block="parallel" if hf.get("use_parallel_residual", True) else "sequential",
            attn_bias=bias,
            attn_out_bias=bias,
            mlp_bias=True,
            tied_embeddings=hf.get("tie_word_embeddings", False),
            **common,
        )
    window = (
        _optional(hf, "sliding_window") if hf.get("use_sliding_window", kind == "mistral") else None
    )
    if window is not None and window < size["n_ctx"]:
        raise ValueError(
            f"sliding-window attention (sliding_window={window} < "
            f"max_position_embeddings={size['n_ctx']}) is not implemented"
        )
    d_head = _optional(hf, "head_dim") or d // heads
    bias = kind == "qwen2" or hf.get("attention_bias", False)
    return TransformerConfig(
        **size,
        d_head=d_head,
        n_kv_heads=_optional(hf, "num_key_value_heads") or heads,
        rotary_dim=int(d_head * factor),
        norm="rmsnorm",
        norm_eps=_eps(hf, "rms_norm_eps", 1e-6),
        block="sequential",
        gated_mlp=True,
        attn_bias=bias,
        attn_out_bias=bias and kind != "qwen2",
        mlp_bias=hf.get("mlp_bias", False),
        tied_embeddings=hf.get("tie_word_embeddings", False),
        **common,
    )


def _safetensors_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> file, from `model.safetensors` or a sharded index."""
    single, index = directory / WEIGHTS, directory / INDEX
    if single.is_file():
        return {}  # names come from the file itself
    if not index.is_file():
        others = sorted(p.name for p in directory.glob("*.bin")) + sorted(
            p.name for p in directory.glob("*.safetensors")
        )
        raise FileNotFoundError(
            f"no {WEIGHTS} or {INDEX} in {directory}"
            + (f" (found {others}; only safetensors weights load)" if others else "")
        )
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{index} is not a safetensors index (a JSON object with 'weight_map'): {e!r}"
        ) from None
    if not isinstance(weight_map, dict):
        raise ValueError(
            f"{index}: 'weight_map' is a {type(weight_map).__name__}; expected an "
            "object mapping tensor names to shard file names"
        )
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or shard in ("", ".", "..")
            or "/" in shard
            or "\\" in shard
            or os.path.isabs(shard)
        ):
            raise ValueError(
                f"{index} maps {name!r} to {shard!r}; a shard must be a plain file name inside "
                f"{directory} (such as 'model-00001-of-00002.safetensors'), not a path"
            )
    files = {name: directory / shard for name, shard in weight_map.items()}
    for shard in sorted(set(files.values())):
        if not shard.is_file():
            raise FileNotFoundError(
                f"shard {shard.name} listed in {index} is missing from {directory}"
            )
    return files


class _Weights:
    """Safetensors tensors of a directory, read on demand and checked against expected shapes."""

    def __init__(
        self, directory: Path, prefix: str, dtype: str = "float32", allow_nonfinite: bool = False
    ):
        from safetensors import SafetensorError, safe_open

        self.directory = directory
        self.files = _safetensors_files(directory) or None
        paths = sorted(set(self.files.values())) if self.files else [directory / WEIGHTS]
        self.handles = {}
        for path in paths:
            try:
                self.handles[path] = safe_open(str(path), framework="numpy")
            except SafetensorError as e:
                raise ValueError(
                    f"cannot read safetensors file {path} (truncated or corrupt? "
                    f"re-download it): {e}"
                ) from None
        if self.files is None:
            self.files = {k: paths[0] for k in self.handles[paths[0]].keys()}
        self.prefix = prefix if any(k.startswith(prefix) for k in self.files) else ""
        self.used: set[str] = set()
        self.dtype, self.allow_nonfinite = dtype, allow_nonfinite

    def layers(self) -> list[int]:
        """The layer indices the tensor names hold (`h.N.` or `layers.N.`)."""
        found = set()
        for key in self.files:
            match = re.match(r"(?:h|layers)\.(\d+)\.", key[len(self.prefix) :])
            if key.startswith(self.prefix) and match:
                found.add(int(match.group(1)))
        return sorted(found)

    def take(self, name: str, shape: tuple[int, ...], *, base: bool = True) -> np.ndarray:
        key = self.prefix + name if base else name
        if key not in self.files:
            raise ValueError(
                f"weight {key!r} not found in the safetensors files of "
                f"{self.directory}{nearest(key, self.files)}"
            )
        path = self.files[key]
        try:
            value = self.handles[path].get_tensor(key)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"cannot read weight {key!r} from {path}: {e}") from None
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"weight {key!r} in {path} has shape {tuple(value.shape)}; "
                f"config.json implies {tuple(shape)}"
            )
        check_finite(value, key, str(path), self.dtype, self.allow_nonfinite)
        self.used.add(key)
        return value

    def skip(self, name: str) -> None:
        self.used.add(name)

    def leftover(self) -> list[str]:
        return sorted(k for k in self.files if k not in self.used and not _BUFFERS.search(k))


def _heads_in(W, heads, d_head):
    """torch `Linear` weight `[heads*d_head, d_model]` -> `[heads, d_model, d_head]`."""
    return W.reshape(heads, d_head, -1).transpose(0, 2, 1)


def _heads_out(W, heads, d_head):
    """torch `Linear` weight `[d_model, heads*d_head]` -> `[heads, d_head, d_model]`."""
    return W.T.reshape(heads, d_head, -1)


def _norm(out, w, dst, src, cfg):
    out[f"{dst}.w"] = w.take(f"{src}.weight", (cfg.d_model,))
    if cfg.norm == "layernorm":
        out[f"{dst}.b"] = w.take(f"{src}.bias", (cfg.d_model,))


def _gpt2(w: _Weights, cfg: TransformerConfig, out: dict) -> dict:
    M, H, D, F = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    out["embed.W_E"] = w.take("wte.weight", (cfg.d_vocab, M))
    out["pos_embed.W_pos"] = w.take("wpe.weight", (cfg.n_ctx, M))
    for i in range(cfg.n_layers):
        src, dst = f"h.{i}", f"blocks.{i}"
        _norm(out, w, f"{dst}.ln1", f"{src}.ln_1", cfg)
        _norm(out, w, f"{dst}.ln2", f"{src}.ln_2", cfg)
        qkv = np.split(w.take(f"{src}.attn.c_attn.weight", (M, 3 * H * D)), 3, axis=1)
        qkv_b = np.split(w.take(f"{src}.attn.c_attn.bias", (3 * H * D,)), 3)
        for n, W, b in zip("QKV", qkv, qkv_b):  # Conv1D weights are [in, out]
            out[f"{dst}.attn.W_{n}"] = W.reshape(M, H, D).transpose(1, 0, 2)
            out[f"{dst}.attn.b_{n}"] = b.reshape(H, D)
        out[f"{dst}.attn.W_O"] = w.take(f"{src}.attn.c_proj.weight", (H * D, M)).reshape(H, D, M)
        out[f"{dst}.attn.b_O"] = w.take(f"{src}.attn.c_proj.bias", (M,))
        out[f"{dst}.mlp.W_in"] = w.take(f"{src}.mlp.c_fc.weight", (M, F))
        out[f"{dst}.mlp.b_in"] = w.take(f"{src}.mlp.c_fc.bias", (F,))
        out[f"{dst}.mlp.W_out"] = w.take(f"{src}.mlp.c_proj.weight", (F, M))
        out[f"{dst}.mlp.b_out"] = w.take(f"{src}.mlp.c_proj.bias", (M,))
    _norm(out, w, "ln_final", "ln_f", cfg)
    return out


def _neox(w: _Weights, cfg: TransformerConfig, out: dict) -> dict:
    M, H, D, F = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    out["embed.W_E"] = w.take("embed_in.weight", (cfg.d_vocab, M))
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        _norm(out, w, f"{dst}.ln1", f"{src}.input_layernorm", cfg)
        _norm(out, w, f"{dst}.ln2", f"{src}.post_attention_layernorm", cfg)
        # query_key_value rows are laid out per head: [n_heads, (q, k, v), d_head]
        qkv = w.take(f"{src}.attention.query_key_value.weight", (3 * H * D, M)).reshape(H, 3, D, M)
        for j, n in enumerate("QKV"):
            out[f"{dst}.attn.W_{n}"] = qkv[:, j].transpose(0, 2, 1)
        dense = w.take(f"{src}.attention.dense.weight", (M, H * D))
        out[f"{dst}.attn.W_O"] = _heads_out(dense, H, D)
        if cfg.attn_bias:
            qkv_b = w.take(f"{src}.attention.query_key_value.bias", (3 * H * D,)).reshape(H, 3, D)
            for j, n in enumerate("QKV"):
                out[f"{dst}.attn.b_{n}"] = qkv_b[:, j]
            out[f"{dst}.attn.b_O"] = w.take(f"{src}.attention.dense.bias", (M,))
        out[f"{dst}.mlp.W_in"] = w.take(f"{src}.mlp.dense_h_to_4h.weight", (F, M)).T
        out[f"{dst}.mlp.b_in"] = w.take(f"{src}.mlp.dense_h_to_4h.bias", (F,))
        out[f"{dst}.mlp.W_out"] = w.take(f"{src}.mlp.dense_4h_to_h.weight", (M, F)).T
        out[f"{dst}.mlp.b_out"] = w.take(f"{src}.mlp.dense_4h_to_h.bias", (M,))
    _norm(out, w, "ln_final", "final_layer_norm", cfg)
    return out


def _llama(w: _Weights, cfg: TransformerConfig, out: dict) -> dict:
    M, H, KV, D, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp
    out["embed.W_E"] = w.take("embed_tokens.weight", (cfg.d_vocab, M))
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        _norm(out, w, f"{dst}.ln1", f"{src}.input_layernorm", cfg)
        _norm(out, w, f"{dst}.ln2", f"{src}.post_attention_layernorm", cfg)
        for n, heads in (("q", H), ("k", KV), ("v", KV)):
            W = w.take(f"{src}.self_attn.{n}_proj.weight", (heads * D, M))
            out[f"{dst}.attn.W_{n.upper()}"] = _heads_in(W, heads, D)
            if cfg.attn_bias:
                b = w.take(f"{src}.self_attn.{n}_proj.bias", (heads * D,))
                out[f"{dst}.attn.b_{n.upper()}"] = b.reshape(heads, D)
        o_proj = w.take(f"{src}.self_attn.o_proj.weight", (M, H * D))
        out[f"{dst}.attn.W_O"] = _heads_out(o_proj, H, D)
        if cfg.attn_out_bias:
            out[f"{dst}.attn.b_O"] = w.take(f"{src}.self_attn.o_proj.bias", (M,))
        for n, hf_name, shape in (
            ("gate", "gate_proj", (F, M)),
            ("in", "up_proj", (F, M)),
            ("out", "down_proj", (M, F)),
        ):
            out[f"{dst}.mlp.W_{n}"] = w.take(f"{src}.mlp.{hf_name}.weight", shape).T
            if cfg.mlp_bias:
                out[f"{dst}.mlp.b_{n}"] = w.take(f"{src}.mlp.{hf_name}.bias", shape[:1])
    _norm(out, w, "ln_final", "norm", cfg)
    return out


_CONVERTERS = {
    "gpt2": _gpt2,
    "gpt_neox": _neox,
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
}
_HEADS = {"gpt2": "lm_head.weight", "gpt_neox": "embed_out.weight"}


def load_hf(
    directory: str | os.PathLike,
    dtype: str = "float32",
    *,
    allow_nonfinite: bool = False,
    mesh: Mesh | None = None,
    model_axis: str = "model",
) -> Transformer:
    """Load a `transformers` model directory (`config.json` + safetensors, sharded or not).

    **Arguments:**

    - `directory`: what `model.save_pretrained(directory)` wrote, or a hub snapshot.
    - `dtype`: `"float32"`, `"bfloat16"` or `"float16"`; weights are cast on load.
    - `allow_nonfinite`: load weights holding NaN or inf (or overflowing `dtype`) instead of
      raising `NonFiniteWeightError`.
    - `mesh`, `model_axis`: load model-parallel, the weights split over axis `model_axis` of
      this `jax.sharding.Mesh` (heads, MLP hidden units, vocabulary; see
      `jaxcirc.models.shard_model`). Each tensor is read, converted on the host and put
      straight into its devices' slices before the next is read: no device ever holds a
      whole split weight, and the host one tensor at a time.

    **Returns:** a `Transformer` whose logits match the `transformers` model's, its identical
    layers run as one scan (`jaxcirc.models.scan_layers`: the same results, and a deep model
    compiles one block body; `scan_layers(model, False)` unrolls them).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory; expected a Hugging Face model "
            "directory (config.json + model.safetensors)"
        )
    hf = read_config(directory)
    kind = hf.get("model_type")
    w = None
    if kind in SUPPORTED:  # count the stored layers before a config can claim millions
        w = _Weights(directory, SUPPORTED[kind][1], check_dtype(dtype), allow_nonfinite)
        key, layers = _layer_key(hf), w.layers()
        if _size(hf, key) > len(layers):  # (more layers than claimed: named as unused below)
            raise ValueError(
                f"config.json {key}={hf[key]!r}, but the safetensors files in {directory} hold "
                f"only {len(layers)} layers; the config does not belong to these weights"
            )
    cfg = hf_config_to_jaxcirc(hf, dtype)
    arrays = _CONVERTERS[cfg.family](w, cfg, placer(cfg, mesh, model_axis))
    head = _HEADS.get(cfg.family, "lm_head.weight")
    if cfg.tied_embeddings:
        arrays["unembed.W_U"] = arrays["embed.W_E"].T
        w.skip(head)
    else:
        arrays["unembed.W_U"] = w.take(head, (cfg.d_vocab, cfg.d_model), base=False).T
    leftover = w.leftover()
    if leftover:
        raise ValueError(
            f"{len(leftover)} weights in {directory} are not used by a "
            f"{cfg.family} model as config.json describes it: {leftover[:5]}"
        )
    return scan_layers(from_state_dict(cfg, arrays))
