"""Scanned layers (`jaxcirc.models.scan_layers`): every result equals the unrolled model's,
per-layer interventions stay on their layer, and the program holds one block body."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logit_diff, tiny

import jaxcirc as jc
from jaxcirc.interventions import Function, Scale, Zero
from jaxcirc.models._scan import groups
from jaxcirc.models._transformer import forward
from jaxcirc.patching import sweep
from jaxcirc.patching._sweep import _segments, _stackable

TOKENS = jnp.asarray([3, 17, 4, 41, 9, 22])


def assert_same_run(model, scanned, tokens=TOKENS):
    logits, acts = model.run(tokens)
    got, got_acts = scanned.run(tokens)
    np.testing.assert_allclose(got, logits, atol=1e-5)
    assert list(got_acts.keys()) == list(acts.keys())  # same names, computation order
    for name in acts.keys():
        np.testing.assert_allclose(got_acts[name], acts[name], atol=1e-5, err_msg=name)


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_forward_and_activations_equal_unrolled(family):
    model = tiny(family, n_layers=3)
    scanned = jc.models.scan_layers(model)
    assert scanned.scan and not model.scan
    assert groups(scanned.blocks) == [range(0, 3)]
    assert_same_run(model, scanned)
    assert not jc.models.scan_layers(scanned, scan=False).scan


def test_one_block_body_whatever_the_depth():
    def counts(n_layers, scan):
        model = jc.models.scan_layers(tiny("gpt2", n_layers=n_layers), scan=scan)
        text = str(jax.make_jaxpr(lambda m, t: forward(m, t)[0])(model, TOKENS))
        return text.count("dot_general"), text.count("scan[")

    assert counts(2, True) == counts(6, True) and counts(6, True)[1] == 1
    assert counts(6, False)[0] > counts(2, False)[0]  # unrolled: grows with depth


def test_an_intervention_at_one_layer_stays_there():
    model = tiny("llama", n_layers=4)
    patched = jc.intervene(model, {"blocks.1.hook_resid_pre": Zero(position=2)})
    scanned = jc.models.scan_layers(patched)
    assert groups(scanned.blocks) == [range(0, 1), range(1, 2), range(2, 4)]
    assert_same_run(patched, scanned)
    assert not np.allclose(scanned(TOKENS), model(TOKENS), atol=1e-3)


def test_per_layer_interventions_are_stacked_each_on_its_layer():
    model = tiny("gpt2", n_layers=4)
    edits = {
        f"blocks.{i}.attn.hook_z": Scale(jnp.float32(0.5 + i), head=i % 4, position=i)
        for i in range(4)
    }
    patched = jc.intervene(model, edits)
    scanned = jc.models.scan_layers(patched)
    assert groups(scanned.blocks) == [range(0, 4)]  # one scan, the factors stacked
    assert_same_run(patched, scanned)
    # the same factors in another layer order give another result: each stays on its layer
    swapped = jc.intervene(model, {k: edits[f"blocks.{3 - i}.attn.hook_z"] for i, k in
                                   enumerate(edits)})  # fmt: skip
    assert not np.allclose(jc.models.scan_layers(swapped)(TOKENS), scanned(TOKENS), atol=1e-4)


def test_blocks_with_different_non_array_leaves_are_not_stacked():
    model = tiny("gpt2", n_layers=3)
    fns = [jnp.tanh, jnp.tanh, jnp.sin]  # static callables: one scan for the equal ones only
    patched = jc.intervene(
        model, {f"blocks.{i}.hook_resid_mid": Function(f) for i, f in enumerate(fns)}
    )
    scanned = jc.models.scan_layers(patched)
    assert groups(scanned.blocks) == [range(0, 2), range(2, 3)]
    assert_same_run(patched, scanned)


def test_resume_equals_unrolled():
    model = tiny("neox", n_layers=4)
    scanned = jc.models.scan_layers(model)
    _, acts = model.run(TOKENS)
    cache = model.kv_cache(acts)
    resume = eqx.filter_jit(lambda m, x, layer, s: m.resume(x, layer, start=s, cache=cache))
    for layer in (1, 4):
        x = acts["blocks.1.hook_resid_pre"] if layer < 4 else acts["blocks.3.hook_resid_post"]
        for start in (0, 3):
            want = model.resume(x[start:], layer, start=start, cache=cache)
            np.testing.assert_allclose(resume(scanned, x[start:], layer, start), want, atol=1e-5)
            traced = resume(scanned, x[start:], jnp.int32(layer), start)  # lax.cond in the scan
            np.testing.assert_allclose(traced, want, atol=1e-5)
    x = acts["blocks.1.hook_resid_pre"]
    np.testing.assert_allclose(
        scanned.resume(x, 1, until=3), acts["blocks.2.hook_resid_post"], atol=1e-5
    )


def test_gradients_equal_unrolled():
    model = tiny("llama", n_layers=3)
    loss = lambda m: m(TOKENS)[-1, 5]
    want = jax.grad(loss)(model)
    got = jax.grad(loss)(jc.models.scan_layers(model))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_resid_pre_sweep_equals_unrolled(family, tokens):
    model = tiny(family, n_layers=3)
    clean, corrupt = tokens
    want = sweep(model, clean, corrupt, logit_diff)
    got = sweep(jc.models.scan_layers(model), clean, corrupt, logit_diff)
    assert got.shape == (3, clean.shape[1])
    np.testing.assert_allclose(got, want, atol=1e-5)


# every unit kind (per position, per head, per position and head, the pattern's head and
# position), residual, attention, MLP and grouped-query key/value sites
SITES_PER = [("resid_mid", "position"), ("mlp_out", "position"), ("z", "position_head"),
             ("k", "head"), ("v", "position_head"), ("pattern", "head_position")]  # fmt: skip


@pytest.mark.parametrize(("site", "per"), SITES_PER)
def test_scanned_sweep_engine_equals_unrolled_engine_for_every_unit_kind(site, per, tokens):
    """The scanned model's sweep runs its own engine (one block body scanned over the layers,
    every run at once); the unrolled model's runs block by block. Both, at every site and
    unit kind, with position buckets and with the units in several chunks; 4 layers make
    segments of 1, 2 and 1 layers (`_segments`)."""
    model = tiny("llama", n_layers=4, n_kv_heads=2)  # grouped-query keys and values
    clean, corrupt = tokens
    scanned = jc.models.scan_layers(model)
    assert _stackable(scanned) and not _stackable(model)
    assert _segments(4) == [0, 1, 3, 4]
    for kw in ({"chunk_size": 2, "buckets": 3},):
        want = sweep(model, clean, corrupt, logit_diff, site=site, per=per, **kw)
        got = sweep(scanned, clean, corrupt, logit_diff, site=site, per=per, **kw)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{site} per {per} {kw}")


def test_sweep_of_a_model_carrying_an_intervention(tokens):
    """Interventions inside blocks: the sweep's unrolled engine, on the scanned forward."""
    model = jc.intervene(tiny("gpt2", n_layers=3), {"blocks.1.attn.hook_z": Zero(head=2)})
    clean, corrupt = tokens
    want = sweep(model, clean, corrupt, logit_diff)
    got = sweep(jc.models.scan_layers(model), clean, corrupt, logit_diff)
    np.testing.assert_allclose(got, want, atol=1e-5)


# the edge graph's engine (`jaxcirc.graph.run_graph`) scans the same runs of blocks


def _graph_run(model, tokens, weights_seed=0, start=0):
    g = jc.graph.graph(model)
    x0 = model.embed_tokens(tokens)[0]
    weights = jax.random.uniform(jax.random.key(weights_seed), (g.n_sources, g.n_targets))
    ablated = jax.random.normal(jax.random.key(9), (g.n_sources, tokens.shape[0], x0.shape[1]))
    probe = jax.random.normal(jax.random.key(8), (g.n_targets, tokens.shape[0], x0.shape[1]))
    run = lambda m, p: jc.graph.run_graph(m, g, x0, weights, ablated, p, start=start)
    return run, probe


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox", "attn_only"])
def test_masked_run_and_its_gradient_equal_unrolled(family):
    model = tiny(family, n_layers=4)
    scanned = jc.models.scan_layers(model)
    run, probe = _graph_run(model, TOKENS)
    (want, want_outs), (got, got_outs) = run(model, probe), run(scanned, probe)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_outs, want_outs, atol=1e-5)
    grad = lambda m: jax.grad(lambda p: run(m, p)[0][-1].sum())(probe)
    np.testing.assert_allclose(grad(scanned), grad(model), atol=1e-4)
    text = str(jax.make_jaxpr(lambda m: run(m, probe))(scanned))
    assert text.count("scan[") == 1  # four blocks, one body


def test_masked_run_resumed_at_a_traced_layer_equals_unrolled():
    model = tiny("llama", n_layers=4)
    g = jc.graph.graph(model)
    x0 = model.embed_tokens(TOKENS)[0]
    outs, biases = jc.graph.graph_states(model, g, x0)
    got_outs, got_biases = jc.graph.graph_states(jc.models.scan_layers(model), g, x0)
    np.testing.assert_allclose(got_outs, outs, atol=1e-5)
    np.testing.assert_allclose(got_biases, biases, atol=1e-5)
    weights = jnp.ones((g.n_sources, g.n_targets)).at[3].set(0.0)  # one head's edges ablated
    ablated = jnp.zeros_like(outs)

    @jax.jit
    def resumed(m, layer):
        return jc.graph.run_graph(m, g, x0, weights, ablated, start=layer, state=(outs, biases[0]))

    for layer in (0, 2):
        want = resumed(model, layer)[0]
        np.testing.assert_allclose(resumed(jc.models.scan_layers(model), layer)[0], want, atol=1e-5)


def test_edge_methods_on_a_scanned_model_equal_unrolled(tokens):
    model = jc.intervene(tiny("gpt2", n_layers=3), {"blocks.1.attn.hook_z": Scale(0.5, head=1)})
    clean, corrupt = tokens
    scanned = jc.models.scan_layers(model)
    for score in (jc.methods.eap, jc.methods.edge_patching):
        want = score(model, clean, corrupt, logit_diff).values
        np.testing.assert_allclose(score(scanned, clean, corrupt, logit_diff).values, want,
                                   atol=1e-5, err_msg=score.__name__)  # fmt: skip
    circuit = jc.methods.eap(model, clean, corrupt, logit_diff).top(10)
    want = jc.metrics.faithfulness(model, clean, corrupt, logit_diff, circuit)
    got = jc.metrics.faithfulness(scanned, clean, corrupt, logit_diff, circuit)
    np.testing.assert_allclose(got, want, atol=1e-5)
