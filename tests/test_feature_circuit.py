"""Sparse feature circuits (Marks et al. 2025): edge effects against brute-force patches,
faithfulness against a hand-built mean ablation, the feature graph, the neuron baseline."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.graph import FeatureGraph, feature_node
from jaxcirc.methods import (
    feature_circuit,
    feature_completeness,
    feature_faithfulness,
    identity_saes,
)

SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
SEQ, D_SAE = 5, 40


def metric(model, t):
    logits = model(t)
    return logits[-1, 3] - logits[-1, 7]


@pytest.fixture(scope="module")
def setup():
    model = tiny("gpt2", seed=3)
    saes = []
    for i, site in enumerate(SITES):
        sae = jc.sae.init("relu", 32, D_SAE, key=jax.random.key(10 + i), site=site)
        bias = 0.05 * jax.random.normal(jax.random.key(i), (D_SAE,))
        saes.append(eqx.tree_at(lambda s: s.b_enc, sae, bias))
    k1, k2 = jax.random.split(jax.random.key(7))
    clean = jax.random.randint(k1, (2, SEQ), 0, 50)
    patch = jax.random.randint(k2, (2, SEQ), 0, 50)
    circuit = feature_circuit(model, saes, clean, metric, patch=patch, method="atp",
                              node_threshold=0.0, edge_threshold=0.0)  # fmt: skip
    return model, saes, clean, patch, circuit


def _spliced(model, saes, site=None, fadd=None, eadd=None):
    table = {s.site: jc.sae.Splice(s) for s in saes}
    if site is not None:
        table[site] = jc.sae.Splice(table[site].sae, feature_add=fadd, error_add=eadd)
    return jc.sae.splice(model, table)


def _code(model, sae, t):
    x = model.run(t)[1][sae.site]
    f = sae.encode(x)
    return f, x - sae.decode(f)


def test_edges_match_brute_force(setup):
    """IE(u → d) = ∇_d m · (∂d/∂u) · Δu: move u by εΔu, read d's change, weight by ∇_d m."""
    model, saes, clean, patch, circuit = setup
    edges = circuit.info["edges"]
    g, values = edges.graph, np.asarray(edges.scores.signed)
    # independent ingredients: ∇_d m at the clean run, Δu from the two runs
    grads = []
    for b in range(2):
        fn = lambda fa, ea, b=b: metric(_spliced(model, saes, SITES[1], fa, ea), clean[b])
        grads.append(jax.grad(fn, argnums=(0, 1))(jnp.zeros((SEQ, D_SAE)), jnp.zeros((SEQ, 32))))
    up = [(_code(model, saes[0], clean[b]), _code(model, saes[0], patch[b])) for b in range(2)]
    cells = np.argwhere(g.valid[:, :-1] & (np.abs(values[:, :-1]) > 1e-4))
    kinds = {(g.source_nodes[i].kind, g.source_nodes[j].kind): (i, j) for i, j in cells[::-1]}
    best = sorted(cells, key=lambda c: -abs(values[c[0], c[1]]))[:3]
    picked = list(best) + [kinds[k] for k in kinds if k != ("feature", "feature")]
    assert len(picked) >= 5
    eps = 1e-3
    for i, j in picked:
        u, d = g.source_nodes[i], g.source_nodes[j]
        ref = 0.0
        for b in range(2):
            (fc, ec), (fp, ep) = up[b]
            fa, ea = jnp.zeros((SEQ, D_SAE)), jnp.zeros((SEQ, 32))
            if u.kind == "feature":
                fa = fa.at[u.position, u.index].set(eps * (fp - fc)[u.position, u.index])
            else:
                ea = ea.at[u.position].set(eps * (ep - ec)[u.position])
            moved = _spliced(model, saes, SITES[0], fa, ea)
            f1, e1 = _code(moved, saes[1], clean[b])
            f0, e0 = _code(model, saes[1], clean[b])
            gf, ge = grads[b]
            if d.kind == "feature":
                ref += gf[d.position, d.index] * (f1 - f0)[d.position, d.index] / eps
            else:
                ref += jnp.dot(ge[d.position], (e1 - e0)[d.position]) / eps
        np.testing.assert_allclose(values[i, j], ref / 2, rtol=3e-2, atol=1e-4, err_msg=str((u, d)))


def test_metric_edges_are_last_site_node_effects(setup):
    model, saes, clean, patch, circuit = setup
    edges = circuit.info["edges"]
    g = edges.graph
    effects = circuit.info["effects"]
    for k in np.flatnonzero(g.site_index == 1)[:10]:
        n = g.source_nodes[k]
        want = effects.errors[1][n.position] if n.kind == "error" else (
            effects.features[1][n.position, n.index])  # fmt: skip
        np.testing.assert_allclose(edges.scores.signed[k, -1], want, rtol=1e-6)
    assert not np.asarray(edges.graph.valid)[g.site_index == 0, -1].any()


def _reference_faithfulness(model, saes, clean, nodes):
    """Mean ablation of everything but `nodes`, built by hand."""
    codes = [jax.vmap(lambda t, s=s: _code(model, s, t))(clean) for s in saes]

    def m_of(keep):
        total = 0.0
        for b in range(clean.shape[0]):
            table = {}
            for s, (f, e), (kf, ke) in zip(saes, codes, keep):
                table[s.site] = jc.sae.Splice(
                    s,
                    feature_keep=kf,
                    feature_value=f.mean(0),
                    error_keep=ke[:, None],
                    error_value=e.mean(0),
                )
            total += metric(jc.sae.splice(model, table), clean[b])
        return total / clean.shape[0]

    keep = [(np.zeros((SEQ, D_SAE)), np.zeros(SEQ)) for _ in saes]
    for n in nodes:
        kf, ke = keep[SITES.index(n.site)]
        if n.kind == "error":
            ke[n.position] = 1.0
        else:
            kf[n.position, n.index] = 1.0
    ones = [(np.ones((SEQ, D_SAE)), np.ones(SEQ)) for _ in saes]
    zeros = [(np.zeros((SEQ, D_SAE)), np.zeros(SEQ)) for _ in saes]
    full, empty = m_of(ones), m_of(zeros)
    return (m_of(keep) - empty) / (full - empty)


def test_faithfulness_is_mean_ablation(setup):
    model, saes, clean, patch, circuit = setup
    small = circuit.scores.top(12)
    g = circuit.graph
    got = feature_faithfulness(model, saes, clean, metric, [small, circuit.scores.top(0)])
    nodes = [g.source_nodes[k] for k in np.flatnonzero(np.asarray(small.mask))]
    assert any(n.kind == "error" for n in nodes) or len(nodes) == 12
    ref = _reference_faithfulness(model, saes, clean, nodes)
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-5)
    assert got[1] == pytest.approx(0.0, abs=1e-6)
    # the whole graph minus nothing: only nodes of zero effect are ablated
    comp = feature_completeness(model, saes, clean, metric, circuit.scores.top(0))
    assert comp == pytest.approx(0.0, abs=1e-6)


def test_neuron_circuit_is_the_identity_dictionary(setup):
    model, _, clean, patch, _ = setup
    ids = identity_saes(model, SITES)
    x = model.run(clean[0])[1][SITES[0]]
    assert jnp.all(ids[0].error(x) == 0)
    np.testing.assert_array_equal(jc.sae.splice(model, ids)(clean[0]), model(clean[0]))
    c = feature_circuit(model, ids, clean, metric, patch=patch, method="ig", steps=4,
                        node_threshold=0.0, edges=False)  # fmt: skip
    assert all(n.kind == "feature" for n in c.graph.source_nodes)
    f = feature_faithfulness(model, ids, clean, metric, c.scores.top(c.graph.n_sources))
    assert f == pytest.approx(1.0, abs=1e-5)


def test_feature_graph_names_edges_and_set_operations():
    nodes = [
        (SITES[1], 3, 12),
        (SITES[0], 1, None),
        (SITES[0], 2, 7),
        (SITES[1], 0, None),
    ]
    g = FeatureGraph.of(nodes)
    assert g.sources == ("resid_post0[1].err", "resid_post0[2].F7", "resid_post1[0].err",
                         "resid_post1[3].F12")  # fmt: skip
    assert g.targets[-1] == "logits"
    assert g.valid.tolist() == [
        [False, False, False, True, False],
        [False, False, False, True, False],
        [False, False, False, False, True],
        [False, False, False, False, True],
    ]
    with pytest.raises(ValueError, match="no edge"):
        g.edge_index("resid_post0[2].F7", "resid_post1[0].err")
    with pytest.raises(ValueError, match="F13"):
        g.index((SITES[1], 3, 13))
    assert g.index(feature_node(SITES[1], 3, 12)) == 3
    scores = jc.graph.Scores.from_effects(jnp.asarray([0.5, -2.0, 0.1, 1.0]), g)
    a, b = scores.top(2), scores.above(0.3)
    assert a.nodes() == ["resid_post0[2].F7", "resid_post1[3].F12"]
    assert (b - a).nodes() == ["resid_post0[1].err"] and len(a | b) == 3 and len(~b) == 1
    edge = jc.graph.Circuit.from_edges(g, [("resid_post0[2].F7", "resid_post1[3].F12")])
    assert edge.edges() == [("resid_post0[2].F7", "resid_post1[3].F12")]


def test_bad_input(setup):
    model, saes, clean, patch, circuit = setup
    with pytest.raises(ValueError, match="node_threshold"):
        feature_circuit(model, saes, clean, metric, node_threshold=-1.0)
    with pytest.raises(ValueError, match="'sum_position'.*sum_positions"):
        feature_circuit(model, saes, clean, metric, aggregation="sum_position")
    with pytest.raises(TypeError, match="FeatureGraph"):
        feature_faithfulness(
            model, saes, clean, metric, jc.graph.Circuit.full(jc.graph.graph(model))
        )
    with pytest.raises((ValueError, KeyError), match="resid_post"):
        identity_saes(model, ["blocks.1.hook_resid_pots"])


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from jaxcirc.io._gguf import smollm2_gguf_path

    try:
        return jc.io.load_tokenizer(smollm2_gguf_path())
    except Exception as e:  # noqa: BLE001 - the GGUF is an optional test dependency
        pytest.skip(f"SmolLM2 tokenizer not available: {e}")


@pytest.mark.parametrize("style", jc.tasks.AGREEMENT_STYLES)
def test_agreement_task(smollm2_tokenizer, style):
    tok = smollm2_tokenizer
    train = jc.tasks.agreement(tok, 12, style=style, seed=1)
    test = jc.tasks.agreement(tok, 12, style=style, split="test", seed=1)
    assert not set(train.prompts) & set(test.prompts)
    assert train.prompts == jc.tasks.agreement(tok, 12, style=style, seed=1).prompts
    assert int(train.lengths.min()) == int(train.lengths.max()) == train.clean.shape[1]
    clean, corrupt = np.asarray(train.clean), np.asarray(train.corrupt)
    differ = clean != corrupt
    assert (differ.sum(1) == 1).all()
    np.testing.assert_array_equal(np.argmax(differ, 1), train.positions["subject"])
    for row in range(12):
        noun = tok.decode([int(clean[row, train.positions["subject"][row]])]).strip()
        plural = bool(train.positions["plural"][row])
        assert noun.endswith("s") == plural, (train.prompts[row], noun)
        verbs = [tok.decode([int(x)]).strip() for x in (train.answer[row], train.distractor[row])]
        plural_form = {"is": "are", "was": "were", "has": "have"}
        singular = verbs[1] if plural else verbs[0]
        expect = plural_form.get(singular, singular[:-1])  # "likes" -> "like"
        assert verbs[0 if plural else 1] == expect, (train.prompts[row], verbs)
    with pytest.raises(ValueError, match="nounpp"):
        jc.tasks.agreement(tok, 4, style="nounp")


def test_feature_lasso_target_and_structure(setup):
    """The last site's relevance is |Â_{L,y}| of the target regression refitted here on
    independently computed codes and metric values; edges join adjacent sites only."""
    from jaxcirc.methods import feature_lasso
    from jaxcirc.methods._circuit_lasso import feature_ranking

    model, saes, clean, patch, _ = setup
    with pytest.warns(UserWarning, match="zero-variance"):
        c = feature_lasso(model, saes, clean, metric, patch=patch, n_alphas=4)
    tokens = jnp.concatenate([clean, patch])
    y = np.asarray([metric(model, t) for t in tokens])
    codes = np.stack([np.asarray(_code(model, saes[1], t)[0]) for t in tokens])
    z, active = codes[:, -1], np.flatnonzero(np.abs(codes).max((0, 1)) > 0)
    with pytest.warns(UserWarning, match="zero-variance"):
        ref = feature_ranking(z[:, active], y, loss="squared", n_alphas=4, eps=1e-2)
    g = c.graph
    for k, f in enumerate(active):
        node = feature_node(SITES[1], None, int(f))
        np.testing.assert_allclose(c.scores.values[g.index(node)], abs(ref.coef[k, 0]),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
    assert all(n.position is None for n in g.source_nodes)
    edges = c.info["edges"]
    mask = np.asarray(edges.mask)
    assert not (mask & ~edges.graph.valid).any()
    assert set(c.nodes()) == set(edges.nodes()) | {
        str(n) for n, m in zip(g.source_nodes, np.asarray(c.mask)) if m and n.site == SITES[1]
    }
    with pytest.raises(ValueError, match="at least 4"):
        feature_lasso(model, saes, clean[:1], metric, patch=patch[:1])


def test_summed_positions_edges_are_sums_of_positional_edges(setup):
    model, saes, clean, patch, circuit = setup
    summed = feature_circuit(model, saes, clean, metric, patch=patch, method="atp",
                             node_threshold=0.0, edge_threshold=0.0,
                             aggregation="sum_positions")  # fmt: skip
    pos_edges, sum_edges = circuit.info["edges"], summed.info["edges"]
    gp, gs = pos_edges.graph, sum_edges.graph
    vp, vs = np.asarray(pos_edges.scores.signed), np.asarray(sum_edges.scores.signed)
    key = lambda n: (n.site, n.kind, n.index)
    rows = {}
    for i, u in enumerate(gp.source_nodes):
        rows.setdefault(key(u), []).append(i)
    checked = 0
    for i, u in enumerate(gs.source_nodes):
        for j, d in enumerate(gs.source_nodes):
            if not gs.valid[i, j] or key(u) not in rows or key(d) not in rows:
                continue
            ref = vp[np.ix_(rows[key(u)], rows[key(d)])].sum()
            np.testing.assert_allclose(vs[i, j], ref, rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked > 100
