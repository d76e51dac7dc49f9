"""One forward engine: the masked graph forward runs each block's own `split` form, so a model
carrying an intervention gives the same logits through the model and through the graph with
every edge kept, or the graph refuses it naming the site; path patching and edge patching are
the same computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.graph import EdgeMask, graph, masked_logits, run_graph
from jaxcirc.models import SITE_KINDS
from jaxcirc.models._site import GLOBAL_KINDS
from jaxcirc.models._transformer import forward

STREAM = {"resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"}
FAMILIES = ("gpt2", "neox", "llama")


def _present(model):
    names = set(model.run(jnp.zeros(3, jnp.int32))[1].keys())
    return [
        kind
        for kind in SITE_KINDS
        if jc.SiteRef(kind, None if kind in GLOBAL_KINDS else 1).name in names
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_kind_runs_in_the_graph_or_is_refused(family):
    """Run eagerly (no compile per intervention kind): model forward vs all-ones graph."""
    model = tiny(family, **({"n_kv_heads": 2} if family == "llama" else {}))
    tokens = jax.random.randint(jax.random.key(3), (5,), 0, 50)
    g = graph(model)
    ones = jnp.ones(g.valid.shape)
    kinds = _present(model)
    assert {"q", "k", "v", "pattern", "z", "resid_pre", "resid_post", "ln1"} <= set(kinds)
    for kind in kinds:
        ref = jc.SiteRef(kind, None if kind in GLOBAL_KINDS else 1)
        shape = forward(model, tokens)[1][ref].shape
        # scale by 0.5 plus a fixed shift: changes the answer at every site kind
        shift = 0.3 * jax.random.normal(jax.random.key(7), shape)
        intervened = jc.intervene(model, {ref: jc.Chain((jc.Scale(0.5), jc.Add(shift)))})
        direct = forward(intervened, tokens)[0]
        assert not np.allclose(direct, forward(model, tokens)[0], atol=1e-3), kind
        x0 = intervened.embed_tokens(tokens)[0]
        zeros = jnp.zeros((g.n_sources,) + x0.shape)
        if kind in STREAM:
            with pytest.raises(ValueError, match=ref.name.replace(".", r"\.")):
                run_graph(intervened, g, x0, ones, zeros)
            continue
        np.testing.assert_allclose(
            run_graph(intervened, g, x0, ones, zeros)[0], direct, atol=1e-5, err_msg=kind
        )


def test_graph_methods_refuse_stream_interventions():
    model = tiny("gpt2")
    tokens = jax.random.randint(jax.random.key(3), (2, 5), 0, 50)
    bad = jc.intervene(model, {"blocks.0.hook_resid_pre": jc.Zero()})
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_resid_pre"):
        masked_logits(bad, tokens, EdgeMask.ones(graph(model)), jnp.zeros((2, 1, 1, 1)))
    metric = lambda logits: logits[:, -1, 0].mean()  # noqa: E731
    for method in (jc.methods.eap, jc.methods.edge_patching):
        with pytest.raises(ValueError, match=r"blocks\.0\.hook_resid_pre"):
            method(bad, tokens, tokens, metric)


def test_graph_is_read_off_the_blocks():
    """Parallel blocks' MLPs read the stream before their heads write; sequential after."""
    for family, mlp_sees_heads in (("gpt2", True), ("neox", False)):
        g = graph(tiny(family))
        i, j = g.edge_index("embed", "MLP0")
        assert g.valid[g.source_index("L0H0"), j] == mlp_sees_heads
        assert str(g.target_nodes[j]) == "MLP0" and g.target_nodes[j].kind == "mlp"
    g = graph(tiny("attn_only"))
    assert not any(n.kind == "mlp" for n in g.source_nodes)


def test_path_patching_is_edge_patching():
    """Noise-direction path patching of every (sender, receiver) pair equals exact edge
    patching with the corrupted run as ablation, on a model carrying a head intervention."""
    from conftest import logit_diff

    model = tiny("gpt2", n_layers=2)
    model = jc.intervene(model, {"blocks.0.attn.hook_z": jc.Scale(0.5, head=jnp.array(1))})
    clean = jax.random.randint(jax.random.key(1), (3, 6), 0, 50)
    corrupt = jax.random.randint(jax.random.key(2), (3, 6), 0, 50)
    paths = jc.methods.path_patch(model, clean, corrupt, logit_diff, senders=None)
    edges = jc.methods.edge_patching(model, clean, corrupt, logit_diff)
    g = graph(model)
    rows = [g.source_index(s) for s in paths.senders]
    cols = [g.target_index(r) for r in paths.receivers]
    expected = np.asarray(edges.signed)[np.ix_(rows, cols)]
    got = np.asarray(paths.effects)
    assert np.isfinite(got).sum() > 50
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(got)], atol=2e-5)
    assert np.abs(expected).max() > 1e-2
