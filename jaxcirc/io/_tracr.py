"""tracr → jaxcirc: compiled RASP programs as `Transformer`s, with their ground-truth circuits.

tracr (Lindner et al. 2023) compiles a RASP program to a norm-free transformer whose residual
stream has one named direction per value of every intermediate sequence operation (SOp). Each
attention head and MLP therefore reads and writes known directions, which fixes the circuit
exactly. `from_tracr` converts the weights (`compile_rasp_to_model`'s output) to a jaxcirc
`Transformer` and derives that circuit; `tracr_case` loads one of the shipped benchmarks
(`jaxcirc.tasks._tracr_cases.TRACR_CASES`) from `jaxcirc/data/tracr/` without tracr installed.

The converted model (`cfg.family == "tracr"`):

- blocks are attention then ReLU MLP, no norms, bidirectional attention (`causal=False`, as
  tracr compiles by default); heads are tracr's, padded with zero heads where a layer has fewer;
- `embed` is tracr's token embedding (which also writes the constant `one` direction),
  `pos_embed` its position embedding (position 0 is BOS and has none);
- readout: tracr's output space. Categorical programs: logit column `j` is the score of output
  value `info.output_values[j]` (tracr's decoding is the argmax); numerical programs: column 0
  holds the value. Unused columns (the embedding and unembedding share `d_vocab`, the larger of
  the token and output counts) have zero weights and bias -1e4, so they never win an argmax
  and carry no probability.

The circuit (`TracrCircuit`): nodes `embed`, `L{l}H{h}`, `MLP{l}`, `logits` (the names of
`jaxcirc.graph`); an edge `source -> target` exists when the source is computed before the
target and writes a residual direction the target reads. Targets name the input:
`L{l}H{h}.q` / `.k` / `.v` (the head's query, key and value spaces) or `MLP{l}` or `logits`, so
edges index `jaxcirc.graph.graph(model)` directly. Edges that carry only the compiler's
constant directions (`one`, the BOS token) are kept apart as `constant_edges`: they are real
but no resampling ablation can see them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import importlib.resources
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models import Transformer, TransformerConfig, from_state_dict, state_dict
from ..tasks._tracr_cases import TRACR_CASE_NAMES, TRACR_CASES, TracrCase

PAD_BIAS = -1e4
ORDER_EMBED, ORDER_LOGITS = -1, 1 << 30


def _tracr():
    try:
        import tracr  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "this needs tracr: pip install tracr-pypi (or jaxcirc[tracr]); the shipped cases "
            "load without it through jaxcirc.io.tracr_case"
        ) from e


# --- compiling ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TracrCompilation:
    """tracr's compiled model together with what `compile_rasp_to_model` discards: the craft
    model (its blocks in layer order) and the RASP graph whose nodes carry `MODEL_BLOCK`."""

    assembled: Any  # tracr.compiler.assemble.AssembledTransformerModel
    craft_model: Any  # tracr.craft.transformers.SeriesWithResiduals
    graph: Any  # networkx.DiGraph of RASP expressions
    sink: dict


class _JitInitHaiku:
    """`haiku` with `transform(f).init` jitted: tracr runs `init` once per compile, op by op,
    which costs an XLA compile per op; one jitted init gives the same parameters faster."""

    def __getattr__(self, name):
        import haiku

        return getattr(haiku, name)

    @staticmethod
    def transform(f):
        import haiku

        t = haiku.transform(f)

        def init(*args):
            return _quick_jit(t.init, *args)

        init._original_fn = t.init._original_fn  # haiku's without_apply_rng reads it
        return haiku.Transformed(init=init, apply=t.apply)


@contextlib.contextmanager
def _fast_assemble():
    from tracr.compiler import assemble

    saved = assemble.hk
    assemble.hk = _JitInitHaiku()
    try:
        yield
    finally:
        assemble.hk = saved


def compile_rasp(
    program,
    vocab,
    max_seq_len: int,
    *,
    compiler_bos: str = "BOS",
    compiler_pad: str = "compiler_pad",
    causal: bool = False,
    mlp_exactness: int = 100,
) -> TracrCompilation:
    """tracr's `compile_rasp_to_model`, step by step, keeping the craft model and RASP graph
    that `from_tracr` reads the circuit's RASP labels from. Arguments are tracr's."""
    _tracr()
    from tracr.compiler import (
        basis_inference,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        rasp_to_graph,
        validating,
    )
    from tracr.craft import bases
    from tracr.rasp import rasp

    vocab = set(vocab)
    for special in (compiler_bos, compiler_pad):
        if special in vocab:
            raise ValueError(f"the compiler token {special!r} must not be in the vocab {vocab}")
    unsupported = validating.static_validate(program)
    if unsupported:
        reasons = "; ".join(f"{u.expr.name}: {u.reason}" for u in unsupported)
        raise NotImplementedError(f"tracr cannot compile this program: {reasons}")
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, vocab, max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph,
        bos_dir=bases.BasisDirection(rasp.tokens.label, compiler_bos),
        mlp_exactness=mlp_exactness,
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    with _fast_assemble():
        assembled = craft_model_to_transformer.craft_model_to_transformer(
            craft_model=craft_model,
            graph=graph,
            sink=sink,
            max_seq_len=max_seq_len,
            causal=causal,
            compiler_bos=compiler_bos,
            compiler_pad=compiler_pad,
        )
    return TracrCompilation(assembled, craft_model, graph, sink)


def canonical_labels(program):
    """Number the expressions of `program` in dependency order, in place, and return it.

    tracr labels an expression `name_id` with an id from a process-wide counter, and orders the
    residual stream by label, so the same program built twice compiles to differently labelled
    and permuted weights. Fixed ids make compiling reproducible (the shipped cache relies on
    it). `tokens`, `indices` and `length` are shared singletons with fixed labels; left alone.
    """
    from tracr.rasp import rasp

    order: dict[int, Any] = {}

    def visit(expr):
        if id(expr) in order:
            return
        for child in expr.children:
            visit(child)
        order[id(expr)] = expr

    visit(program)
    for k, expr in enumerate(order.values(), 1):
        if not isinstance(expr, (rasp.TokensType, rasp.IndicesType, rasp.LengthType)):
            expr.__dict__["unique_id"] = k  # overrides the cached_property
    return program


def compile_case(case: str | TracrCase) -> TracrCompilation:
    """Compile one of `TRACR_CASES` (by name or value) with tracr, reproducibly labelled."""
    case = _lookup(case) if isinstance(case, str) else case
    _tracr()
    program = canonical_labels(case.program())
    return compile_rasp(program, case.vocab, case.max_len, compiler_bos=case.compiler_bos)


# --- the circuit -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TracrCircuit:
    """The ground-truth circuit of a compiled program, as plain data (`to_dict` is JSON).

    `nodes`: `embed`, the heads and MLPs the program uses (`L{l}H{h}`, `MLP{l}`), `logits`, in
    computation order. `edges` / `constant_edges`: `(source, target)` pairs, targets naming the
    input read (`L1H0.q`, `MLP0`, `logits`). `components`: per node, the residual directions it
    reads (`{"q": [...], "k": [...], "v": [...]}` for heads, `{"in": [...]}` otherwise) and
    writes, and the RASP expressions it computes (`"rasp"`). `edge_spaces`: per edge
    `"source -> target"`, the directions it carries.
    """

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    constant_edges: tuple[tuple[str, str], ...]
    components: dict
    edge_spaces: dict

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n.startswith("L"))

    def on(self, g, *, constant: bool = False):
        """The ground truth as a `jaxcirc.graph.Circuit` on graph `g` of the converted model;
        `constant=True` adds the constant edges (what zero ablation also removes)."""
        from ..graph import Circuit

        edges = self.edges + (self.constant_edges if constant else ())
        return Circuit.from_edges(g, edges)

    @property
    def mlps(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n.startswith("MLP"))

    def to_dict(self) -> dict:
        return {
            "nodes": list(self.nodes),
            "edges": [list(e) for e in self.edges],
            "constant_edges": [list(e) for e in self.constant_edges],
            "components": self.components,
            "edge_spaces": self.edge_spaces,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TracrCircuit:
        return cls(
            tuple(data["nodes"]),
            tuple(tuple(e) for e in data["edges"]),
            tuple(tuple(e) for e in data["constant_edges"]),
            data["components"],
            data["edge_spaces"],
        )


def node_order(name: str) -> int:
    """Computation order of a circuit node or edge target: embed, then per layer the heads
    (`2 l`) and the MLP (`2 l + 1`), then logits."""
    name = name.split(".")[0]
    if name == "embed":
        return ORDER_EMBED
    if name == "logits":
        return ORDER_LOGITS
    if name.startswith("MLP"):
        return 2 * int(name[3:]) + 1
    if name.startswith("L") and "H" in name:
        return 2 * int(name[1 : name.index("H")])
    raise ValueError(f"not a circuit node: {name!r}")


def _node_key(name: str) -> tuple[int, int]:
    """Computation order, then head index within a layer."""
    head = int(name[name.index("H") + 1 :]) if name.startswith("L") else 0
    return node_order(name), head


def _circuit(reads: dict, writes: dict, constant: set, rasp_labels: dict) -> TracrCircuit:
    """Edges from read/write overlaps. `reads[node][kind]`, `writes[node]`: direction labels;
    nodes are `embed`, heads, MLPs and `logits` (which only reads)."""
    names = sorted(set(reads) | set(writes), key=_node_key)
    edges, constant_edges, spaces = [], [], {}
    for src in names:
        for dst in names:
            if node_order(src) >= node_order(dst):
                continue
            for kind, read in reads.get(dst, {}).items():
                carried = sorted(set(writes.get(src, ())) & set(read))
                if not carried:
                    continue
                target = f"{dst}.{kind}" if kind in ("q", "k", "v") else dst
                (constant_edges if set(carried) <= constant else edges).append((src, target))
                spaces[f"{src} -> {target}"] = carried
    components = {
        n: {
            "reads": {k: sorted(v) for k, v in reads.get(n, {}).items()},
            "writes": sorted(writes.get(n, ())),
            "rasp": sorted(rasp_labels.get(n, ())),
        }
        for n in names
    }
    return TracrCircuit(tuple(names), tuple(edges), tuple(constant_edges), components, spaces)


def _labels(space) -> list[str]:
    return [str(d) for d in space.basis]


def _craft_circuit(comp: TracrCompilation, readout: np.ndarray, labels: list[str]):
    """Reads and writes from the craft blocks' vector spaces; RASP labels from the graph."""
    from tracr.compiler import assemble, nodes
    from tracr.craft import transformers

    blocks = comp.craft_model.blocks
    _, module_names = assemble._get_model_config_and_module_names(comp.craft_model)
    reads, writes, head_names, mlps = {}, {}, {}, []
    for block, module in zip(blocks, module_names):
        layer = int(module.split("/")[1].removeprefix("layer_"))
        if isinstance(block, transformers.MLP):
            name = f"MLP{layer}"
            reads[name] = {"in": _labels(block.fst.input_space)}
            writes[name] = _labels(block.snd.output_space)
            mlps.append(name)
            continue
        for h, head in enumerate(block.as_multi().heads()):
            name = f"L{layer}H{h}"
            head_names[id(head)] = name
            reads[name] = {
                "q": _labels(head.w_qk.left_space),
                "k": _labels(head.w_qk.right_space),
                "v": _labels(head.w_ov.input_space),
            }
            writes[name] = _labels(head.w_ov.output_space)
    rasp_labels: dict[str, list[str]] = {}
    for node_id, node in comp.graph.nodes(data=True):
        block = node.get(nodes.MODEL_BLOCK)
        if block is None:
            continue
        parts = block.blocks if isinstance(block, transformers.SeriesWithResiduals) else [block]
        for part in parts:
            if isinstance(part, transformers.MLP):
                out = set(_labels(part.snd.output_space))
                owner = [m for m in mlps if out <= set(writes[m])]
            else:
                owner = [head_names[id(h)] for h in part.as_multi().heads()]
            for name in owner:
                rasp_labels.setdefault(name, []).append(str(node_id))
    return _finish(reads, writes, readout, labels, comp.assembled, rasp_labels)


def _weights_circuit(model: Transformer, readout: np.ndarray, labels: list[str], assembled):
    """Reads and writes from the weights' nonzero rows and columns (no craft model at hand)."""
    lab = np.asarray(labels, dtype=object)
    reads, writes = {}, {}
    for layer, block in enumerate(model.blocks):
        a = block.attn
        for h in range(a.W_Q.shape[0]):
            rows = {
                kind: lab[np.abs(np.asarray(w[h])).sum(-1) > 0].tolist()
                for kind, w in (("q", a.W_Q), ("k", a.W_K), ("v", a.W_V))
            }
            out = lab[np.abs(np.asarray(a.W_O[h])).sum(0) > 0].tolist()
            if out and all(rows.values()):
                reads[f"L{layer}H{h}"], writes[f"L{layer}H{h}"] = rows, out
        w_in, w_out = np.asarray(block.mlp.W_in), np.asarray(block.mlp.W_out)
        out = lab[np.abs(w_out).sum(0) > 0].tolist()
        if out:
            reads[f"MLP{layer}"] = {"in": lab[np.abs(w_in).sum(-1) > 0].tolist()}
            writes[f"MLP{layer}"] = out
    return _finish(reads, writes, readout, labels, assembled, {})


def _finish(reads, writes, readout, labels, assembled, rasp_labels):
    enc = assembled.input_encoder
    bos = f"tokens:{enc.bos_token}"
    writes = {
        "embed": [x for x in labels if x.startswith(("tokens:", "indices:")) or x == "one"],
        **writes,
    }
    reads = {**reads, "logits": {"in": [labels[i] for i in np.flatnonzero(np.any(readout, 1))]}}
    return _circuit(reads, writes, {"one", bos}, rasp_labels)


# --- the weights -------------------------------------------------------------------------------


def tracr_readout_matrix(assembled) -> np.ndarray:
    """`[d_model, n_out]`: tracr's unembedding (projection onto the output space), read by
    running its own `unembed` module on the identity."""
    import haiku as hk
    import jax.numpy as jnp

    d = len(assembled.residual_labels)
    unembed = hk.without_apply_rng(
        hk.transform(lambda x: assembled.get_compiled_model().unembed(x, use_unembed_argmax=False))
    )
    return np.asarray(unembed.apply({}, jnp.eye(d, dtype=jnp.float32))).reshape(d, -1)


_QUICK = {"xla_backend_optimization_level": 0}  # these models are tiny: compile, don't optimise


def _quick_jit(f, *args):
    import jax

    return jax.jit(f).lower(*args).compile(compiler_options=_QUICK)(*args)


def tracr_readout(assembled, tokens) -> np.ndarray:
    """tracr's own output before the argmax, `[batch, seq, n_out]`, for token ids
    `[batch, seq]` (BOS included), through tracr's haiku forward pass."""
    tokens = np.asarray(tokens)
    out = _quick_jit(
        lambda p, x: assembled.forward(p, x).transformer_output.output, assembled.params, tokens
    )
    return np.asarray(out) @ tracr_readout_matrix(assembled)


def _model_outputs(model: Transformer, tokens) -> np.ndarray:
    import equinox as eqx
    import jax

    from ..models._transformer import forward

    params, static = eqx.partition(model, eqx.is_array)

    def run(p, x):
        return jax.vmap(lambda t: forward(eqx.combine(p, static), t)[0])(x)

    return np.asarray(_quick_jit(run, params, np.asarray(tokens)))


def check_against_tracr(compiled, model: Transformer, *, limit: int = 20_000, seed: int = 0):
    """Compare `model` with tracr's own forward pass on every input (BOS + 1..max_len
    vocabulary tokens), or on `limit` seeded random inputs per length where there are more.

    Returns `{"n_inputs", "exhaustive", "max_abs_diff", "argmax_mismatches"}`: the largest
    difference of the output scores (BOS position excluded) and, for categorical programs,
    how many positions decode differently.
    """
    assembled = compiled.assembled if isinstance(compiled, TracrCompilation) else compiled
    enc = assembled.input_encoder
    vocab = [v for v in enc.encoding_map if v not in (enc.bos_token, enc.pad_token)]
    ids = np.asarray([enc.encoding_map[v] for v in vocab])
    bos = enc.encoding_map[enc.bos_token]
    rng = np.random.default_rng(seed)
    report = {"n_inputs": 0, "exhaustive": True, "max_abs_diff": 0.0, "argmax_mismatches": 0}
    for length in range(1, enc._max_seq_len):  # the encoder's limit counts BOS
        if len(vocab) ** length <= limit:
            rows = _all_inputs(vocab, length)
        else:
            rows = rng.integers(0, len(vocab), (limit, length))
            report["exhaustive"] = False
        tokens = np.concatenate([np.full((len(rows), 1), bos), ids[rows]], 1)
        ref = tracr_readout(assembled, tokens)[:, 1:]
        ours = _model_outputs(model, tokens)[:, 1:, : ref.shape[-1]]
        report["n_inputs"] += len(rows)
        report["max_abs_diff"] = max(report["max_abs_diff"], float(np.abs(ref - ours).max()))
        if ref.shape[-1] > 1:
            report["argmax_mismatches"] += int((ref.argmax(-1) != ours.argmax(-1)).sum())
    return report


def from_tracr(compiled) -> tuple[Transformer, TracrCircuit]:
    """Convert a compiled tracr model to a jaxcirc `Transformer` and its ground-truth circuit.

    `compiled` is `compile_rasp_to_model`'s `AssembledTransformerModel` (the circuit is then
    read from the weights' nonzero rows and columns, without RASP labels) or `compile_rasp`'s
    `TracrCompilation` (read from the craft blocks' vector spaces, with the RASP expression
    each component computes). See the module docstring for the model's conventions.
    """
    comp = compiled if isinstance(compiled, TracrCompilation) else None
    assembled = compiled.assembled if comp is not None else compiled
    if not hasattr(assembled, "params") or not hasattr(assembled, "model_config"):
        raise TypeError(
            "from_tracr expects tracr's AssembledTransformerModel (compile_rasp_to_model) or a "
            f"TracrCompilation (jaxcirc.io.compile_rasp); got {type(compiled).__name__}"
        )
    c = assembled.model_config
    if c.layer_norm:
        raise ValueError("tracr model has layer norm; compiled tracr models have none")
    p = {
        k: {kk: np.asarray(v, np.float32) for kk, v in d.items()}
        for k, d in assembled.params.items()
    }
    labels = [str(x) for x in assembled.residual_labels]
    readout = tracr_readout_matrix(assembled)
    w_e, w_pos = p["token_embed"]["embeddings"], p["pos_embed"]["embeddings"]
    n_tokens, d_model = w_e.shape
    n_out = readout.shape[1]
    heads, dk = c.num_heads, c.key_size
    cfg = TransformerConfig(
        d_model=d_model,
        n_layers=c.num_layers,
        n_heads=heads,
        d_head=dk,
        d_vocab=max(n_tokens, n_out),
        n_ctx=w_pos.shape[0],
        d_mlp=c.mlp_hidden_size,
        act_fn="relu",
        norm="none",
        final_norm=False,
        positional="learned",
        block="sequential",
        unembed_bias=True,
        causal=bool(c.causal),
        family="tracr",
    )
    w_u = np.zeros((d_model, cfg.d_vocab), np.float32)
    w_u[:, :n_out] = readout
    b_u = np.full(cfg.d_vocab, PAD_BIAS, np.float32)
    b_u[:n_out] = 0.0
    sd = {
        "embed.W_E": np.pad(w_e, ((0, cfg.d_vocab - n_tokens), (0, 0))),
        "pos_embed.W_pos": w_pos,
        "unembed.W_U": w_u,
        "unembed.b_U": b_u,
    }
    for layer in range(c.num_layers):
        a, m, ours = (
            f"transformer/layer_{layer}/attn/",
            f"transformer/layer_{layer}/mlp/",
            f"blocks.{layer}.",
        )
        for n, hk_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            w = p[a + hk_name]["w"]
            sd[f"{ours}attn.W_{n}"] = w.reshape(d_model, heads, dk).transpose(1, 0, 2)
            sd[f"{ours}attn.b_{n}"] = p[a + hk_name]["b"].reshape(heads, dk)
        sd[f"{ours}attn.W_O"] = p[a + "linear"]["w"].reshape(heads, dk, d_model)
        sd[f"{ours}attn.b_O"] = p[a + "linear"]["b"]
        sd[f"{ours}mlp.W_in"], sd[f"{ours}mlp.b_in"] = (
            p[m + "linear_1"]["w"],
            p[m + "linear_1"]["b"],
        )
        sd[f"{ours}mlp.W_out"], sd[f"{ours}mlp.b_out"] = (
            p[m + "linear_2"]["w"],
            p[m + "linear_2"]["b"],
        )
    model = from_state_dict(cfg, sd)
    if comp is not None:
        circuit = _craft_circuit(comp, readout, labels)
    else:
        circuit = _weights_circuit(model, readout, labels, assembled)
    return model, circuit


# --- shipped cases -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TracrCaseInfo:
    """What a shipped case needs beyond the model: how to encode inputs and decode outputs.

    `token_ids[value]` is the token id of a vocabulary value (`bos` included);
    `output_values[j]` is the output value of logit column `j` (categorical cases).
    `reference`: tracr's own outputs on sampled inputs (`inputs`, `outputs` without the BOS
    position, `readout`: the scores before the argmax), stored when the cache was built.
    """

    case: TracrCase
    token_ids: dict
    output_values: tuple
    residual_labels: tuple[str, ...]
    reference: dict

    def __getattr__(self, name):  # name, vocab, max_len, output, pairs, ... of the case
        if name == "case":
            raise AttributeError(name)
        return getattr(self.case, name)

    @property
    def bos(self) -> str:
        return self.case.compiler_bos

    def encode(self, rows: Sequence[Sequence]) -> np.ndarray:
        """Token ids `[n, 1 + len]` of equal-length inputs, BOS first."""
        rows = [list(r) for r in rows]
        if len({len(r) for r in rows}) > 1:
            raise ValueError("inputs must all have the same length to be stacked")
        bad = [v for r in rows for v in r if v not in self.token_ids]
        if bad:
            raise ValueError(f"{bad[0]!r} is not in the vocabulary {list(self.case.vocab)}")
        bos = self.token_ids[self.bos]
        return np.asarray([[bos, *(self.token_ids[v] for v in r)] for r in rows], np.int32)

    def decode(self, logits) -> list:
        """Output values `[n][seq]` (BOS position dropped) from logits `[n, seq, d_vocab]`."""
        logits = np.asarray(logits)[:, 1:]
        if self.case.output == "numerical":
            return logits[..., 0].tolist()
        idx = logits[..., : len(self.output_values)].argmax(-1)
        return [[self.output_values[i] for i in row] for row in idx]

    def sample(self, n: int, *, seed: int = 0, length: int | None = None):
        """Token ids of `n` clean inputs and their counterfactuals, `[n, 1 + length]` each."""
        clean, corrupt = self.case.pairs(n, seed=seed, length=length)
        return self.encode(clean), self.encode(corrupt)


def _lookup(name: str) -> TracrCase:
    if name not in TRACR_CASES:
        close = difflib.get_close_matches(name, TRACR_CASE_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown tracr case {name!r}{hint} Cases: {', '.join(TRACR_CASE_NAMES)}")
    return TRACR_CASES[name]


def _data_dir():
    return importlib.resources.files("jaxcirc").joinpath("data", "tracr")


@functools.cache
def tracr_case(name: str) -> tuple[Transformer, TracrCircuit, TracrCaseInfo]:
    """A shipped tracr benchmark: `(model, circuit, info)`, loaded from
    `jaxcirc/data/tracr/<name>.{safetensors,json}` (no tracr needed)."""
    import safetensors.numpy

    case = _lookup(name)
    data = _data_dir()
    meta_file, weights = data / f"{name}.json", data / f"{name}.safetensors"
    if not (meta_file.is_file() and weights.is_file()):
        raise FileNotFoundError(
            f"no cached model for tracr case {name!r} in {data}; build it with "
            f"`python -m jaxcirc.io._tracr --rebuild {name}` (needs tracr)"
        )
    meta = json.loads(meta_file.read_text())
    cfg = TransformerConfig.from_json(json.dumps(meta["config"]))
    model = from_state_dict(cfg, safetensors.numpy.load(weights.read_bytes()))
    info = TracrCaseInfo(
        case,
        {v: i for v, i in meta["token_ids"]},
        tuple(meta["output_values"]),
        tuple(meta["residual_labels"]),
        meta["reference"],
    )
    return model, TracrCircuit.from_dict(meta["circuit"]), info


def _all_inputs(vocab, length):
    grids = np.meshgrid(*[np.arange(len(vocab))] * length, indexing="ij")
    return np.stack([g.ravel() for g in grids], -1)


def _json_value(v):
    return v.item() if isinstance(v, np.generic) else v


def build_case(name: str, out_dir: Path, *, n_reference: int = 24) -> dict:
    """Compile case `name` with tracr, convert it, and write `<name>.safetensors` and
    `<name>.json` (config, encodings, circuit, tracr's outputs on sampled inputs)."""
    import safetensors.numpy
    import tracr

    from .._atomic import atomic_write

    case = _lookup(name)
    comp = compile_case(case)
    model, circuit = from_tracr(comp)
    asm = comp.assembled
    token_ids = asm.input_encoder.encoding_map
    output_values = (
        [
            _json_value(v)
            for v, _ in sorted(asm.output_encoder.encoding_map.items(), key=lambda x: x[1])
        ]
        if case.output == "categorical"
        else []
    )
    rng = np.random.default_rng(0)
    lengths = [case.max_len] * (n_reference // 2)
    lengths += sorted(int(n) for n in rng.integers(1, case.max_len + 1, n_reference // 2))
    inputs, outputs, readouts = [], [], []
    for length in sorted(set(lengths)):
        rows = case.sample(rng, lengths.count(length), length)
        bos = token_ids[case.compiler_bos]
        ids = np.asarray([[bos, *(token_ids[v] for v in row)] for row in rows])
        scores = tracr_readout(asm, ids)[:, 1:]  # tracr's forward; its decoding is the argmax
        for row, score in zip(rows, scores):
            inputs.append([_json_value(v) for v in row])
            if case.output == "numerical":
                outputs.append(score[:, 0].tolist())
            else:
                outputs.append([output_values[i] for i in score.argmax(-1)])
            readouts.append(np.round(score, 6).tolist())
    meta = {
        "case": case.name,
        "description": case.description,
        "vocab": [_json_value(v) for v in case.vocab],
        "max_len": case.max_len,
        "bos": case.compiler_bos,
        "output": case.output,
        "corruption": case.corruption,
        "compiled_with": {
            "tracr": getattr(tracr, "__version__", "tracr-pypi"),
            "causal": False,
            "mlp_exactness": 100,
        },
        "token_ids": sorted(
            ([_json_value(v), i] for v, i in token_ids.items()), key=lambda x: x[1]
        ),
        "output_values": output_values,
        "residual_labels": [str(x) for x in asm.residual_labels],
        "config": json.loads(model.cfg.to_json()),
        "circuit": circuit.to_dict(),
        "reference": {"inputs": inputs, "outputs": outputs, "readout": readouts},
    }
    out_dir = Path(out_dir)
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict(model).items()}
    atomic_write(out_dir / f"{name}.safetensors", lambda t: safetensors.numpy.save_file(arrays, t))
    atomic_write(
        out_dir / f"{name}.json", lambda t: Path(t).write_text(json.dumps(meta, indent=1) + "\n")
    )
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcirc.io._tracr",
        description="Rebuild the cached tracr models in jaxcirc/data/tracr (needs tracr).",
    )
    parser.add_argument("--rebuild", action="store_true", help="compile and write the cache")
    parser.add_argument(
        "cases", nargs="*", help=f"cases (default all): {', '.join(TRACR_CASE_NAMES)}"
    )
    parser.add_argument("--out", default=None, help="directory (default: the package's data/tracr)")
    args = parser.parse_args(argv)
    if not args.rebuild:
        parser.print_help()
        return 2
    out = Path(args.out) if args.out else Path(__file__).resolve().parent.parent / "data" / "tracr"
    for name in args.cases or TRACR_CASE_NAMES:
        start = time.perf_counter()
        meta = build_case(name, out)
        c = meta["circuit"]
        print(
            f"{name}: {len(c['nodes']) - 2} components, {len(c['edges'])} edges "
            f"(+{len(c['constant_edges'])} constant), {time.perf_counter() - start:.1f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
