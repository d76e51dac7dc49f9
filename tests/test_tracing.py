"""Causal tracing (Meng et al. 2022): brute-force agreement, exact restoration, SmolLM2, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.methods._tracing import KINDS, causal_trace, noise_keys, subject_mask, window_bounds


def brute_force(model, tokens, mask, answer, std, key, n_samples, kind, window):
    """One `intervene` + forward run per (layer, position, prompt, sample), in Python."""
    keys = noise_keys(key, tokens.shape[0], n_samples)
    n_layers, seq = model.cfg.n_layers, tokens.shape[1]
    site, w = KINDS[kind], 1 if kind == "resid" else window
    grid = np.zeros((n_layers, seq))
    cleans = [model.run(t)[1] for t in tokens]
    for layer in range(n_layers):
        lo, hi = (int(b) for b in window_bounds(layer, w, n_layers))
        for pos in range(seq):
            probs = []
            for b, clean in enumerate(cleans):
                for s in range(n_samples):
                    noise = jc.Noise(std, keys[b, s], mask=mask[b][:, None])
                    patches = {
                        jc.SiteRef(site, i): jc.Patch(
                            clean[jc.SiteRef(site, i)], position=jnp.array(pos)
                        )
                        for i in range(lo, hi)
                    }
                    patched = jc.intervene(model, {jc.SiteRef("embed"): noise, **patches})
                    probs.append(jax.nn.softmax(patched(tokens[b])[-1])[answer[b]])
            grid[layer, pos] = np.mean(probs)
    return grid


@pytest.fixture(scope="module")
def small():
    model = tiny("gpt2", n_layers=3)
    tokens = jax.random.randint(jax.random.key(3), (2, 5), 0, 50)
    mask = jnp.zeros((2, 5), bool).at[0, 1:3].set(True).at[1, 0].set(True)
    answer = jnp.array([3, 7])
    result = causal_trace(
        model,
        tokens,
        mask,
        answer,
        noise_std=0.5,
        n_samples=2,
        key=jax.random.key(0),
        window=2,
        chunk_size=2,
    )
    return model, tokens, mask, answer, result


@pytest.mark.parametrize("kind", ["resid", "mlp", "attn"])
def test_agrees_with_brute_force(small, kind):
    model, tokens, mask, answer, result = small
    expected = brute_force(model, tokens, mask, answer, 0.5, jax.random.key(0), 2, kind, 2)
    np.testing.assert_allclose(result.indirect[kind], expected, atol=1e-5)
    assert result.indirect[kind].shape == (3, 5)
    np.testing.assert_allclose(
        result.indirect_effect[kind], expected - result.corrupt_prob, atol=1e-5
    )


def test_restoring_everything_recovers_clean(small):
    model, tokens, mask, answer, result = small
    # the last layer's state at the last position is all the readout sees
    np.testing.assert_allclose(result.indirect["resid"][-1, -1], result.clean_prob, atol=1e-6)
    # with the subject the last token, restoring its state at any layer restores everything;
    # a window covering every layer restores all of attention's and the MLPs' outputs
    last = jnp.zeros((2, 5), bool).at[:, -1].set(True)
    r = causal_trace(
        model, tokens, last, answer, noise_std=0.5, n_samples=2, key=jax.random.key(1), window=6
    )
    np.testing.assert_allclose(r.indirect["resid"][:, -1], r.clean_prob, atol=1e-6)
    # restoring resid_pre of layer 0 everywhere (brute force through the same interventions)
    clean = model.run(tokens[0])[1]
    noisy = jc.intervene(
        model,
        {
            jc.SiteRef("embed"): jc.Noise(0.5, jax.random.key(2), mask=mask[0][:, None]),
            jc.SiteRef("resid_pre", 0): jc.Patch(clean[jc.SiteRef("resid_pre", 0)]),
        },
    )
    np.testing.assert_allclose(noisy(tokens[0]), model(tokens[0]), atol=1e-5)
    assert float(result.total_effect) == pytest.approx(
        float(result.clean_prob - result.corrupt_prob)
    )


def test_bad_input(small):
    model, tokens, mask, answer, _ = small
    kw = dict(key=jax.random.key(0), n_samples=1)
    with pytest.raises(ValueError, match=r"subject position 9 is outside the prompt of 5 tokens"):
        subject_mask(5, [1, 9])
    with pytest.raises(ValueError, match=r"prompt 1 is empty"):
        causal_trace(model, tokens, mask.at[1].set(False), answer, **kw)
    with pytest.raises(ValueError, match=r"shape \[2, 4\]; expected .* \[2, 5\]"):
        causal_trace(model, tokens, mask[:, :4], answer, **kw)
    with pytest.raises(ValueError, match="boolean"):
        causal_trace(model, tokens, mask.astype(int), answer, **kw)
    with pytest.raises(ValueError, match=r"answer has shape \[3\]"):
        causal_trace(model, tokens, mask, jnp.array([1, 2, 3]), **kw)
    with pytest.raises(ValueError, match=r"did you mean 'mlp'"):
        causal_trace(model, tokens, mask, answer, kinds=("mpl",), **kw)


@pytest.fixture(scope="module")
def smollm2(smollm2_lm):
    return smollm2_lm


@pytest.mark.slow
def test_smollm2_factual_trace(smollm2, tmp_path):
    model, tok = smollm2
    prompt, subject = "The Eiffel Tower is located in the city of", " Eiffel Tower"
    ids = list(tok.encode(prompt))
    sub = list(tok.encode(subject, add_special_tokens=False))
    start = next(i for i in range(len(ids)) if ids[i : i + len(sub)] == sub)
    mask = subject_mask(len(ids), np.arange(start, start + len(sub)))
    answer = int(tok.encode(" Paris", add_special_tokens=False)[0])
    result = causal_trace(
        model, jnp.array(ids), mask, jnp.array([answer]), n_samples=1, key=jax.random.key(0)
    )
    for kind in ("resid", "mlp", "attn"):
        assert result.indirect[kind].shape == (30, len(ids))
    assert result.clean_prob > result.corrupt_prob
    # restoring the state the readout sees (last layer, last position) recovers the clean run
    np.testing.assert_allclose(result.indirect["resid"][-1, -1], result.clean_prob, rtol=1e-3)
    # and restoring every layer's input at once (resid_pre 0, all positions) undoes the noise
    tokens = jnp.array(ids)
    clean = model.run(tokens)[1][jc.SiteRef("resid_pre", 0)]
    noisy = jc.intervene(
        model,
        {
            jc.SiteRef("embed"): jc.Noise(1.0, jax.random.key(3), mask=mask[:, None]),
            jc.SiteRef("resid_pre", 0): jc.Patch(clean),
        },
    )
    prob = jax.nn.softmax(noisy(tokens)[-1])[answer]
    assert float(prob) == pytest.approx(float(result.clean_prob), rel=1e-3)
    labels = [tok.decode([i]) for i in ids]
    png = jc.viz.plot_trace(result, labels, tmp_path / "trace.png", answer=" Paris")
    assert png.stat().st_size > 10_000
