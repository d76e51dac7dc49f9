"""`TransformerConfig`: the static description of a transformer.

Axis vocabulary (TransformerLens's): `seq`, `d_model`, `n_heads`, `n_kv_heads`, `d_head`,
`d_mlp`, `d_vocab`, `n_layers`. Models work on one example; batches come from `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import jax.numpy as jnp

Norm = Literal["layernorm", "rmsnorm", "none"]
Positional = Literal["learned", "rotary", "none"]
Activation = Literal["gelu_new", "gelu", "relu", "silu"]
Block = Literal["sequential", "parallel", "attn_only"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of a `Transformer`; held as a static field, so it is hashable.

    The family builders (`gpt2_config`, `neox_config`, `llama_config`, ...) fill it in;
    the forward pass never branches on `family`, which is kept for saving and display.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int = 0
    n_kv_heads: int | None = None
    act_fn: Activation = "gelu_new"
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    positional: Positional = "learned"
    rotary_dim: int = 0
    rotary_base: float = 10000.0
    block: Block = "sequential"
    gated_mlp: bool = False
    attn_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    unembed_bias: bool = False
    tied_embeddings: bool = False
    final_norm: bool = True
    causal: bool = True  # False only for converted tracr models (bidirectional attention)
    dtype: str = "float32"
    family: str = "custom"

    def __post_init__(self):
        def bad(field, value, expected):
            raise ValueError(f"TransformerConfig.{field}={value!r}: expected {expected}")

        for name in ("d_model", "n_layers", "n_heads", "d_head", "d_vocab", "n_ctx"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, getattr(self, name), "a positive int")
        if self.block != "attn_only" and self.d_mlp < 1:
            bad("d_mlp", self.d_mlp, f"a positive int for block={self.block!r}")
        if self.n_heads % self.kv_heads:
            bad("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads}")
        if self.positional == "rotary" and not (
            0 < self.rotary_dim <= self.d_head and self.rotary_dim % 2 == 0
        ):
            bad("rotary_dim", self.rotary_dim, f"an even int in (0, d_head={self.d_head}]")
        if self.dtype not in DTYPES:
            bad("dtype", self.dtype, f"one of {sorted(DTYPES)}")
        for field, choices in (
            ("act_fn", Activation),
            ("norm", Norm),
            ("positional", Positional),
            ("block", Block),
        ):
            if getattr(self, field) not in choices.__args__:
                bad(field, getattr(self, field), f"one of {choices.__args__}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TransformerConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)
