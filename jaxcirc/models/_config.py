"""`TransformerConfig`: the static description of a transformer.

Axis vocabulary (TransformerLens's): `seq`, `d_model`, `n_heads`, `n_kv_heads`, `d_head`,
`d_mlp`, `d_vocab`, `n_layers`. Models work on one example; batches come from `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import jax.numpy as jnp

from .._checks import nearest_word

Norm = Literal["layernorm", "rmsnorm", "none"]
Positional = Literal["learned", "rotary", "none"]
Activation = Literal["gelu_new", "gelu", "relu", "silu"]
Block = Literal["sequential", "parallel", "attn_only"]
TOPK_PLACES = ("attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp_neuron", "mlp_out")

LAYER_FIELDS = ("layer_n_heads", "layer_n_kv_heads", "layer_d_mlp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of a `Transformer`; held as a static field, so it is hashable.

    The family builders (`gpt2_config`, `neox_config`, `llama_config`, ...) fill it in;
    the forward pass never branches on `family`, which is kept for saving and display.
    A model narrowed by `jaxcirc.models.narrow` keeps the preset's `n_heads` / `d_mlp` and
    records each layer's actual widths in `layer_n_heads`, `layer_n_kv_heads`, `layer_d_mlp`
    (read them with `heads_at(layer)`, `kv_heads_at(layer)`, `d_mlp_at(layer)`); tools that
    need equal widths call `require_uniform`.
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
    # per-layer widths of a narrowed model (`jaxcirc.models.narrow`); `None`: every layer has
    # `n_heads` query heads, `kv_heads` key/value heads and `d_mlp` MLP neurons
    layer_n_heads: tuple[int, ...] | None = None
    layer_n_kv_heads: tuple[int, ...] | None = None
    layer_d_mlp: tuple[int, ...] | None = None
    mlp_out_bias: bool | None = None  # `None`: as `mlp_bias`; narrowing may add b_out alone
    rotary_scale: float = 1.0  # linear RoPE scaling: positions are divided by it
    # weight-sparse architecture pieces (Gao et al. 2025, arXiv 2511.13653): AbsTopK activation
    # sparsity keeping ⌊act_topk · width⌋ entries at each place of `act_topk_at` (0: off), an
    # attention sink per head, and a bigram logit table read by the current token
    act_topk: float = 0.0
    act_topk_at: tuple[str, ...] = ("attn_in", "attn_out", "mlp_in", "mlp_out")
    attn_sink: bool = False
    bigram: bool = False

    def __post_init__(self):
        def bad(field, value, expected):
            raise ValueError(f"TransformerConfig.{field}={value!r}: expected {expected}")

        for field in LAYER_FIELDS:  # JSON gives lists; a static config must be hashable
            value = getattr(self, field)
            if value is not None:
                if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                    bad(field, value, f"None or a sequence of n_layers={self.n_layers} ints")
                object.__setattr__(self, field, tuple(value))

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
        if not (isinstance(self.rotary_scale, (int, float)) and 0 < self.rotary_scale < 1e308):
            bad("rotary_scale", self.rotary_scale, "a positive number (1.0: unscaled)")
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
        self._check_layer_widths(bad)
        self._check_sparsity(bad)

    def _check_sparsity(self, bad):
        if isinstance(self.act_topk_at, str) or not hasattr(self.act_topk_at, "__iter__"):
            bad("act_topk_at", self.act_topk_at, f"a tuple of places from {TOPK_PLACES}")
        object.__setattr__(self, "act_topk_at", tuple(self.act_topk_at))
        for place in self.act_topk_at:
            if place not in TOPK_PLACES:
                hint = nearest_word(str(place), TOPK_PLACES)
                bad("act_topk_at", self.act_topk_at, f"places from {TOPK_PLACES}{hint}")
        if not (isinstance(self.act_topk, (int, float)) and 0 <= self.act_topk <= 1):
            bad("act_topk", self.act_topk, "a fraction in [0, 1] (0: no activation sparsity)")
        if not self.act_topk:
            return
        if self.block == "attn_only" and {"mlp_in", "mlp_neuron", "mlp_out"} & set(
            self.act_topk_at
        ):
            bad("act_topk_at", self.act_topk_at, "no MLP places for block='attn_only'")
        if "attn_in" in self.act_topk_at or "mlp_in" in self.act_topk_at:
            if self.norm == "none":
                why = "(AbsTopK acts on the normalised input)"
                bad("norm", self.norm, f"a norm when act_topk_at sparsifies attn_in/mlp_in {why}")
        if "attn_out" in self.act_topk_at and self.attn_out_bias:
            why = "(each head's share of a sparsified sum is its output on the kept channels)"
            bad("attn_out_bias", True, f"False when act_topk_at has 'attn_out' {why}")

    def _check_layer_widths(self, bad):
        for field in LAYER_FIELDS:
            value = getattr(self, field)
            if value is None:
                continue
            if len(value) != self.n_layers or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
            ):
                bad(field, value, f"None or {self.n_layers} (n_layers) non-negative ints")
        if self.layer_d_mlp is not None and self.block == "attn_only":
            bad("layer_d_mlp", self.layer_d_mlp, "None for block='attn_only' (no MLPs)")
        if self.layer_n_kv_heads is not None and self.layer_n_heads is None:
            bad("layer_n_kv_heads", self.layer_n_kv_heads, "None unless layer_n_heads is set")
        for layer in range(self.n_layers):
            h, kv = self.heads_at(layer), self.kv_heads_at(layer)
            if (h == 0) != (kv == 0) or (h and h % kv):
                bad(
                    "layer_n_kv_heads",
                    self.layer_n_kv_heads,
                    f"a divisor of layer {layer}'s {h} query heads (0 only with 0 query heads)",
                )

    @property
    def has_mlp_out_bias(self) -> bool:
        return self.mlp_bias if self.mlp_out_bias is None else self.mlp_out_bias

    @property
    def uniform(self) -> bool:
        """Whether every layer has the same widths (no per-layer `layer_*` fields)."""
        return all(getattr(self, field) is None for field in LAYER_FIELDS)

    def heads_at(self, layer: int) -> int:
        """Query heads of `layer` (`n_heads` unless narrowed)."""
        return self.n_heads if self.layer_n_heads is None else self.layer_n_heads[layer]

    def kv_heads_at(self, layer: int) -> int:
        """Key/value heads of `layer` (`kv_heads` unless narrowed)."""
        if self.layer_n_kv_heads is not None:
            return self.layer_n_kv_heads[layer]
        if self.layer_n_heads is None:
            return self.kv_heads
        # narrowed query heads only: plain multi-head attention keeps one kv head per head
        return self.layer_n_heads[layer] if self.n_kv_heads is None else self.kv_heads

    def d_mlp_at(self, layer: int) -> int:
        """MLP neurons of `layer` (`d_mlp` unless narrowed)."""
        return self.d_mlp if self.layer_d_mlp is None else self.layer_d_mlp[layer]

    def require_uniform(self, what: str) -> None:
        """Raise a clear `ValueError` when `what` cannot handle per-layer widths."""
        if not self.uniform:
            widths = {f: getattr(self, f) for f in LAYER_FIELDS if getattr(self, f) is not None}
            raise ValueError(
                f"{what} assumes every layer has the same number of heads and MLP neurons; "
                f"this narrowed model (jaxcirc.models.narrow) has per-layer widths {widths}"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **changes) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for field in (*LAYER_FIELDS, "mlp_out_bias"):  # absent unless set: old files unchanged
            if data[field] is None:
                del data[field]
        if data["rotary_scale"] == 1.0:
            del data["rotary_scale"]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for field in ("act_topk", "act_topk_at", "attn_sink", "bigram"):
            if data[field] == defaults[field] or (field == "act_topk_at" and not self.act_topk):
                del data[field]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TransformerConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)
