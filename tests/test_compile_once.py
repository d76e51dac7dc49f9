"""Compile once: a second identical call of every method compiles nothing (XLA compilations
counted through `jax.monitoring`), and one intervention per head is one program."""

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logit_diff, tiny

import jaxcirc as jc
from jaxcirc import methods
from jaxcirc.graph import EdgeMask, ablation_values, graph, masked_logits
from jaxcirc.methods import CausalModel
from jaxcirc.models._site import SiteRef
from jaxcirc.zoo._toy_sum import N, toy_model

# recorded around every XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT); a cache hit
# records nothing. test_the_counter_counts fails if a jax release renames it.
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Yield a list that collects the name of each function XLA compiles inside the block."""
    compiled = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            compiled.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def second_call_compiles(fn) -> list[str]:
    """Call `fn` twice; return what the second call compiled."""
    jax.block_until_ready(jax.tree_util.tree_leaves(fn()))
    with count_compiles() as compiled:
        jax.block_until_ready(jax.tree_util.tree_leaves(fn()))
    return compiled


def test_the_counter_counts():
    @jax.jit
    def fresh(x):
        return jnp.sin(x) * 3.0 + 1.0

    x3, x4 = jnp.arange(3.0), jnp.arange(4.0)
    with count_compiles() as compiled:
        fresh(x3).block_until_ready()
        fresh(x3).block_until_ready()
    assert len(compiled) == 1 and "fresh" in compiled[0]
    with count_compiles() as compiled:
        fresh(x4).block_until_ready()  # a new shape: one more program
    assert len(compiled) == 1
    # a closure jitted per call is the defect the tests below catch
    assert second_call_compiles(lambda: jax.jit(lambda x: x + 1)(jnp.ones(2))) != []


# one small model for every method: a single attention layer, so each first call compiles fast
MODEL = tiny("attn_only", n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=20, n_ctx=8)
CLEAN = jax.random.randint(jax.random.key(1), (2, 4), 0, 20)
CORRUPT = jax.random.randint(jax.random.key(2), (2, 4), 0, 20)

CASES = {
    "model.run": lambda: MODEL.run(CLEAN[0]),
    "patching.sweep": lambda: jc.patching.sweep(MODEL, CLEAN, CORRUPT, logit_diff, "z", "head"),
    "causal_trace": lambda: methods.causal_trace(
        MODEL,
        CLEAN,
        np.eye(4, dtype=bool)[[1, 2]],
        CLEAN[:, 0],
        key=jax.random.key(0),
        n_samples=1,
        kinds=("attn",),
        window=1,
    ),
    "path_patch": lambda: methods.path_patch(MODEL, CLEAN, CORRUPT, logit_diff),
    "edge_patching": lambda: methods.edge_patching(MODEL, CLEAN, CORRUPT, logit_diff),
    "eap": lambda: methods.eap(MODEL, CLEAN, CORRUPT, logit_diff),
    "eap_ig inputs": lambda: methods.eap_ig(MODEL, CLEAN, CORRUPT, logit_diff, steps=2),
    "eap_ig activations": lambda: methods.eap_ig(
        MODEL, CLEAN, CORRUPT, logit_diff, steps=2, variant="activations"
    ),
    "atp": lambda: methods.atp(MODEL, CLEAN, CORRUPT, logit_diff),
    "acdc": lambda: methods.acdc(MODEL, CLEAN, CORRUPT, threshold=0.05),
    "learned_mask": lambda: methods.learned_mask(MODEL, CLEAN, CORRUPT, steps=1),
    "circuit_lasso": lambda: methods.circuit_lasso(MODEL, CLEAN, CORRUPT, alpha=0.01),
    "faithfulness": lambda: jc.metrics.faithfulness(
        MODEL, CLEAN, CORRUPT, logit_diff, EdgeMask.ones(graph(MODEL))
    ),
    "masked_logits": lambda: masked_logits(
        MODEL, CLEAN, EdgeMask.ones(graph(MODEL)), ablation_values(MODEL, CLEAN, CORRUPT)
    ),
}
XFAIL: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n])) if n in XFAIL else n
        for n in CASES
    ],
)
def test_second_identical_call_compiles_nothing(name):
    assert second_call_compiles(CASES[name]) == []


# interchange: the zoo's planted S = a + b network and its high-level model
HIGH = CausalModel(
    ["a", "b", "A", "B", "S"],
    {"A": ["a"], "B": ["b"], "S": ["A", "B"]},
    {"A": jnp.positive, "B": jnp.positive, "S": jnp.add},
    ["a", "b"],
    "S",
)
AB = np.random.default_rng(0).integers(0, N, (2, 8, 2))  # (base, source) × pairs × (a, b)
TOKENS = [jnp.asarray(N * ab[:, 0] + ab[:, 1])[:, None] for ab in AB]
INPUTS = [{"a": ab[:, 0], "b": ab[:, 1]} for ab in AB]
SUM = dict(base_inputs=INPUTS[0], source_inputs=INPUTS[1], answer_tokens=jnp.arange(2 * N - 1))
LOC = {"site": SiteRef("resid_post", 0), "position": 0}


def test_iia_and_das_compile_once():
    model = toy_model()
    # a subspace alignment on 4 pairs: the program das scores its 4 train and 4 test pairs with
    half = lambda x: {k: v[:4] for k, v in x.items()}
    basis = jnp.eye(model.cfg.d_model)[:1]
    iia = lambda **kw: methods.iia(
        model,
        HIGH,
        {"A": {**LOC, "basis": basis}},
        TOKENS[0][:4],
        TOKENS[1][:4],
        base_inputs=half(INPUTS[0]),
        source_inputs=half(INPUTS[1]),
        answer_tokens=SUM["answer_tokens"],
        **kw,
    )
    assert second_call_compiles(iia) == []
    with count_compiles() as compiled:  # the readout position is data too: -1 and 0 share it
        iia(readout_position=0)
    assert compiled == []
    das = lambda: methods.das(
        model,
        HIGH,
        "A",
        LOC,
        *TOKENS,
        **SUM,
        steps=2,
        batch_size=4,
        test_fraction=0.5,
        key=jax.random.key(0),
    )
    assert second_call_compiles(das) == []


def test_one_program_for_every_head():
    tokens = CLEAN[0]
    z = MODEL.run(tokens)[1]["blocks.0.attn.hook_z"] + 1.0
    MODEL.run(tokens)  # the unpatched run and the eager token check, compiled already
    outputs = []
    with count_compiles() as compiled:
        for h in range(MODEL.cfg.n_heads):
            patched = jc.intervene(MODEL, {"blocks.0.attn.hook_z": jc.Patch(z, head=h)})
            outputs.append(patched.run(tokens)[1]["blocks.0.attn.hook_z"])
    assert len(compiled) == 1, compiled
    for h, out in enumerate(outputs):  # and each run patched its own head
        np.testing.assert_allclose(out[:, h], z[:, h])
        assert not np.allclose(np.delete(out, h, 1), np.delete(z, h, 1))


@eqx.filter_jit
def _read(metric, logits):  # how every method takes its metric
    return metric(logits)


def test_bound_metrics_of_any_answer_share_a_program():
    logits = jax.random.normal(jax.random.key(0), (2, 4, 20))
    metrics = [jc.metrics.bind(jc.metrics.logit_diff, answer=a, distractor=7) for a in (3, 4, 5)]
    with count_compiles() as compiled:
        for metric in metrics:
            _read(metric, logits)
    assert len(compiled) == 1, compiled


def test_one_program_for_every_scale_factor():
    tokens = CLEAN[0]
    scaled = lambda f: jc.intervene(MODEL, {"blocks.0.hook_resid_pre": jc.Scale(f)})
    scaled(0.5).run(tokens)  # the first compile, and the eager conversions
    with count_compiles() as compiled:
        for factor in (0.25, 2.0):
            scaled(factor).run(tokens)
    assert compiled == []


def test_one_program_for_every_trace_window():
    trace = lambda w: methods.causal_trace(
        MODEL, CLEAN, np.eye(4, dtype=bool)[[1, 2]], CLEAN[:, 0], key=jax.random.key(0),
        n_samples=1, kinds=("attn",), window=w,
    )  # fmt: skip
    trace(1)
    with count_compiles() as compiled:
        trace(2)
    assert compiled == [], compiled
