"""Model parallelism (`mesh=` on the loaders, `jaxcirc.models.shard_model`): a model loaded with
its weights split over a mesh axis equals the unsharded one, and no device holds a whole weight.

One subprocess with 8 virtual CPU devices runs every check and prints JSON. A tiny random Llama
(8 query heads, 4 KV heads, d_mlp 96, vocabulary 80, 3 layers) is written as a Hugging Face
directory (two safetensors shards and an index) and as a GGUF file, then loaded model-parallel
on meshes (8,) and (4, 2) (the model axis first; on (8,) the 4 KV heads do not divide the axis
and are replicated, on (4, 2) they are split):

- logits, the default patching sweep and EAP scores equal the unsharded model's (1e-5);
- every split weight's shards hold 1/n of it on each device, and each device holds exactly the
  replicated arrays plus 1/n of the split ones (under 30% of the model's bytes here);
- the compiled HLO of every program that ran (XLA's dump of each module after optimisation) has
  no collective whose result holds a split weight's whole shape; the check flags a program
  that gathers the weights on purpose;
- errors: a mesh axis that does not exist, a dimension the axis does not divide, and the
  data-parallel `mesh=` of an engine given a model-parallel model.
"""

import json
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

MESHES = {"(8,)": ((8,), ("model",)), "(4, 2)": ((4, 2), ("model", "batch"))}
SIZES = dict(d_model=48, n_heads=8, n_kv_heads=4, d_head=6, rotary_dim=6, d_mlp=96, d_vocab=80,
             n_ctx=16, n_layers=3)  # fmt: skip
BATCH, SEQ = 4, 5
COLLECTIVE = re.compile(
    r"= (.*?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\("
)


def _source():
    """A random tiny Llama with norms and weights away from their initial values."""
    import jax
    import jax.numpy as jnp

    import jaxcirc as jc

    model = jc.models.llama(key=jax.random.key(0), **SIZES)
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda x: x + jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype), model
    )


def write_hf(directory: Path, model) -> Path:
    """`model` as `transformers` saves a Llama: config.json, two safetensors shards, an index."""
    from safetensors.numpy import save_file

    import jaxcirc as jc

    cfg, sd = model.cfg, {k: np.asarray(v) for k, v in jc.models.state_dict(model).items()}
    M = cfg.d_model
    weights = {"model.embed_tokens.weight": sd["embed.W_E"], "model.norm.weight": sd["ln_final.w"],
               "lm_head.weight": sd["unembed.W_U"].T}  # fmt: skip
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        weights.update({
            h + "input_layernorm.weight": sd[b + "ln1.w"],
            h + "post_attention_layernorm.weight": sd[b + "ln2.w"],
            **{h + f"self_attn.{n.lower()}_proj.weight":
               sd[b + f"attn.W_{n}"].transpose(0, 2, 1).reshape(-1, M) for n in "QKV"},
            h + "self_attn.o_proj.weight": sd[b + "attn.W_O"].reshape(-1, M).T,
            h + "mlp.gate_proj.weight": sd[b + "mlp.W_gate"].T,
            h + "mlp.up_proj.weight": sd[b + "mlp.W_in"].T,
            h + "mlp.down_proj.weight": sd[b + "mlp.W_out"].T,
        })  # fmt: skip
    directory.mkdir()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}  # fmt: skip
    for file, keys in shards.items():
        save_file({k: np.ascontiguousarray(weights[k]) for k in keys}, str(directory / file))
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.d_vocab, "hidden_size": M, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.d_head, "intermediate_size": cfg.d_mlp,
        "max_position_embeddings": cfg.n_ctx, "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rotary_base, "tie_word_embeddings": False,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)), (a.shape, b.shape)
    return float(np.nanmax(np.abs(a - b)))


def _placement(model, mesh, axis: str) -> dict:
    """Per weight: whether each device's shard holds 1/n of it (split) or all of it
    (replicated), as `weight_spec` says; and every device's bytes of weights."""
    import equinox as eqx
    import jax

    from jaxcirc._model_parallel import _name, weight_spec

    n = mesh.shape[axis]
    per_device: Counter = Counter()
    total, expected, wrong, split = 0, 0, [], []
    for path, x in jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]:
        name, spec = _name(path), weight_spec(_name(path), x.shape, axis, n)
        share = x.size // n if axis in spec else x.size
        if axis in spec:
            split.append(name)
        total += x.nbytes
        expected += share * x.dtype.itemsize
        shards = x.addressable_shards
        if len(shards) != mesh.size or any(s.data.size != share for s in shards):
            wrong.append((name, [s.data.size for s in shards], share))
        for s in shards:
            per_device[s.device.id] += s.data.nbytes
    return {"wrong": wrong, "split": split, "total bytes": total, "expected": expected,
            "device bytes": sorted(per_device.values())}  # fmt: skip


def _collectives(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """`(kind, shape)` of every array a collective of an HLO module produces."""
    out = []
    for line in text.splitlines():
        match = COLLECTIVE.search(line)
        if match:
            for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", match.group(1)):
                out.append((match.group(2), tuple(int(d) for d in dims.split(",") if d)))
    return out


def _holds(shape: tuple[int, ...], weight: tuple[int, ...]) -> bool:
    """Whether an array of `shape` has every dimension of `weight` (in any order): a whole
    weight, stacked, transposed or gathered per lane, would."""
    return not Counter(weight) - Counter(shape)


def _gathering(dump: Path, weights: set) -> dict[str, list]:
    """Per compiled module (name: shapes) the collectives that produce a whole split weight."""
    found = {}
    for file in sorted(dump.glob("*after_optimizations.txt")):
        hits = [
            (k, s) for k, s in _collectives(file.read_text()) if any(_holds(s, w) for w in weights)
        ]
        if hits:
            module = file.name.split(".")[1]
            found[module] = sorted({f"{k} {list(s)}" for k, s in hits})
    return found


def main() -> dict:
    dump = Path(tempfile.mkdtemp(prefix="jaxcirc-hlo-"))
    # before the backend starts: XLA writes every compiled module's HLO (the persistent cache
    # is off, so every program compiles). `conftest.device_env` sets NPROC (XLA:CPU's pool
    # for the devices' collectives) high enough for all 8 devices
    os.environ["XLA_FLAGS"] += f" --xla_dump_to={dump} --xla_dump_hlo_as_text"
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P
    from test_gguf import write_llama_gguf

    import jaxcirc as jc

    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_disable_most_optimizations", True)
    assert len(jax.devices()) == 8, jax.devices()
    started = time.perf_counter()
    out: dict = {"meshes": {}, "errors": {}}
    tmp = Path(tempfile.mkdtemp(prefix="jaxcirc-mp-"))
    source = _source()
    hf = write_hf(tmp / "hf", source)
    gguf = write_llama_gguf(tmp / "tiny.gguf", source)
    rng = np.random.default_rng(1)
    clean, corrupt = (rng.integers(0, SIZES["d_vocab"], (BATCH, SEQ)) for _ in range(2))
    metric = jc.metrics.bind(jc.metrics.logit_diff, answer=rng.integers(0, 80, BATCH),
                             distractor=rng.integers(0, 80, BATCH))  # fmt: skip
    forward = eqx.filter_jit(lambda m, t: jax.vmap(m)(t))

    def results(model):
        return {"logits": forward(model, clean),
                "sweep": jc.patching.sweep(model, clean, corrupt, metric),
                "eap": jc.methods.eap(model, clean, corrupt, metric).values}  # fmt: skip

    ref = jc.load(hf)
    want = results(ref)
    out["reference"] = {
        "loaded = source": _diff(forward(source, clean), want["logits"]),
        "scale": {k: float(np.nanmax(np.abs(v))) for k, v in want.items()},
    }
    gguf_ref = forward(jc.load(gguf), clean)
    weights = set()
    for label, (shape, names) in MESHES.items():
        mesh = Mesh(np.array(jax.devices()).reshape(shape), names)
        t = time.perf_counter()
        model = jc.load(hf, mesh=mesh, model_axis="model")
        load_s = time.perf_counter() - t
        got = results(model)
        place = _placement(model, mesh, "model")
        for name in place["split"]:
            weights.add(tuple(jc.models.state_dict(source)[name].shape))
        from_gguf = jc.io.load_gguf(gguf, mesh=mesh, model_axis="model")
        out["meshes"][label] = {
            **{k: _diff(got[k], want[k]) for k in want},
            "scan": model.scan,
            "logits sharded": str(got["logits"].sharding.spec),
            "placement": place,
            "gguf placement": _placement(from_gguf, mesh, "model")["wrong"],
            "gguf logits": _diff(forward(from_gguf, clean), gguf_ref),
            "in-memory": _diff(forward(jc.models.shard_model(source, mesh), clean), want["logits"]),
            "load s": load_s,
        }
    weights = {w for w in weights if len(w) > 1}  # (a bias has an activation's shape)

    # the control: one program that gathers the split weights on purpose
    mesh = Mesh(np.array(jax.devices()), ("model",))
    model = jc.models.shard_model(source, mesh)
    whole = NamedSharding(mesh, P())

    @eqx.filter_jit
    def gathered(model, tokens):
        dynamic, static = eqx.partition(model, eqx.is_array)
        dynamic = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, whole), dynamic
        )
        return jax.vmap(eqx.combine(dynamic, static))(tokens)

    jax.block_until_ready(gathered(model, clean))
    out["gathering"] = _gathering(dump, weights)
    out["weights"] = sorted(map(list, weights))

    def error(call):
        try:
            call()
        except (ValueError, TypeError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    nine = jc.models.llama(key=jax.random.key(0), **{**SIZES, "n_heads": 9, "n_kv_heads": 3})
    out["errors"] = {
        "axis": error(lambda: jc.load(hf, mesh=mesh, model_axis="modle")),
        "heads": error(lambda: jc.models.shard_model(nine, mesh)),
        "three": error(lambda: jc.load(hf, mesh=Mesh(np.array(jax.devices()[:3]), ("model",)))),
        "gguf axis": error(lambda: jc.load(gguf, mesh=mesh, model_axis="batch")),
        "not a model": error(lambda: jc.models.shard_model({"w": jnp.ones(8)}, mesh)),
        "data parallel": error(lambda: jc.patching.sweep(model, clean, corrupt, metric, mesh=mesh)),
    }
    out["seconds"] = time.perf_counter() - started
    return out


@pytest.fixture(scope="module")
def report():
    from conftest import run_on_devices

    started = time.perf_counter()
    out = run_on_devices(__file__, 8)
    out["wall s"] = time.perf_counter() - started
    return out


def test_loaded_model_is_the_written_one(report):
    assert report["reference"]["loaded = source"] <= 1e-5, report["reference"]


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_logits_sweep_and_eap_equal_unsharded(report, mesh):
    r, scale = report["meshes"][mesh], report["reference"]["scale"]
    assert min(scale.values()) > 1e-2, scale  # real values, not zeros
    assert r["logits"] <= 1e-5 and r["sweep"] <= 1e-5 and r["eap"] <= 1e-5, r
    assert r["in-memory"] <= 1e-5 and r["gguf logits"] <= 1e-5, r
    assert r["scan"] and r["logits sharded"] == "P(None, None, 'model')", r


@pytest.mark.parametrize("mesh", MESHES)
def test_no_device_holds_a_whole_weight(report, mesh):
    r = report["meshes"][mesh]
    place = r["placement"]
    assert place["wrong"] == [] and r["gguf placement"] == [], r
    kinds = {n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in place["split"]}
    split = {"attn.W_Q", "attn.W_O", "mlp.W_gate", "mlp.W_in", "mlp.W_out", "embed.W_E",
             "unembed.W_U"}  # fmt: skip
    # 4 KV heads: replicated over 8 devices, split over 4
    assert kinds == (split if mesh == "(8,)" else split | {"attn.W_K", "attn.W_V"}), kinds
    # each device: the replicated arrays whole and 1/n of the split ones, nothing more
    assert place["device bytes"] == [place["expected"]] * 8, place
    assert place["expected"] < 0.3 * place["total bytes"], place  # 22% on (8,), 25% on (4, 2)


def test_no_program_gathers_a_split_weight(report):
    assert len(report["weights"]) >= 7, report["weights"]  # W_Q, W_O, W_K, MLP, W_E, W_U
    # only the control program, which gathers every split weight on purpose, is flagged
    assert set(report["gathering"]) == {"jit_gathered"}, report["gathering"]
    assert any("all-gather" in hit for hit in report["gathering"]["jit_gathered"])


def test_clear_errors(report):
    e = report["errors"]
    assert "model axis 'modle' is not an axis of the mesh (did you mean 'model'?)" in e["axis"]
    assert "model axis 'batch' is not an axis" in e["gguf axis"]
    assert (
        "cannot split weight 'blocks.0.attn.W_Q' (shape (9, 48, 6)) over mesh axis " in (e["heads"])
    )
    assert "dimension 0 (heads) has 9, which 8 does not divide" in e["heads"]
    assert "split every weight of this model: 1" in e["heads"]  # gcd(9, 96, 80) = 1
    assert "'embed.W_E' (shape (80, 48)) over mesh axis 'model' of 3 devices" in e["three"]
    assert "(nearest that do: 2 or 4)" in e["three"]
    assert "split every weight of this model: 1, 2, 4, 8" in e["three"]  # gcd(8, 96, 80)
    assert "none of the 1 arrays given is one: ['w']; pass a Transformer" in e["not a model"]
    assert "run without mesh=" in e["data parallel"], e["data parallel"]


def test_runs_quickly(report):
    assert report["wall s"] < 60, report["wall s"]


if __name__ == "__main__":
    print(json.dumps(main()))
