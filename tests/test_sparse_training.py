"""Weight-sparse training (`jaxcirc.sparse`): exact nonzero counts and the floor after every step
against a NumPy brute force (hypothesis over shapes and schedules), dense equality at fraction 1,
the schedules' values, one compiled step for every fraction, and the bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxcirc as jc
from jaxcirc import sparse


def reference_mask(w: np.ndarray, fraction: np.float32, floor: int) -> np.ndarray:
    """Brute force: protect each row's and column's `floor` largest |w| (ties: lower index),
    then keep the largest of the rest (ties: lower flat index) up to ceil(fraction * size)."""
    rows, cols = w.shape
    a = np.abs(w)
    protected = np.zeros(w.shape, bool)
    for r in range(rows):
        for c in sorted(range(cols), key=lambda c: (-a[r, c], c))[:floor]:
            protected[r, c] = True
    for c in range(cols):
        for r in sorted(range(rows), key=lambda r: (-a[r, c], r))[:floor]:
            protected[r, c] = True
    k = int(np.clip(np.ceil(np.float32(fraction) * np.float32(w.size)), 1, w.size))
    keep = max(k, int(protected.sum()))
    rest = sorted(
        (i for i in range(w.size) if not protected.flat[i]), key=lambda i: (-a.flat[i], i)
    )
    mask = protected.copy().ravel()
    mask[rest[: keep - int(protected.sum())]] = True
    return mask.reshape(w.shape)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    depth=st.integers(1, 3),
    target=st.floats(0.01, 1.0),
    floor=st.integers(0, 4),
    start=st.floats(0.0, 0.5),
    length=st.floats(0.05, 0.5),
    kind=st.sampled_from(["linear", "exponential"]),
    seed=st.integers(0, 2**16),
)
def test_every_step_keeps_the_scheduled_count_and_the_floor(
    rows, cols, depth, target, floor, start, length, kind, seed
):
    steps = 6
    floor = min(floor, rows, cols * depth)
    schedule = sparse.l0_schedule(target, steps, start=start, end=start + length, kind=kind)
    rng = np.random.default_rng(seed)
    # a 2-D matrix, and a per-head array [heads, d_model, d_head] named W_Q (rows: d_model)
    params = {
        "mlp": {"W_in": jnp.asarray(rng.standard_normal((rows, cols * depth)), jnp.float32)},
        "attn": {"W_Q": jnp.asarray(rng.standard_normal((depth, rows, cols)), jnp.float32)},
        "b": jnp.asarray(rng.standard_normal(cols), jnp.float32),
    }
    opt = optax.chain(optax.sgd(0.3), sparse.keep_topk(schedule, floor=floor))
    state = opt.init(params)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(steps):
        grads = jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params
        )
        expected_new = {  # what the inner SGD alone would give
            "W_in": np.asarray(params["mlp"]["W_in"]) - 0.3 * np.asarray(grads["mlp"]["W_in"]),
            "W_Q": np.asarray(params["attn"]["W_Q"]) - 0.3 * np.asarray(grads["attn"]["W_Q"]),
        }
        frac = np.float32(schedule(t))
        params, state = step(params, state, grads)
        masks = sparse.masks(state)
        for name, got, axis, mask in (
            ("W_in", params["mlp"]["W_in"], 0, masks[1]),
            ("W_Q", params["attn"]["W_Q"], 1, masks[0]),
        ):
            got, mask = np.asarray(got), np.asarray(mask)
            matrix = np.moveaxis(expected_new[name], axis, 0).reshape(rows, -1)
            want = reference_mask(matrix, frac, floor)
            got_matrix = np.moveaxis(got, axis, 0).reshape(rows, -1)
            mask_matrix = np.moveaxis(mask, axis, 0).reshape(rows, -1)
            np.testing.assert_array_equal(mask_matrix, want, err_msg=f"{name} step {t}")
            # dropped entries are exactly zero; kept ones are the inner optimizer's values
            assert not got_matrix[~want].any()
            np.testing.assert_allclose(got_matrix[want], matrix[want], rtol=1e-6, atol=1e-6)
            k = int(np.clip(np.ceil(frac * np.float32(matrix.size)), 1, matrix.size))
            assert want.sum() >= k
            if want.sum() > k:  # only the floor may keep more than the schedule
                assert floor > 0
            assert (want.sum(1) >= floor).all() and (want.sum(0) >= floor).all()
        np.testing.assert_array_equal(  # biases are not sparsified
            params["b"], np.asarray(params["b"])
        )


def test_schedule_values_against_the_formula():
    T, target = 200, 0.05
    for kind in ("linear", "exponential"):
        schedule = sparse.l0_schedule(target, T, start=0.1, end=0.6, kind=kind)
        steps = np.arange(T + 20)
        got = np.asarray(jax.vmap(schedule)(steps), np.float64)
        p = np.clip((steps - 20) / 100.0, 0, 1)
        want = 1 + (target - 1) * p if kind == "linear" else target**p
        np.testing.assert_allclose(got, want, rtol=2e-6)
        assert got[0] == 1.0 and got[20] == 1.0 and got[120] == np.float32(target)
    # the count itself: ceil, with the end points exact
    assert int(sparse.nonzero_count(np.float32(0.1), 100)) == 10
    assert int(sparse.nonzero_count(np.float32(1e-6), 100)) == 1


def test_one_compiled_step_for_every_fraction():
    params = {"W": jnp.arange(1.0, 37.0).reshape(6, 6)}
    opt = sparse.keep_topk(sparse.l0_schedule(0.1, 10, start=0.0, end=0.5), floor=0)
    state = opt.init(params)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(params, state):
        updates, state = opt.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
        return optax.apply_updates(params, updates), state

    counts = []
    for _ in range(8):
        params, state = step(params, state)
        counts.append(int(np.count_nonzero(np.asarray(params["W"]))))
    assert counts[0] == 36 and counts[-1] == 4 and counts == sorted(counts, reverse=True)


def tiny_model(key=0):
    cfg = jc.models.gpt2(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=24, n_ctx=8)
    return jc.models.build(cfg, key=jax.random.key(key))


def _train(model, opt, steps=4):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, 24)

    def loss(params):
        logits = jax.vmap(eqx.combine(params, static))(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def test_masked_training_equals_dense_at_fraction_one():
    model = tiny_model()
    # SGD, not Adam: some gradients are zero up to round-off (the key bias's, as softmax is
    # shift-invariant), and Adam's normalisation inflates that round-off into lr-sized steps.
    # Equal up to float32 round-off: the two chains compile to different programs, and XLA may
    # fuse (and so round) their arithmetic differently; a zeroed entry would differ by ~1e-2
    dense, _ = _train(model, optax.sgd(0.3, momentum=0.9))
    masked, state = _train(model, optax.chain(optax.sgd(0.3, momentum=0.9), sparse.keep_topk(1.0)))
    for a, b in zip(jax.tree_util.tree_leaves(dense), jax.tree_util.tree_leaves(masked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert all(bool(m.all()) for m in sparse.masks(state))
    # the paper's chain at target 1 is the dense chain too, and sparse at a target below 1
    sparse_params, _ = _train(model, sparse.sparse_adamw(4, target=0.25, anneal=(0.0, 0.5)))
    counts = sparse.nonzeros(sparse_params)
    sizes = {
        jax.tree_util.keystr(p): x.size
        for p, x in jax.tree_util.tree_leaves_with_path(sparse_params)
        if sparse.default_include(p, x)
    }
    assert set(counts) == set(sizes) and ".embed.W_E" in counts and ".blocks[0].attn.W_Q" in counts
    for name, n in counts.items():  # at least the target; more only where the floor insists
        assert np.ceil(0.25 * sizes[name]) <= n < sizes[name], name


def test_paper_optimizer_parts():
    g = {"W": jnp.arange(12.0).reshape(3, 4), "b": jnp.full(5, -2.0)}
    out, _ = sparse.normalize_rms().update(g, sparse.normalize_rms().init(g))
    flat = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(out)])
    np.testing.assert_allclose(np.sqrt(np.mean(flat**2)), 1.0, rtol=1e-5)
    lr = sparse.warmup_linear_decay(1.0, 100, warmup=0.1)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 55, 100)], [0, 0.5, 1, 0.5, 0])


def test_bad_inputs_name_the_value_and_range():
    with pytest.raises(ValueError, match=r"target fraction.*\(0, 1\].*1\.5"):
        sparse.keep_topk(1.5)
    with pytest.raises(ValueError, match=r"target fraction.*\(0, 1\].*0\.0"):
        sparse.l0_schedule(0.0, 10)
    with pytest.raises(ValueError, match=r"ends \(end = 0\.2\) before .*start = 0\.3.*\(0\.3, 1\]"):
        sparse.l0_schedule(0.1, 10, start=0.3, end=0.2)
    with pytest.raises(ValueError, match=r"kind must be one of"):
        sparse.l0_schedule(0.1, 10, kind="cosine")
    opt = sparse.keep_topk(0.5, floor=5)
    with pytest.raises(ValueError, match=r"floor = 5 .*column of \['W'\] \[3, 4\].*0\.\.3"):
        opt.init({"W": jnp.ones((3, 4))})
    with pytest.raises(ValueError, match=r"floor"):
        sparse.keep_topk(0.5, floor=-1)
    # a user schedule that leaves (0, 1] fails when the step runs
    bad = sparse.keep_topk(lambda step: 1.0 + step, floor=0)
    params = {"W": jnp.ones((2, 2))}
    with pytest.raises(Exception, match=r"nonzero fraction 1\.0.*outside \(0, 1\]|fraction 2"):
        state = bad.init(params)
        for _ in range(2):
            jax.block_until_ready(jax.jit(bad.update)(params, state, params))
            state = state._replace(count=state.count + 1)
