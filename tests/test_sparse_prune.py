"""Task-circuit pruning (Gao et al. 2025, arXiv 2511.13653): the masked forward against the
plain model and a closed-form all-ablated reference, the STE gradient against its formula,
edge counts against a NumPy loop, the bisection against a scan, and a pruned induction circuit
validated both ways."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcirc import models, zoo
from jaxcirc.sparse import _prune as P
from jaxcirc.tasks import induction

SMALL = dict(d_vocab=40, d_model=16, n_heads=2, d_head=4, d_mlp=24, n_ctx=16, act_topk=0.0)


def _model(seed=0):
    cfg = models.weight_sparse(**SMALL)
    model = models.build(cfg, key=jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))

    def perturb(x):  # random weights, about a third of them exactly zero
        if not eqx.is_inexact_array(x):
            return x
        k1, k2 = jax.random.split(next(keys))
        y = x + 0.3 * jax.random.normal(k1, x.shape)
        return jnp.where(jax.random.uniform(k2, x.shape) < 0.3, 0.0, y) if x.ndim >= 2 else y

    return jax.tree_util.tree_map(perturb, model)


def _tokens(model, n=6, seq=10, seed=0):
    return jax.random.randint(jax.random.key(seed), (n, seq), 0, model.cfg.d_vocab)


def test_node_means_match_numpy():
    model = _model()
    toks = _tokens(model)
    means = P.node_means(model, toks, batch_size=4)
    acts = jax.vmap(model.run)(toks)[1]
    assert set(means) == set(P.locations(model))
    for loc, site in P.locations(model).items():
        ref = np.asarray(acts[site], np.float64).mean((0, 1))
        np.testing.assert_allclose(means[loc], ref, rtol=1e-5, atol=1e-6)


def test_masked_forward_all_kept_and_all_ablated():
    model = _model()
    toks = _tokens(model)
    means = P.node_means(model, toks)
    ones = {n: jnp.ones(v.shape) for n, v in means.items()}
    np.testing.assert_allclose(
        jax.vmap(P.masked_model(model, means, ones))(toks), jax.vmap(model)(toks), atol=1e-5
    )
    zeros = {n: jnp.zeros(v.shape) for n, v in means.items()}
    got = jax.vmap(P.masked_model(model, means, zeros))(toks)
    # all ablated: the stream is embeddings + every layer's mean attn_out and mlp_out
    outs = sum(np.asarray(means[f"L{i}.{w}"]) for i in range(2) for w in ("attn_out", "mlp_out"))
    for row, t in enumerate(np.asarray(toks)):
        x = np.asarray(model.embed.W_E)[t] + np.asarray(model.pos_embed.W_pos)[: len(t)] + outs
        x = x / np.sqrt((x**2).mean(-1, keepdims=True) + model.cfg.norm_eps)
        ref = (x * np.asarray(model.ln_final.w)) @ np.asarray(model.unembed.W_U)
        np.testing.assert_allclose(got[row], ref, rtol=1e-4, atol=1e-4)


def test_heaviside_ste_gradient():
    tau = jnp.array([-0.9, -0.2, 0.0, 0.3, 1.0])
    up = jnp.array([0.5, -1.0, 2.0, 0.7, -0.3])
    for temp in (1.0, 0.3):
        assert np.array_equal(P.heaviside_ste(tau, temp), (tau >= 0).astype(float))
        grad = jax.grad(lambda t, temp=temp: (P.heaviside_ste(t, temp) * up).sum())(tau)
        s = 1 / (1 + np.exp(-np.asarray(tau) / temp))
        np.testing.assert_allclose(grad, s * (1 - s) / temp * np.asarray(up), rtol=1e-5)


def _np_edges(model, masks):
    total = 0
    for i, block in enumerate(model.blocks):
        m = {k.split(".")[1]: np.asarray(v, bool) for k, v in masks.items() if k[1] == str(i)}
        a = block.attn
        for loc, w in (("q", a.W_Q), ("k", a.W_K), ("v", a.W_V)):
            w = np.asarray(w)
            for h, c, d in np.ndindex(w.shape):
                total += bool(w[h, c, d] != 0 and m["attn_in"][c] and m[loc][h, d])
        w = np.asarray(a.W_O)
        for h, d, c in np.ndindex(w.shape):
            total += bool(w[h, d, c] != 0 and m["v"][h, d] and m["attn_out"][c])
        for src, dst, w in (("mlp_in", "mlp_neuron", block.mlp.W_in),
                            ("mlp_neuron", "mlp_out", block.mlp.W_out)):  # fmt: skip
            w = np.asarray(w)
            for r, c in np.ndindex(w.shape):
                total += bool(w[r, c] != 0 and m[src][r] and m[dst][c])
    return total


def test_circuit_edges_match_numpy_loop():
    model = _model()
    means = P.node_means(model, _tokens(model))
    rng = np.random.default_rng(0)
    for p in (0.3, 0.7):
        masks = {n: rng.random(v.shape) < p for n, v in means.items()}
        n = P.circuit_edges(model, masks)
        assert n == _np_edges(model, masks) > 0
        assert len(P.edges(model, masks)) == n


def test_smallest_k_matches_scan():
    rng = np.random.default_rng(1)
    for _ in range(20):
        losses = np.sort(rng.random(rng.integers(1, 30)))[::-1]
        target = rng.uniform(losses[-1], 1.0)
        ref = min(k for k in range(len(losses)) if losses[k] <= target)
        assert P.smallest_k(lambda k, losses=losses: losses[k], len(losses) - 1, target) == ref


@pytest.fixture(scope="module")
def pruned():
    model = zoo.induction_model()
    task = induction(64, half_len=8, d_vocab=64)
    means = P.node_means(model, jax.random.randint(jax.random.key(1), (32, 16), 0, 64))
    return model, task, means, P.prune(model, task, means, steps=200, progress=False)


def test_prune_reaches_target_validated_both_ways(pruned, tmp_path):
    model, task, means, circuit = pruned
    assert circuit.loss <= 0.15 and circuit.accuracy > 0.9
    assert 0 < circuit.n_nodes < sum(v.size for v in means.values())
    assert circuit.n_nodes == sum(int(m.sum()) for m in circuit.masks.values())
    assert circuit.n_edges == P.circuit_edges(model, circuit.masks)
    assert circuit.losses.shape == (200,)
    complement = P.evaluate(model, task, circuit, means)
    assert complement["loss"] <= 0.15
    necessity = P.evaluate(model, task, circuit, means, ablate="circuit")
    assert necessity["accuracy"] < 0.7
    # the bisection's k is the smallest: the top k - 1 nodes by τ miss the target
    locs = list(P.locations(model))
    flat = P._flat(circuit.tau, locs)
    rank = jnp.zeros(flat.size, int).at[jnp.argsort(-flat)].set(jnp.arange(flat.size))
    fewer = P._unflat(rank < circuit.n_nodes - 1, circuit.tau, locs)
    data = P._last(task)
    assert float(P._evaluate(model, means, fewer, *data, True)[0]) > 0.15
    P.plot_circuit(model, circuit, tmp_path / "circuit.png")
    assert (tmp_path / "circuit.png").stat().st_size > 0


def test_compile_once_for_new_masks_and_tau():
    model = _model()
    toks = _tokens(model)
    means = P.node_means(model, toks)
    forward = eqx.filter_jit(
        eqx.debug.assert_max_traces(
            lambda model, means, masks, toks: jax.vmap(P.masked_model(model, means, masks))(toks),
            max_traces=1,
        )
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        forward(model, means, {n: jnp.asarray(rng.random(v.shape) < 0.5) for n, v in means.items()},
                toks)  # fmt: skip
    task = induction(8, half_len=4, d_vocab=40)
    data = P._last(task)
    train = eqx.filter_jit(eqx.debug.assert_max_traces(P._train, max_traces=1))
    hyper = tuple(jnp.float32(x) for x in (3e-3, 1e-4, 1.0))
    for seed in range(2):
        tau = {n: jax.random.normal(jax.random.key(seed), v.shape) for n, v in means.items()}
        train(model, means, tau, data, jax.random.key(seed), hyper, 3, 4)


def test_bad_inputs():
    model = _model()
    means = P.node_means(model, _tokens(model))
    task = induction(8, half_len=4, d_vocab=40)
    with pytest.raises(ValueError, match="target_loss"):
        P.prune(model, task, means, target_loss=0.0, progress=False)
    big = induction(8, half_len=4, d_vocab=64)
    big = eqx.tree_at(lambda t: t.clean, big, big.clean % 40)
    big = eqx.tree_at(lambda t: t.answer, big, big.answer.at[0].set(50))
    with pytest.raises(ValueError, match="answer id 50 .*d_vocab = 40"):
        P.prune(model, big, means, progress=False)
    partial = {n: v for n, v in means.items() if n != "L1.mlp_neuron"}
    with pytest.raises(ValueError, match="no location 'L1.mlp_neuron'.*L0.attn_in"):
        P.prune(model, task, partial, progress=False)
    bad = {**{n: jnp.ones(v.shape) for n, v in means.items()}, "L0.mlp_neurons": jnp.ones(3)}
    with pytest.raises(ValueError, match="'L0.mlp_neurons'.*did you mean 'L0.mlp_neuron'"):
        P.circuit_edges(model, bad)


def test_the_fitted_shift_is_a_bias_between_the_two_answer_tokens():
    """A model that tells the contexts apart but prefers token B in both (the corpus's `)` over
    `))`) is wrong on half the rows raw; the fitted bias between the two tokens puts it right
    on all of them. A task of more than two tokens gets no bias."""
    from jaxcirc.sparse._prune import _fit, _scores, _side

    a_id, b_id = 7, 3  # o = +1 where the answer is the smaller id (3)
    answer = jnp.array([b_id, a_id] * 8)
    distractor = jnp.array([a_id, b_id] * 8)
    side = _side(answer, distractor)
    np.testing.assert_array_equal(np.asarray(side), [1.0, -1.0] * 8)
    # logit(B) − logit(A) = 3 − 2·[context 2]: right in context 1 (answer B), wrong in context 2
    delta = jnp.where(answer == b_id, 3.0, -1.0) + 0.1 * jnp.sin(jnp.arange(16.0))
    raw_loss, raw_acc = _scores(delta)
    assert float(raw_acc) == 0.5
    scale, shift = _fit(delta, side)
    loss, acc = _scores(delta, scale, shift, side)
    assert float(acc) == 1.0 and float(loss) < 0.1 < float(raw_loss)
    assert float(shift) < 0  # the bias favours the larger id (token A), against the prior
    # margins that say nothing: never worse than log 2 (a = b = 0)
    noise = 40.0 * jnp.sin(7.0 * jnp.arange(16.0))
    worst = _scores(noise, *_fit(noise, side), side)[0]
    assert float(worst) <= np.log(2.0) + 1e-6
    # three tokens: no bias, the scale alone
    three = _side(jnp.array([1, 2, 5, 1]), jnp.array([2, 1, 1, 5]))
    np.testing.assert_array_equal(np.asarray(three), 0.0)


def test_task_scores_and_calibrate_refuse_non_finite_margins():
    from jaxcirc import sparse
    from jaxcirc._finite import NonFiniteError

    model = zoo.induction_model()
    task = induction(8, half_len=4, d_vocab=64)
    assert np.isfinite(sparse.task_scores(model, task, pairs=True)["pair_accuracy"])
    W = np.asarray(model.unembed.W_U).copy()
    W[:, int(task.answer[2])] = np.nan  # the answer's logit: NaN on every row that reads it
    broken = eqx.tree_at(lambda m: m.unembed.W_U, model, jnp.asarray(W))
    with pytest.raises(NonFiniteError, match="margin on the clean prompts"):
        sparse.task_scores(broken, task)
    with pytest.raises(NonFiniteError, match="margin on the clean prompts"):
        sparse.calibrate(broken, task)
