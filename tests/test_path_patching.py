"""Path patching (Wang et al. 2023): equal to a brute-force loop of `intervene` runs, compiled
once, and finds the previous-token head -> induction head path of the shipped model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logit_diff, tiny

import jaxcirc as jc
from jaxcirc.methods import _path_patching, path_patch
from jaxcirc.viz._path_patching import plot_path_patching

# ---------------------------------------------------------------------------------------------
# The reference: one sender at a time, written with the model's own sites
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _frozen_run(model, tokens, zs, mlps):
    """Every head's z and every MLP output patched to the given values: the model's
    activations with each component's output frozen."""

    def one(t, z, m):
        patches = {jc.SiteRef("z", i): jc.Patch(z[i]) for i in range(model.cfg.n_layers)}
        if m is not None:
            patches |= {jc.SiteRef("mlp_out", i): jc.Patch(m[i]) for i in range(model.cfg.n_layers)}
        return jc.intervene(model, patches).run(t)[1]

    return jax.vmap(one)(tokens, zs, mlps)


@eqx.filter_jit
def _receiver_run(model, tokens, patches, metric):
    """The clean run with `patches` (`{site name: (value, mask)}`): one receiver's q, k or v
    (one head), its MLP's normalised input or the final normalised residual stream."""

    def one(t, values):
        return jc.intervene(
            model, {site: jc.Patch(values[site], mask=mask) for site, (_, mask) in patches.items()}
        )(t)

    values = {site: value for site, (value, _) in patches.items()}
    return metric(jax.vmap(one)(tokens, values))


def _norm_site(kind, layer=None):
    return jc.SiteRef(kind) if layer is None else jc.SiteRef(kind, layer)


def brute_force(model, clean, corrupt, metric):
    """`{(sender, receiver): metric}` by a Python loop over senders and receivers."""
    cfg = model.cfg
    has_mlp = cfg.block != "attn_only"
    n_kv = cfg.n_kv_heads or cfg.n_heads
    kv = "H" if n_kv == cfg.n_heads else "KV"
    clean_acts = jax.vmap(model.run)(clean)[1]
    corrupt_acts = jax.vmap(model.run)(corrupt)[1]
    z_clean, z_corrupt = clean_acts.stack("z"), corrupt_acts.stack("z")  # [b, layer, s, h, d]
    m_clean = clean_acts.stack("mlp_out") if has_mlp else None
    m_corrupt = corrupt_acts.stack("mlp_out") if has_mlp else None

    # every receiver site, patched with mask 0 unless it is the receiver
    sites = [jc.SiteRef(k, i) for i in range(cfg.n_layers) for k in "qkv"]
    sites += [_norm_site("ln2", i) for i in range(cfg.n_layers) if has_mlp]
    sites += [_norm_site("ln_final")]
    base = {
        s.name: (
            clean_acts[s],
            np.zeros(clean_acts[s].shape[2:3] + (1,) if s.kind in "qkv" else (), np.float32),
        )
        for s in sites
    }

    def patches(site, value, head=None):
        mask = np.ones((), np.float32)
        if head is not None:
            mask = (np.arange(value.shape[2]) == head)[:, None].astype(np.float32)
        return {**base, site.name: (value, mask)}

    out = {}
    for sl in range(cfg.n_layers):
        senders = [(f"L{sl}H{h}", h) for h in range(cfg.n_heads)] + has_mlp * [(f"MLP{sl}", None)]
        for sender, h in senders:
            zs, ms = z_clean, m_clean
            if h is not None:
                zs = zs.at[:, sl, :, h].set(z_corrupt[:, sl, :, h])
            else:
                ms = ms.at[:, sl].set(m_corrupt[:, sl])
            frozen = _frozen_run(model, clean, zs, ms)
            for rl in range(sl + 1, cfg.n_layers):
                attn = model.blocks[rl].attn
                x = frozen[_norm_site("ln1", rl)]  # the heads' normalised input [b, s, d]
                for kind, W, b, n, tag in (
                    ("q", attn.W_Q, attn.b_Q, cfg.n_heads, "H"),
                    ("k", attn.W_K, attn.b_K, n_kv, kv),
                    ("v", attn.W_V, attn.b_V, n_kv, kv),
                ):
                    value = jnp.einsum("bsm,hmd->bshd", x, W) + (0.0 if b is None else b)
                    for g in range(n):
                        p = patches(jc.SiteRef(kind, rl), value, int(g))
                        out[sender, f"L{rl}{tag}{g}.{kind}"] = _receiver_run(
                            model, clean, p, metric
                        )
            for rl in range(sl, cfg.n_layers) if has_mlp else ():
                if rl == sl and (h is None or cfg.block == "parallel"):
                    continue  # an MLP does not feed itself; parallel heads do not feed their MLP
                site = _norm_site("ln2", rl)
                out[sender, f"MLP{rl}"] = _receiver_run(
                    model, clean, patches(site, frozen[site]), metric
                )
            site = _norm_site("ln_final")
            out[sender, "logits"] = _receiver_run(model, clean, patches(site, frozen[site]), metric)
    return {k: float(v) for k, v in out.items()}


def _tokens(seed=1, batch=3, seq=6, vocab=50):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.randint(k1, (batch, seq), 0, vocab), jax.random.randint(
        k2, (batch, seq), 0, vocab
    )


@pytest.mark.parametrize(
    "family,overrides,chunk_size",
    [("gpt2", {"n_layers": 3}, None), ("attn_only", {}, 7), ("neox", {}, None)],
)
def test_equals_brute_force(family, overrides, chunk_size):
    model = tiny(family, seed=3, **overrides)
    clean, corrupt = _tokens()
    got = path_patch(model, clean, corrupt, logit_diff, chunk_size=chunk_size)
    want = brute_force(model, clean, corrupt, logit_diff)
    values = np.asarray(got.values)
    assert set(want) == {
        (s, r) for (i, j), ok in np.ndenumerate(np.isfinite(values)) if ok
        for s, r in [(got.senders[i], got.receivers[j])]
    }  # fmt: skip
    for (s, r), v in want.items():
        assert float(got[s, r]) == pytest.approx(v, abs=1e-5), (s, r)
    assert float(got.clean) == pytest.approx(float(logit_diff(jax.vmap(model)(clean))), abs=1e-6)
    assert float(got.corrupt) == pytest.approx(
        float(logit_diff(jax.vmap(model)(corrupt))), abs=1e-6
    )
    assert np.nanmax(np.abs(np.asarray(got.effects))) > 1e-2  # the random model is not trivial


def test_denoise_swaps_runs():
    model = tiny("attn_only", seed=3)
    clean, corrupt = _tokens()
    noise = path_patch(model, corrupt, clean, logit_diff, chunk_size=7)
    denoise = path_patch(model, clean, corrupt, logit_diff, direction="denoise", chunk_size=7)
    np.testing.assert_allclose(denoise.values, noise.values, atol=1e-6)
    assert float(denoise.clean) == pytest.approx(float(noise.corrupt))
    assert float(denoise.baseline) == pytest.approx(float(denoise.corrupt))
    np.testing.assert_allclose(
        denoise.normalized(), denoise.effects / (denoise.clean - denoise.corrupt), atol=1e-6
    )


def test_traces_once(monkeypatch, capsys):
    model = tiny("attn_only", seed=3)
    counted = eqx.filter_jit(
        eqx.debug.assert_max_traces(_path_patching._path_patch.__wrapped__, max_traces=1)
    )
    monkeypatch.setattr(_path_patching, "_path_patch", counted)
    maps = [
        path_patch(model, *_tokens(seed), logit_diff, progress=True).values for seed in (1, 2, 3)
    ]
    assert not np.allclose(maps[0], maps[1], equal_nan=True)
    assert eqx.debug.get_num_traces(counted) == 1
    assert "path patching" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Known answer: the shipped induction model
# ---------------------------------------------------------------------------------------------


def test_induction_path(tmp_path):
    model = jc.zoo.induction_model()
    task = jc.zoo.induction_task(8, 8, seed=0)
    n = task.half_len
    # identify the heads by their attention patterns, without any patching
    patterns = jax.vmap(model.run)(task.clean)[1].stack("pattern")  # [b, layer, h, q, k]
    q = np.arange(1, 2 * n)
    prev_score = np.asarray(patterns[:, 0, :, q, q - 1]).mean(axis=(0, 1))  # [h]
    q = np.arange(n, 2 * n)
    induction_score = np.asarray(patterns[:, 1, :, q, q - n + 1]).mean(axis=(0, 1))
    prev = int(prev_score.argmax())
    assert prev_score[prev] > 0.9 and np.sort(prev_score)[-2] < prev_score[prev] - 0.1
    assert (induction_score > 0.5).all()  # every layer-1 head is an induction head

    # activation patching (corrupted head output into the clean run) singles out one head
    # per layer: the previous-token head in layer 0 and one of the induction heads in layer 1
    sweep = np.asarray(
        jc.patching.sweep(model, task.corrupt, task.clean, task.metric, site="z", per="head")
    )
    clean_metric = float(task.metric(jax.vmap(model)(task.clean)))
    drop = clean_metric - sweep  # [layer, head]: how much corrupting the head hurts
    assert int(drop[0].argmax()) == prev
    assert drop[0, prev] > 2 * np.sort(drop[0])[-2]
    induction = int(drop[1].argmax())
    assert drop[1, induction] > 1.2 * np.sort(drop[1])[-2]

    # path patching into the layer-1 heads' keys: that pair is the top entry
    result = path_patch(model, task.clean, task.corrupt, task.metric, receivers="L1H*.k")
    assert result.receivers == tuple(f"L1H{h}.k" for h in range(4))
    assert result.senders == tuple(f"L{i}H{h}" for i in range(2) for h in range(4))
    (sender, receiver, effect), (_, _, second) = result.top(2)
    assert (sender, receiver) == (f"L0H{prev}", f"L1H{induction}.k")
    assert effect < 0 and abs(effect) > 1.2 * abs(second)
    assert np.isnan(np.asarray(result.values[4:])).all()  # layer-1 senders: no path

    png = plot_path_patching(result, tmp_path / "pp" / "map.png", metric_label="log p")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_path_patching(result, tmp_path / "norm.png", scale="normalized")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input():
    model = tiny("attn_only", seed=3)  # compiled by the tests above
    clean, corrupt = _tokens()
    with pytest.raises(ValueError, match="same shape"):
        path_patch(model, clean, corrupt[:, :5], logit_diff)
    with pytest.raises(ValueError, match=r"unknown sender 'L0H9'.*did you mean 'L0H"):
        path_patch(model, clean, corrupt, logit_diff, senders=["L0H9"])
    with pytest.raises(ValueError, match=r"unknown receiver 'L1H0\.kk' \(did you mean 'L1H0\.k'"):
        path_patch(model, clean, corrupt, logit_diff, receivers="L1H0.kk")
    with pytest.raises(ValueError, match=r"unknown sender 'L1H0\.k'.*did you mean 'L1H0'"):
        path_patch(model, clean, corrupt, logit_diff, senders="L1H0.k")
    with pytest.raises(ValueError, match="pattern 'L7H\\*' matches no sender"):
        path_patch(model, clean, corrupt, logit_diff, senders="L7H*")
    with pytest.raises(ValueError, match="no sender is computed before any receiver"):
        path_patch(model, clean, corrupt, logit_diff, senders="L1H*", receivers="L0H*.q")
    with pytest.raises(ValueError, match="did you mean 'denoise'"):
        path_patch(model, clean, corrupt, logit_diff, direction="denoising")
    with pytest.raises(ValueError, match="outside"):
        path_patch(model, clean.at[0, 0].set(99), corrupt, logit_diff)
    with pytest.raises(ValueError, match=r"summed residual stream at blocks\.0\.hook_attn_out"):
        patched = jc.intervene(model, {"blocks.0.hook_attn_out": jc.Zero()})
        path_patch(patched, clean, corrupt, logit_diff)
    with pytest.raises(ValueError, match="must return a scalar"):
        path_patch(model, clean, corrupt, lambda x: x[:, -1, 0], receivers="logits")
    with pytest.raises(TypeError, match="PathPatchResult"):
        plot_path_patching(np.zeros((2, 2)), "unused.png")
