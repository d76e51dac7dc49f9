"""Edge scores: exact edge patching, EAP, EAP-IG and AtP against brute-force loops."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logit_diff, tiny

import jaxcirc as jc
from jaxcirc.graph import EdgeMask, ablation_values, graph, masked_logits, run_graph
from jaxcirc.methods import _edge_attribution
from jaxcirc.methods._edge_attribution import atp, eap, eap_ig, edge_patching


@pytest.fixture(scope="module")
def data():
    clean = jax.random.randint(jax.random.key(1), (3, 5), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (3, 5), 0, 50)
    return clean, corrupt


@pytest.fixture(scope="module")
def model():
    return tiny("gpt2", n_layers=2)


@pytest.fixture(scope="module")
def linear_model():
    """Norm-free, attention-only, W_Q = W_K = 0: uniform attention, so every path is linear."""
    m = tiny("attn_only", n_layers=2, norm="none")
    for i in range(2):
        m = eqx.tree_at(
            lambda m: (m.blocks[i].attn.W_Q, m.blocks[i].attn.W_K),
            m,
            (jnp.zeros_like(m.blocks[i].attn.W_Q), jnp.zeros_like(m.blocks[i].attn.W_K)),
        )
    return m


def brute_edge_patching(model, clean, corrupt, metric):
    g = graph(model)
    ablated = ablation_values(model, clean, corrupt, g=g)
    base = metric(masked_logits(model, clean, EdgeMask.ones(g), ablated))
    out = np.zeros(g.valid.shape)
    for i, j in zip(*np.nonzero(g.valid)):
        w = jnp.ones(g.valid.shape).at[i, j].set(0.0)
        out[i, j] = metric(masked_logits(model, clean, EdgeMask(w, g), ablated)) - base
    return out


def brute_eap_ig(model, clean, corrupt, metric, steps):
    """A Python loop over targets and steps: the metric's gradient in a probe added to one
    target's input, at interpolated embeddings, averaged, dotted with the clean difference."""
    g = graph(model)
    ablated = ablation_values(model, clean, corrupt, g=g)
    e_clean = jax.vmap(lambda t: model.embed_tokens(t)[0])(clean)
    e_corrupt = jax.vmap(lambda t: model.embed_tokens(t)[0])(corrupt)

    scores = np.zeros(g.valid.shape)
    clean_outs = jax.vmap(lambda x, a: run_graph(model, g, x, jnp.ones(g.valid.shape), a)[1])(
        e_clean, ablated
    )
    delta = ablated - clean_outs

    @jax.jit  # one compiled gradient; the target j is an argument, the loop stays in Python
    def grad_probe(p, x0, j):
        def m_probe(p):
            def one(x, a, p_):
                probe = jnp.zeros((g.n_targets,) + x.shape).at[j].set(p_)
                return run_graph(model, g, x, jnp.ones(g.valid.shape), a, probe)[0]

            return metric(jax.vmap(one)(x0, ablated, p))

        return jax.grad(m_probe)(p)

    for j in range(g.n_targets):
        total = 0.0
        for k in range(1, steps + 1):
            x0 = e_corrupt + k / steps * (e_clean - e_corrupt)
            total = total + grad_probe(jnp.zeros(x0.shape), x0, j)
        grad_j = total / steps
        for i in range(g.n_sources):
            if g.valid[i, j]:
                scores[i, j] = float(jnp.sum(delta[:, i] * grad_j))
    return scores


def test_edge_patching_is_the_brute_force_loop(model, data):
    got = edge_patching(model, *data, logit_diff, chunk_size=7)
    np.testing.assert_allclose(got.signed, brute_edge_patching(model, *data, logit_diff), atol=1e-5)


def test_eap_is_minus_the_weight_derivative(model, data):
    clean, corrupt = data
    g = graph(model)
    ablated = ablation_values(model, clean, corrupt, g=g)
    dm_dw = jax.grad(lambda w: logit_diff(masked_logits(model, clean, EdgeMask(w, g), ablated)))(
        jnp.ones(g.valid.shape)
    )
    np.testing.assert_allclose(
        eap(model, clean, corrupt, logit_diff).signed, -dm_dw * g.valid, atol=1e-5
    )


def test_eap_ig_inputs_is_the_brute_force_loop(model, data):
    got = eap_ig(model, *data, logit_diff, steps=3)
    np.testing.assert_allclose(got.signed, brute_eap_ig(model, *data, logit_diff, 3), atol=1e-5)


def test_linear_limit(linear_model, data):
    """With only linear paths, EAP, both EAP-IGs and exact patching agree exactly."""
    exact = edge_patching(linear_model, *data, logit_diff).signed
    assert np.abs(exact).max() > 1e-3  # the edges matter
    for scores in (
        eap(linear_model, *data, logit_diff),
        eap_ig(linear_model, *data, logit_diff, steps=4),
        eap_ig(linear_model, *data, logit_diff, steps=2, variant="activations"),
    ):
        np.testing.assert_allclose(scores.signed, exact, atol=1e-5)


def test_eap_ig_converges(model, data):
    """One step is EAP; with many steps the per-edge Riemann sums settle."""
    clean, corrupt = data
    np.testing.assert_allclose(
        eap_ig(model, clean, corrupt, logit_diff, steps=1).signed,
        eap(model, clean, corrupt, logit_diff).signed,
        atol=1e-6,
    )
    for variant in ("inputs", "activations"):
        s = [
            eap_ig(model, clean, corrupt, logit_diff, steps=n, variant=variant).signed
            for n in (8, 64, 128)
        ]
        assert float(jnp.abs(s[2] - s[1]).max()) < float(jnp.abs(s[2] - s[0]).max())
        assert float(jnp.abs(s[2] - s[1]).max()) < 2e-2 * float(jnp.abs(s[2]).max())


def test_eap_ig_is_closer_to_exact_than_eap(model, data):
    exact = edge_patching(model, *data, logit_diff).flat()
    err = [
        float(jnp.abs(s.flat() - exact).mean())
        for s in (eap(model, *data, logit_diff), eap_ig(model, *data, logit_diff, steps=16))
    ]
    assert err[1] < err[0]


def test_atp_sums_edges_and_matches_node_patching_to_first_order(linear_model, data):
    nodes = atp(linear_model, *data, logit_diff)
    edges = eap(linear_model, *data, logit_diff)
    np.testing.assert_allclose(nodes.signed, edges.signed.sum(1), atol=1e-6)
    clean, corrupt = data
    g = nodes.graph
    ablated = ablation_values(linear_model, clean, corrupt, g=g)
    base = logit_diff(masked_logits(linear_model, clean, EdgeMask.ones(g), ablated))
    i = g.source_index("L0H1")
    mask = jc.graph.NodeMask(jnp.ones(g.n_sources).at[i].set(0.0), g)
    exact = logit_diff(masked_logits(linear_model, clean, mask, ablated)) - base
    assert float(nodes.signed[i]) == pytest.approx(float(exact), abs=1e-5)


def test_compiles_once(model, data):
    clean, corrupt = data
    counted = eqx.filter_jit(
        eqx.debug.assert_max_traces(_edge_attribution._eap_ig.__wrapped__, max_traces=1)
    )
    g = graph(model)
    for seed in range(3):
        c = jax.random.randint(jax.random.key(seed), clean.shape, 0, 50)
        ablated = ablation_values(model, c, corrupt, g=g)
        counted(model, g, c, ablated, logit_diff, 2, "inputs")


def test_bad_input(model, data):
    clean, corrupt = data
    with pytest.raises(ValueError, match="unknown variant 'input'"):
        eap_ig(model, clean, corrupt, logit_diff, variant="input")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        eap_ig(model, clean, corrupt, logit_diff, steps=0)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        eap(model, clean[0], corrupt, logit_diff)
    with pytest.raises(ValueError, match="expected \\[batch, 5\\]"):
        eap(model, clean, corrupt[:, :4], logit_diff)
    with pytest.raises(ValueError, match="outside"):
        eap(model, clean.at[0, 0].set(99), corrupt, logit_diff)


def test_methods_take_a_task(model, data):
    """`method(model, task)`: the task's tokens and metric, same scores as the long form."""
    from jaxcirc.methods import acdc
    from jaxcirc.tasks import from_strings  # noqa: F401 - the Task type lives beside it
    from jaxcirc.tasks._task import Task

    clean, corrupt = data
    task = Task(clean, corrupt, jnp.full(3, 3), jnp.full(3, 7), logit_diff, {}, (), (), ())
    np.testing.assert_allclose(
        eap(model, task).values, eap(model, clean, corrupt, logit_diff).values, atol=1e-6
    )
    assert acdc(model, task, threshold=1e-2).info["n_tested"] > 0
    with pytest.raises(TypeError, match="give a metric"):
        eap(model, clean, corrupt)
    with pytest.raises(TypeError, match="not both"):
        eap(model, task, corrupt)
