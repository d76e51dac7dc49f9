"""tracr ground truth: compiled RASP programs converted to jaxcirc, checked against tracr on every
input; the shipped cache (no tracr needed) reproduces tracr's stored outputs; circuits are
well formed and index jaxcirc's edge graph."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc.io as jio
from jaxcirc.graph import graph
from jaxcirc.io._tracr import _model_outputs, _node_key, node_order
from jaxcirc.models import state_dict

CASES = jio.TRACR_CASE_NAMES
REF = ("inputs", "outputs", "readout")


@functools.cache
def compiled(name):
    """tracr's compilation of a shipped case, shared by the tests that need tracr."""
    pytest.importorskip("tracr", reason="tracr not installed (pip install tracr-pypi)")
    return jio.compile_case(name)


def test_registry_has_the_benchmarks():
    assert len(CASES) >= 12
    for name in ("reverse", "sort", "hist", "frac_prevs", "pair_balance", "mean"):
        assert name in CASES


@pytest.mark.parametrize("name", CASES)
def test_cached_case_reproduces_tracr_reference(name):
    model, circuit, info = jio.tracr_case(name)
    assert model.cfg.family == "tracr" and not model.cfg.causal
    ref = info.reference
    n_out = max(len(info.output_values), 1)
    by_length = {}
    for k, row in enumerate(ref["inputs"]):
        by_length.setdefault(len(row), []).append(k)
    outputs = {}
    for ks in by_length.values():  # one quick compile per length
        batch = _model_outputs(model, info.encode([ref["inputs"][k] for k in ks]))
        outputs.update(zip(ks, batch))
    for k, (row, expected, readout) in enumerate(zip(*(ref[x] for x in REF))):
        logits = outputs[k]
        np.testing.assert_allclose(logits[1:, :n_out], readout, atol=1e-4)
        decoded = info.decode(logits[None])[0]
        if info.output == "numerical":
            np.testing.assert_allclose(decoded, expected, atol=1e-4)
        else:  # compare where tracr's argmax is not a tie (e.g. "no previous token")
            top = np.sort(np.asarray(readout), -1)
            clear = top[:, -1] - top[:, -2] > 0.5 if n_out > 1 else np.ones(len(row), bool)
            assert [d for d, c in zip(decoded, clear) if c] == [
                e for e, c in zip(expected, clear) if c
            ]
    # padded logit columns never win and hold no probability; the public call agrees
    logits = model(jnp.asarray(info.encode([ref["inputs"][0]])[0]))
    np.testing.assert_allclose(logits, outputs[0], atol=1e-5)
    if model.cfg.d_vocab > n_out:
        assert float(jax.nn.softmax(logits[1:], -1)[:, n_out:].sum()) < 1e-6


@pytest.mark.parametrize("name", CASES)
def test_cached_circuit_is_well_formed(name):
    model, circuit, info = jio.tracr_case(name)
    g = graph(model)
    assert circuit.nodes[0] == "embed" and circuit.nodes[-1] == "logits"
    assert list(circuit.nodes) == sorted(circuit.nodes, key=_node_key)
    for node in circuit.nodes[1:-1]:
        assert node in g.sources, node
    assert circuit.edges, "a circuit without edges"
    for src, dst in circuit.edges + circuit.constant_edges:
        assert node_order(src) < node_order(dst), (src, dst)
        assert src in circuit.nodes and dst.split(".")[0] in circuit.nodes
        g.edge_index(src, dst)  # raises if jaxcirc's graph has no such edge
    # every component is on a path from embed to logits through non-constant edges
    reach, frontier = {"embed"}, ["embed"]
    while frontier:
        u = frontier.pop()
        for s, d in circuit.edges:
            d = d.split(".")[0]
            if s == u and d not in reach:
                reach.add(d)
                frontier.append(d)
    assert reach == set(circuit.nodes), set(circuit.nodes) - reach
    # the read and written directions exist in the residual stream
    labels = set(info.residual_labels)
    for comp in circuit.components.values():
        assert set(comp["writes"]) <= labels
        assert all(set(v) <= labels for v in comp["reads"].values())
    assert json.loads(json.dumps(circuit.to_dict())) == circuit.to_dict()
    assert jio.TracrCircuit.from_dict(circuit.to_dict()) == circuit
    # components outside the circuit are zero heads (tracr's padding) or unused MLPs
    for layer, block in enumerate(model.blocks):
        for h in range(model.cfg.n_heads):
            if f"L{layer}H{h}" not in circuit.nodes:
                assert not np.any(np.asarray(block.attn.W_O[h]))
        if f"MLP{layer}" not in circuit.nodes:
            assert not np.any(np.asarray(block.mlp.W_out))


def test_case_info_encodes_and_samples():
    model, circuit, info = jio.tracr_case("sort_unique")
    clean, corrupt = info.sample(16, seed=3)
    assert clean.shape == corrupt.shape == (16, info.max_len + 1)
    assert (clean[:, 0] == info.token_ids[info.bos]).all()
    rows = [sorted(r) for r in info.case.pairs(4, seed=1)[0]]
    decoded = info.decode(jax.vmap(model)(jnp.asarray(info.sample(4, seed=1)[0])))
    assert decoded == rows
    with pytest.raises(ValueError, match="not in the vocabulary"):
        info.encode([[1, 9, 2]])
    with pytest.raises(ValueError, match="outside"):
        info.case.pairs(2, length=info.max_len + 1)


def test_unknown_case_names_nearest():
    with pytest.raises(ValueError, match="did you mean 'reverse'.*Cases: length, reverse"):
        jio.tracr_case("revers")


# --- with tracr: compile every case, compare with tracr on every input ----------------------


@pytest.mark.parametrize("name", CASES)
def test_conversion_matches_tracr_exhaustively(name):
    comp = compiled(name)
    model, circuit = jio.from_tracr(comp)
    report = jio.check_against_tracr(comp, model)
    info = jio.tracr_case(name)[2]
    case = info.case
    assert report["exhaustive"]
    assert report["n_inputs"] == sum(len(case.vocab) ** n for n in range(1, case.max_len + 1))
    assert report["max_abs_diff"] <= 1e-5 and report["argmax_mismatches"] == 0, report
    # the cache is what this tracr compiles now
    cached, cached_circuit, _ = jio.tracr_case(name)
    assert cached.cfg == model.cfg
    fresh, stored = state_dict(model), state_dict(cached)
    assert fresh.keys() == stored.keys()
    for k in fresh:
        np.testing.assert_array_equal(fresh[k], stored[k], err_msg=k)
    assert cached_circuit == circuit
    assert list(info.residual_labels) == [str(x) for x in comp.assembled.residual_labels]


def test_weights_circuit_agrees_with_craft_circuit():
    """Read from the weights alone (tracr's compile_rasp_to_model output), the circuit has the
    same non-constant edges; constant ones may drop where a read direction has zero weights."""
    assembled = compiled("pair_balance").assembled  # what compile_rasp_to_model returns
    model, circuit = jio.from_tracr(assembled)
    _, craft = jio.tracr_case("pair_balance")[:2]
    assert circuit.nodes == craft.nodes and set(circuit.edges) == set(craft.edges)
    assert set(circuit.constant_edges) <= set(craft.constant_edges)
    assert all(not c["rasp"] for c in circuit.components.values())
    with pytest.raises(TypeError, match="AssembledTransformerModel"):
        jio.from_tracr(model)
