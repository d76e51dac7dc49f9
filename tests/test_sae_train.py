"""SAE training: planted-dictionary recovery, stacked = one by one, kill and resume, the
activation buffer, checkpoints, metrics against direct computations, and bad inputs."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.sae._train import _groups

D_IN, ATOMS, ACTIVE = 16, 24, 3


def planted(seed=0):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((ATOMS, D_IN)).astype(np.float32)
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def planted_batches(atoms, batch, steps, seed=1):
    """Each row: `ACTIVE` atoms chosen at random with coefficients in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = np.argsort(rng.random((batch, ATOMS)), axis=1)[:, :ACTIVE]
        codes = np.zeros((batch, ATOMS), np.float32)
        values = rng.uniform(0.5, 1.5, (batch, ACTIVE)).astype(np.float32)
        np.put_along_axis(codes, pick, values, 1)
        yield codes @ atoms


def max_cosine(atoms, sae):
    """Mean over the planted atoms of the best cosine to a decoder row."""
    W = np.asarray(sae.W_dec)
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return float((atoms @ W.T).max(1).mean())


def test_planted_dictionary_recovered():
    """Each architecture, trained at the planted sparsity (k = 3 active atoms of 24 in 16
    dimensions), finds the atoms: mean max cosine >= 0.9 (issue 14)."""
    atoms = planted()
    keys = jax.random.split(jax.random.key(0), 4)
    saes = [
        jc.sae.init("topk", D_IN, 48, k=ACTIVE, key=keys[0]),
        jc.sae.init("batchtopk", D_IN, 48, k=ACTIVE, key=keys[1]),
        jc.sae.init("relu", D_IN, 48, key=keys[2]),
        jc.sae.init("jumprelu", D_IN, 48, key=keys[3], threshold=0.5, bandwidth=0.1),
    ]
    config = jc.sae.TrainConfig(lr=PLANTED_LR, warmup_steps=20, dead_tokens=256 * 50,
                                log_every=50)  # fmt: skip
    steps = PLANTED_STEPS
    res = jc.sae.train(saes, planted_batches(atoms, 256, steps), steps=steps,
                       sparsity=[0, 0, RELU_L1, JUMP_L0], config=config)  # fmt: skip
    scores = [max_cosine(atoms, s) for s in res.saes]
    assert min(scores) >= 0.9, scores
    x = next(planted_batches(atoms, 2048, 1, seed=7))
    for sae in res.saes:
        m = jc.sae.reconstruction(sae, x)
        assert 0.5 * ACTIVE <= m["l0"] <= 3 * ACTIVE, (sae.architecture, m)
        assert m["fvu"] < 0.3, (sae.architecture, m)
    # BatchTopK's inference threshold keeps about k per example
    assert abs(jc.sae.reconstruction(res.saes[1], x)["l0"] - ACTIVE) < 1.5
    assert len(res.history) == steps // 50 and len(res.dead_fraction) == 4


RELU_L1, JUMP_L0, PLANTED_LR, PLANTED_STEPS = 2.0, 1.0, 1e-2, 500


def _four():
    keys = jax.random.split(jax.random.key(3), 4)
    return [
        jc.sae.init("topk", 8, 16, k=2, key=keys[0], site="a"),
        jc.sae.init("topk", 8, 16, k=2, key=keys[1], site="b"),
        jc.sae.init("relu", 8, 24, key=keys[2], site="a"),
        jc.sae.init("relu", 8, 24, key=keys[3], site="a"),
    ]


def _stream(steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        a = rng.standard_normal((64, 8)).astype(np.float32)
        yield {"a": a, "b": np.tanh(a) + 0.1 * rng.standard_normal((64, 8)).astype(np.float32)}


@pytest.fixture
def retrace():
    """For tests that switch the training step's form: `retrace()` drops the cached compiled
    step (`_compiled_step` is an `lru_cache`), and it is dropped again after the test."""
    clear = jc.sae._train._compiled_step.cache_clear
    yield clear
    clear()


@pytest.mark.parametrize("vmap", [False, True])
def test_four_at_once_equal_four_one_after_another(monkeypatch, retrace, vmap):
    """Two TopK SAEs at two sites and two ReLU SAEs with different L1 coefficients (an array),
    trained in one program, equal the same four trained separately: stacked by shape and
    vmapped (accelerators' form, whose TopK encoder gradient is a dense product) and each
    unbatched (CPU's form)."""
    monkeypatch.setattr(jc.sae._train, "_vmap_stacks", lambda: vmap)
    retrace()
    saes = _four()
    assert _groups(saes) == [[0, 1], [2, 3]]
    groups = [[0, 1], [2, 3]] if vmap else [[0], [1], [2], [3]]
    assert jc.sae._train.Trainer(saes, steps=20).groups == groups
    sparsity = [0, 0, 0.5, 2.0]
    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=3, dead_tokens=128, log_every=5)
    together = jc.sae.train(saes, _stream(20), steps=20, sparsity=sparsity, config=config)
    for i, sae in enumerate(saes):
        alone = jc.sae.train(sae, _stream(20), steps=20, sparsity=sparsity[i], config=config)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            np.testing.assert_allclose(
                getattr(together.saes[i], name), getattr(alone.saes[0], name),
                rtol=1e-5, atol=1e-6, err_msg=f"SAE {i} {name}",
            )  # fmt: skip
        assert together.saes[i].site == sae.site
        assert together.dead_fraction[i] == alone.dead_fraction[0]
    # different L1 coefficients gave different SAEs: the array really reached each member
    assert not np.allclose(together.saes[2].W_enc, together.saes[3].W_enc)


@pytest.mark.parametrize("center", [True, False])
def test_sparse_topk_step_equals_dense_step(monkeypatch, retrace, center):
    """TopK's sparse training step (k active decoder rows, one dense encoder-gradient product,
    `b_dec`'s gradient through the centring without per-row input gradients) trains the same
    SAE as the dense form, AuxK on dead latents included."""
    sae = jc.sae.init("topk", 8, 32, k=3, key=jax.random.key(2), center=center)
    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=2, dead_tokens=64, log_every=1)
    runs = {}
    for sparse in (True, False):
        monkeypatch.setattr(jc.sae._train, "_SPARSE_TOPK", sparse)
        retrace()
        stream = (b["b"] for b in _stream(12, seed=3))
        runs[sparse] = jc.sae.train(sae, stream, steps=12, config=config)
    assert max(h["saes"][0]["aux"] for h in runs[True].history) > 0  # AuxK on dead latents
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(
            getattr(runs[True].saes[0], name), getattr(runs[False].saes[0], name),
            rtol=1e-4, atol=1e-6, err_msg=name,
        )  # fmt: skip
    assert not np.allclose(runs[True].saes[0].b_dec, sae.b_dec)  # b_dec did train


def test_checkpoint_state_is_sae_by_sae_however_stacked(monkeypatch, retrace):
    """A run's checkpointed state lists each SAE's arrays in order whether the SAEs are stacked
    (accelerators) or not (CPU), so a checkpoint resumes on either."""
    saes = _four()
    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=3, dead_tokens=128, log_every=5)
    trainers = {}
    for vmap in (True, False):
        monkeypatch.setattr(jc.sae._train, "_vmap_stacks", lambda vmap=vmap: vmap)
        retrace()
        trainers[vmap] = jc.sae._train.Trainer(saes, steps=6, sparsity=[0, 0, 0.5, 2.0],
                                               config=config)  # fmt: skip
    stream = list(_stream(6))
    for batch in stream[:3]:
        trainers[True].update(batch)
    leaves = trainers[True].state_arrays()
    trainers[False].restore_arrays(leaves)
    trainers[False].step, trainers[False].tokens = trainers[True].step, trainers[True].tokens
    for a, b in zip(trainers[False].state_arrays(), leaves):
        np.testing.assert_array_equal(a, b)
    for batch in stream[3:]:
        for trainer in trainers.values():
            trainer.update(batch)
    for a, b in zip(trainers[False].result_saes(), trainers[True].result_saes()):
        np.testing.assert_allclose(a.W_enc, b.W_enc, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="arrays of other shapes"):
        trainers[False].restore_arrays(leaves[:-1])


class _Killed(Exception):
    pass


def _killed_after(iterable, n):
    for i, item in enumerate(iterable):
        if i == n:
            raise _Killed
        yield item


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    """A run stopped mid-way (after its step-10 checkpoint, before step 15) and started again
    on the same checkpoint folder ends where the uninterrupted run ends; the activation
    buffer resumes at its position."""
    model = tiny("gpt2")
    tokens = np.random.default_rng(0).integers(0, 50, (24, 9))
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    keys = jax.random.split(jax.random.key(1), 2)
    saes = [jc.sae.init("topk", 32, 64, k=4, key=k, site=s) for k, s in zip(keys, sites)]
    config = jc.sae.TrainConfig(lr=3e-3, warmup_steps=2, dead_tokens=64, log_every=2)

    def buffer():
        return jc.sae.ActivationBuffer(model, tokens, sites, batch_size=16, rows_per_refill=6)

    assert len(buffer()) == 4 * 3  # 4 refills of 6 rows x 8 positions, 3 batches each
    whole = jc.sae.train(saes, buffer(), config=config)
    first = buffer()
    first_iter = iter(first)

    class Stream:  # the same buffer, dying on its 15th batch
        def __len__(self):
            return len(first)

        def position(self):
            return first.position()

        def seek(self, pos):
            first.seek(pos)

        def __iter__(self):
            return _killed_after(first_iter, 10)

    with pytest.raises(_Killed):
        jc.sae.train(saes, Stream(), config=config, checkpoint=tmp_path / "ck",
                     checkpoint_every=4)  # fmt: skip
    again = jc.sae.train(saes, buffer(), config=config, checkpoint=tmp_path / "ck",
                         checkpoint_every=4)  # fmt: skip
    assert again.steps == whole.steps == 12
    for a, b in zip(whole.saes, again.saes):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert [h["step"] for h in again.history] == [h["step"] for h in whole.history]


def test_save_load_round_trip(tmp_path):
    keys = jax.random.split(jax.random.key(2), 4)
    saes = [
        jc.sae.init("relu", 8, 16, key=keys[0], site="blocks.0.hook_resid_post"),
        jc.sae.init("topk", 8, 16, k=3, key=keys[1]),
        jc.sae.init("batchtopk", 8, 16, k=3, key=keys[2], threshold=0.2),
        jc.sae.init("jumprelu", 8, 16, key=keys[3], threshold=0.1, bandwidth=0.01),
    ]
    x = jax.random.normal(jax.random.key(9), (5, 8))
    for i, sae in enumerate(saes):
        sae = jax.tree.map(lambda a: a + 0.1 * jnp.ones_like(a), sae)  # nonzero biases
        jc.sae.save(tmp_path / str(i), sae, info={"fvu": 0.1})
        back = jc.sae.load(tmp_path / str(i))
        assert type(back) is type(sae) and back.site == sae.site
        np.testing.assert_array_equal(back.encode(x), sae.encode(x))
        np.testing.assert_array_equal(back(x), sae(x))
        assert jc.sae.load_info(tmp_path / str(i)) == {"fvu": 0.1}
    jc.sae.save(tmp_path / "0", saes[1])  # replaces the saved one atomically
    assert jc.sae.load(tmp_path / "0").architecture == "topk"


def test_checkpoint_of_another_sae_is_an_error(tmp_path):
    relu = jc.sae.init("relu", 8, 16, key=jax.random.key(0))
    topk = jc.sae.init("topk", 8, 16, k=2, key=jax.random.key(0))
    jc.sae.save(tmp_path / "relu", relu)
    with pytest.raises(ValueError, match=r"holds a 'relu' SAE with d_in=8, d_sae=16; expected "
                       r"architecture='topk'"):  # fmt: skip
        jc.sae.load(tmp_path / "relu", architecture="topk")
    with pytest.raises(ValueError, match="expected d_sae=32"):
        jc.sae.load(tmp_path / "relu", d_sae=32)
    config = jc.sae.TrainConfig(warmup_steps=1, log_every=1)
    data = [np.ones((4, 8), np.float32)] * 2
    jc.sae.train(relu, data, steps=2, config=config, checkpoint=tmp_path / "run")
    with pytest.raises(ValueError, match=r"trains, as SAE 0, a 'relu' SAE \(d_in=8, d_sae=16\);"
                       r" this run's SAE 0 is a 'topk' SAE \(d_in=8, d_sae=16, k=2\)"):  # fmt: skip
        jc.sae.train(topk, data, steps=2, config=config, checkpoint=tmp_path / "run")
    with pytest.raises(ValueError, match="steps=2; this run has steps=3"):
        jc.sae.train(relu, data * 2, steps=3, config=config, checkpoint=tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="training checkpoint"):
        jc.sae.load(tmp_path / "run")


def test_metrics_against_direct_computation():
    """FVU, L0, dead fraction by numpy; the spliced cross-entropy of an exact SAE equals the
    clean one, both equal a log-softmax computed here; loss recovered by its formula."""
    rng = np.random.default_rng(0)
    sae = jc.sae.init("topk", 8, 32, k=3, key=jax.random.key(0))
    x = rng.standard_normal((300, 8)).astype(np.float32)
    m = jc.sae.reconstruction(sae, x, chunk=64)
    xhat = np.asarray(sae(jnp.asarray(x)))
    f = np.asarray(sae.encode(jnp.asarray(x)))
    assert m["fvu"] == pytest.approx(((x - xhat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(),
                                     rel=1e-5)  # fmt: skip
    assert m["l0"] == pytest.approx((f != 0).sum(1).mean())
    assert m["dead_fraction"] == pytest.approx(1 - (f != 0).any(0).mean())

    model = tiny("gpt2")
    d = model.cfg.d_model
    eye = np.eye(d, dtype=np.float32)
    exact = jc.sae.ReLUSAE(  # relu(x) − relu(−x) = x: reconstructs every activation exactly
        W_enc=jnp.asarray(np.concatenate([eye, -eye], 1)), b_enc=jnp.zeros(2 * d),
        W_dec=jnp.asarray(np.concatenate([eye, -eye], 0)), b_dec=jnp.zeros(d),
        site="blocks.0.hook_resid_post", center=False,
    )  # fmt: skip
    tokens = rng.integers(0, 50, (5, 7))
    logits = np.asarray(jax.vmap(model)(jnp.asarray(tokens)), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    clean = -np.take_along_axis(logp[:, 1:-1], tokens[:, 2:, None], -1).mean()
    out = jc.sae.spliced_ce(model, exact, tokens, chunk=2)[0]
    assert out["ce_clean"] == pytest.approx(clean, rel=1e-5)
    assert out["ce_sae"] == pytest.approx(clean, rel=1e-5)
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    noisy = jc.sae.init("topk", d, 64, k=2, key=jax.random.key(1), site=exact.site)
    out = jc.sae.spliced_ce(model, noisy, tokens)[0]
    expect = (out["ce_zero"] - out["ce_sae"]) / (out["ce_zero"] - out["ce_clean"])
    assert out["loss_recovered"] == pytest.approx(expect) and out["ce_sae"] != out["ce_clean"]


def test_bad_inputs():
    sae = jc.sae.init("topk", 8, 16, k=2, key=jax.random.key(0), site="s")
    with pytest.raises(ValueError, match=r"d_in=8; got an activation of shape \(4, 9\)"):
        jc.sae.train(sae, [np.ones((4, 9), np.float32)], steps=1)
    with pytest.raises(ValueError, match="k .* must be"):
        jc.sae.init("topk", 8, 16, k=17, key=jax.random.key(0))
    with pytest.raises(ValueError, match="d_sae"):
        jc.sae.init("relu", 8, 0, key=jax.random.key(0))
    bad = np.ones((4, 8), np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(jc.NonFiniteError, match="site s: row 2 of the batch at step 1, unit 5"):
        jc.sae.train(sae, [np.ones((4, 8), np.float32), bad], steps=2)
    with pytest.raises(KeyError, match="no site 's'"):
        jc.sae.train(sae, [{"t": np.ones((4, 8), np.float32)}], steps=1)
    with pytest.raises(ValueError, match="sparsity"):
        jc.sae.train(sae, [np.ones((4, 8), np.float32)], steps=1, sparsity=1.0)
    with pytest.raises(ValueError, match="stream ended after 1 of 2 steps"):
        jc.sae.train(sae, [np.ones((4, 8), np.float32)], steps=2)


def test_buffer_non_finite_names_site_row_position():
    """A NaN entering at one token row and position is reported at the first site that reads
    it, with that row and position."""
    model = tiny("gpt2")
    site = "blocks.1.hook_resid_post"
    tokens = np.random.default_rng(0).integers(0, 50, (6, 5))
    buffer = jc.sae.ActivationBuffer(model, tokens, [site], batch_size=8, rows_per_refill=3)
    batch = next(iter(buffer))
    assert batch[site].shape == (8, 32)
    # position 0 is left out: the buffer's rows are the activations at positions 1..4
    acts = np.asarray(jc.sae.site_activations(model, tokens[:3], [site])[site])[:, 1:]
    order = np.random.default_rng([0, 0]).permutation(12)
    np.testing.assert_allclose(batch[site], acts.reshape(12, 32)[order[:8]], rtol=1e-6)
    # a NaN embedding row, read by token 7 at row 4, position 2 only
    poisoned = eqx.tree_at(lambda m: m.embed.W_E, model, model.embed.W_E.at[7].set(jnp.nan))
    rows = np.where(tokens == 7, 8, tokens)
    rows[4, 2] = 7
    first = "blocks.0.hook_resid_pre"
    buffer = jc.sae.ActivationBuffer(poisoned, rows, [first], batch_size=4, rows_per_refill=3)
    assert buffer.last == 0  # the run stops after block 0
    it = iter(buffer)
    next(it)  # the first refill (rows 0-2) is finite
    with pytest.raises(jc.NonFiniteError, match=f"site {first}: token row 4, position 2, unit 0"):
        next(it)
        next(it)
        next(it)
    with pytest.raises(ValueError, match="no site 'blocks.1.hook_resid_pots'"):
        jc.sae.ActivationBuffer(model, tokens, ["blocks.1.hook_resid_pots"])


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_pretrained_saes_train_on_from_where_they_are(arch):
    """`TrainConfig(pretrained=True)`: a trained SAE (it reads raw activations) goes on from
    itself: one step at a vanishing learning rate returns it unchanged, biases and thresholds
    included, on data whose scale is far from the trainer's `E‖x‖ = √d_in`. Without the flag
    the same SAE would be read as one of the scaled space (and its `b_dec` reset)."""
    atoms = planted()
    key = jax.random.key(5)
    kw = {"k": ACTIVE} if arch != "jumprelu" else {"threshold": 0.5, "bandwidth": 0.1}
    sae = jc.sae.init(arch, D_IN, 48, key=key, **kw)
    raw = lambda seed: (20.0 * x for x in planted_batches(atoms, 256, 30, seed=seed))
    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=5, log_every=10)
    trained = jc.sae.train(sae, raw(1), steps=30, config=config).saes[0]
    still = jc.sae.TrainConfig(
        lr=1e-12, warmup_steps=0, log_every=10, pretrained=True, threshold_rate=1e-9
    )  # BatchTopK: its running mean too
    again = jc.sae.train(trained, raw(2), steps=1, config=still).saes[0]
    for name, value in vars(trained).items():
        if isinstance(value, jax.Array):
            np.testing.assert_allclose(np.asarray(getattr(again, name)), np.asarray(value),
                                       rtol=1e-4, atol=1e-5, err_msg=name)  # fmt: skip
    naive = jc.sae.train(trained, raw(2), steps=1,
                         config=dataclasses.replace(still, pretrained=False)).saes[0]  # fmt: skip
    assert not np.allclose(np.asarray(naive.b_dec), np.asarray(trained.b_dec), atol=1e-3)
