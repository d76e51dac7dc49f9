"""Feature dashboards: numbers against a brute-force per-example reference, compiled once,
one self-contained escaped HTML page, the PNG, bad input, and `jaxcirc sae dashboard`."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_compile_once import count_compiles

import jaxcirc as jc
from jaxcirc.viz import feature_dashboard

D_SAE = 48


def _sae(site, d_in, architecture="topk", seed=0):
    rng = np.random.default_rng(seed)
    k = 6 if architecture == "topk" else None
    sae = jc.sae.init(architecture, d_in, D_SAE, key=jax.random.key(seed), k=k, site=site)
    return eqx.tree_at(
        lambda s: (s.b_enc, s.b_dec),
        sae,
        (jnp.asarray(rng.normal(0, 0.3, D_SAE), jnp.float32),
         jnp.asarray(rng.normal(0, 0.3, d_in), jnp.float32)),
    )  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return jc.zoo.induction_mlp_model()  # 2 layers, d_model 64, LayerNorm, MLPs


def _tokens(n=11, seq=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 64, (n, seq)), rng.integers(4, seq + 1, n)


def _brute_force(model, sae, tokens, lengths, start):
    """Every example run on its own, encoded, masked by hand (a causal model: the positions
    before a row's length do not see the padding after it)."""
    acts = []
    for row, length in zip(tokens, lengths):
        _, cache = model.run(jnp.asarray(row))
        x = np.asarray(cache[sae.site]).reshape(len(row), -1)
        f = np.asarray(sae.encode(jnp.asarray(x))).copy()
        f[length:] = 0
        f[:start] = 0
        acts.append(f)
    return np.stack(acts)  # [n, seq, d_sae], zero where not counted


def test_numbers_match_brute_force(model):
    sae = _sae("blocks.1.hook_resid_mid", 64)
    tokens, lengths = _tokens()
    dash = feature_dashboard(model, sae, tokens, lengths=lengths, start=1, n_features=5,
                             n_contexts=4, window=(2, 1), bins=7, n_logits=3, batch_size=4,
                             progress=False)  # fmt: skip
    ref = _brute_force(model, sae, tokens, lengths, 1)
    counted = (np.arange(tokens.shape[1]) < lengths[:, None]) & (np.arange(tokens.shape[1]) >= 1)
    n_tokens = counted.sum()
    assert dash.n_tokens == n_tokens
    freq = (ref != 0).sum((0, 1)) / n_tokens
    np.testing.assert_allclose(dash.frequency, freq, atol=1e-9)
    # default choice: most frequent first, ties broken by the larger maximum
    peak = np.where(counted[..., None], ref, -np.inf).max((0, 1))
    expected = sorted(range(D_SAE), key=lambda f: (-freq[f], -peak[f], f))[:5]
    assert [c.feature for c in dash.cards] == expected
    W_U, ln = np.asarray(model.unembed.W_U), model.ln_final
    for card in dash.cards:
        a = ref[..., card.feature]
        nz = a[counted & (a != 0)]
        assert card.max_activation == pytest.approx(nz.max(), abs=1e-5)
        assert card.mean_active == pytest.approx(nz.mean(), abs=1e-5)
        counts, edges = np.histogram(nz, bins=7)
        assert list(card.histogram[0]) == list(counts)
        np.testing.assert_allclose(card.histogram[1], edges, atol=1e-5)
        cells = sorted(zip(*np.nonzero(counted & (a != 0))), key=lambda rp: -a[rp])[:4]
        assert [(c.row, c.position) for c in card.contexts] == [tuple(map(int, rp)) for rp in cells]
        for c in card.contexts:
            lo, hi = max(0, c.position - 2), min(lengths[c.row], c.position + 2)
            assert c.token_ids == tuple(tokens[c.row, lo:hi])
            np.testing.assert_allclose(c.activations, a[c.row, lo:hi], atol=1e-5)
            assert c.strings[c.center] == f"<{tokens[c.row, c.position]}>"
        # direct logit effect: the decoder row, centred, times LayerNorm's gain, through W_U
        d = np.asarray(sae.W_dec[card.feature], np.float64)
        effect = ((d - d.mean()) * np.asarray(ln.w)) @ W_U
        top = np.argsort(-effect)[:3]
        assert [i for _, i, _ in card.logits_up] == list(top)
        np.testing.assert_allclose([v for *_, v in card.logits_up], effect[top], rtol=1e-4)
        assert [i for _, i, _ in card.logits_down] == list(np.argsort(effect)[:3])


def test_chosen_features_and_max_selection(model):
    sae = _sae("blocks.0.mlp.hook_post", 256, architecture="relu", seed=1)
    tokens, _ = _tokens(seed=2)
    dash = feature_dashboard(model, sae, tokens, features=[7, 3], n_contexts=2, progress=False)
    assert [c.feature for c in dash.cards] == [7, 3]
    ref = _brute_force(model, sae, tokens, np.full(len(tokens), tokens.shape[1]), 0)
    by_max = feature_dashboard(model, sae, tokens, select="max", n_features=3, progress=False)
    assert [c.feature for c in by_max.cards] == list(np.argsort(-ref.max((0, 1)))[:3])
    # mlp.hook_post: the decoder row goes through W_out first
    mlp = model.blocks[0].mlp
    d = np.asarray(sae.W_dec[7] @ mlp.W_out, np.float64)
    effect = ((d - d.mean()) * np.asarray(model.ln_final.w)) @ np.asarray(model.unembed.W_U)
    assert dash.cards[0].logits_up[0][1] == int(np.argmax(effect))


def test_compiles_once_across_features_and_rows(model):
    sae = _sae("blocks.1.hook_resid_post", 64, seed=4)
    tokens, _ = _tokens(n=9, seed=5)
    feature_dashboard(model, sae, tokens, features=[1, 2], batch_size=4, progress=False)
    with count_compiles() as compiled:
        feature_dashboard(model, sae, tokens[:6], features=[5, 9], batch_size=4, progress=False)
        feature_dashboard(model, sae, tokens, n_features=2, batch_size=4, progress=False)
    assert not [name for name in compiled if "collect" in name or "features" in name], compiled


def test_html_is_self_contained_and_escaped(model, tmp_path):
    sae = _sae("blocks.1.hook_resid_post", 64, seed=6)
    tokens, _ = _tokens(seed=7)
    vocab = [f"t{i}" for i in range(64)]
    vocab[int(tokens[0, 3])] = "<script>alert('x')</script>"
    vocab[int(tokens[0, 4])] = 'a&b"\n'
    dash = feature_dashboard(model, sae, tokens, n_features=2, tokenizer=vocab, n_contexts=99,
                             window=(9, 9), path=tmp_path / "d.html", png=tmp_path / "d.png",
                             progress=False)  # fmt: skip
    assert any(c.row == 0 and c.start <= 3 for c in dash.cards[0].contexts)
    page = (tmp_path / "d.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "a&amp;b" in page and "http" not in page and "src='data:image/svg+xml;base64," in page
    assert page.count("<h2>Feature") == 2
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(json.dumps(dash.to_dict()))
    assert [f["feature"] for f in record["features"]] == [c.feature for c in dash.cards]


def test_bad_input(model):
    sae = _sae("blocks.1.hook_resid_post", 64)
    tokens, _ = _tokens()
    with pytest.raises(ValueError, match=r"feature 48 out of range.*d_sae=48.*nearest valid: 47"):
        feature_dashboard(model, sae, tokens, features=[2, 48], progress=False)
    with pytest.raises(ValueError, match="feature 2 is listed twice"):
        feature_dashboard(model, sae, tokens, features=[2, 2], progress=False)
    with pytest.raises(ValueError, match="lengths"):
        feature_dashboard(model, sae, tokens, lengths=[3] * 2, progress=False)
    with pytest.raises(ValueError, match="token id"):
        feature_dashboard(model, sae, tokens + 100, progress=False)
    nan = eqx.tree_at(lambda s: s.b_enc, sae, sae.b_enc.at[3].set(jnp.nan))
    message = r"at blocks.1.hook_resid_post: feature 3 .*SAE weight b_enc .*\[3\]"
    with pytest.raises(jc.NonFiniteError, match=message):
        feature_dashboard(model, nan, tokens, progress=False)
    wrong = _sae("blocks.1.mlp.hook_post", 64)
    with pytest.raises(ValueError, match="d_in=64"):
        feature_dashboard(model, wrong, tokens, progress=False)


def test_cli_dashboard(tmp_path, capsys):
    from jaxcirc.cli import main

    model = jc.zoo.induction_mlp_model()
    jc.save(tmp_path / "model", model)
    sae = _sae("blocks.0.hook_mlp_out", model.cfg.d_model)
    jc.io.save_saelens(tmp_path / "sae", sae)
    out = tmp_path / "out"
    argv = ["sae", "dashboard", str(tmp_path / "sae"), "--model", str(tmp_path / "model"),
            "--random", "6", "--seq", "12", "--features", "1,5,7", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "dashboard.html", "dashboard.json", "dashboard.png"
    ]  # fmt: skip
    record = json.loads((out / "dashboard.json").read_text())
    assert [f["feature"] for f in record["features"]] == [1, 5, 7]
    assert record["site"] == "blocks.0.hook_mlp_out" and record["n_tokens"] == 72
    assert main([*argv[:-5], "--features", "1,48", "--out", str(out), "--no-progress"]) == 1
    assert "feature 48 out of range" in capsys.readouterr().err
    # a jaxcirc SAE folder, its site overridden
    jc.sae.save(tmp_path / "jsae", sae)
    argv[2] = str(tmp_path / "jsae")
    assert main([*argv, "--site", "blocks.1.hook_attn_out"]) == 0
    assert json.loads((out / "dashboard.json").read_text())["site"] == "blocks.1.hook_attn_out"
