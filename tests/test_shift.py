"""SHIFT (Marks et al. 2025): the bios task, the probe, pooling, flagging, ablation, the table."""

import json
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc.methods import _shift as S
from jaxcirc.tasks import bios
from jaxcirc.tasks._bios import _ACTIVITIES, _NAMES, FRAMES


class WordTokenizer:
    """One id per word (punctuation split off) of every bio; 0 pad, 1 BOS."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 0

    def __init__(self):
        words = set()
        texts = [" ".join(v) for table in (_NAMES, FRAMES, _ACTIVITIES) for v in table.values()]
        texts.append("he she him her his His He She Her man woman father mother wife husband")
        texts.append("brother sister Mr Mrs")
        for t in texts:
            words.update(self._split(t))
        self.vocab = {w: i + 2 for i, w in enumerate(sorted(words))}

    @staticmethod
    def _split(text):
        return re.findall(r"[A-Za-z]+|[^\sA-Za-z{}]", text)

    def encode(self, text, add_special_tokens=True):
        ids = [self.vocab[w] for w in self._split(text)]
        return np.asarray(([1] if add_special_tokens else []) + ids)

    def __len__(self):
        return len(self.vocab) + 2


TOK = WordTokenizer()


def tiny_model(seed=0):
    from conftest import randomise

    k1, k2 = jax.random.split(jax.random.key(seed))
    model = jc.models.gpt2(key=k1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=len(TOK),
                           n_ctx=48, n_layers=2)  # fmt: skip
    return randomise(model, k2)


def saes_for(model, d_sae=24, seed=0):
    keys = jax.random.split(jax.random.key(seed), 2)
    return [
        jc.sae.init("relu", 16, d_sae, key=k, site=f"blocks.{layer}.hook_resid_post")
        for layer, k in enumerate(keys)
    ]


# ---------------------------------------------------------------------------------- bios


def test_bios_sets_groups_and_held_out_vocabulary():
    amb = bios(TOK, 40, kind="ambiguous", split="train")
    assert np.array_equal(np.asarray(amb.profession), np.asarray(amb.gender))  # confounded
    assert np.bincount(np.asarray(amb.group)).tolist() == [20, 0, 0, 20]
    test = bios(TOK, 40, kind="balanced", split="test")
    assert np.bincount(np.asarray(test.group)).tolist() == [10, 10, 10, 10]
    # no first name, and no activity phrase, is shared between the splits
    train_all = bios(TOK, 400, kind="balanced", split="train")
    first = {t.split()[0] for t in train_all.texts} | {
        w for t in train_all.texts for w in re.findall(r"[A-Z][a-z]+", t)
    }
    for t in test.texts:
        names = [n for v in _NAMES.values() for n in v if re.search(rf"\b{n}\b", t)]
        assert names and all(n not in first for n in names), t
        assert not any(a in t for k, v in _ACTIVITIES.items() if k[1] == "train" for a in v)
    # tokens: BOS first, real tokens up to lengths, pad after; deterministic
    tok, n = np.asarray(test.tokens), np.asarray(test.lengths)
    assert (tok[:, 0] == 1).all()
    for row, length, text in zip(tok, n, test.texts):
        assert row[1:length].tolist() == TOK.encode(text, add_special_tokens=False).tolist()
        assert (row[length:] == 0).all()
    again = bios(TOK, 40, kind="balanced", split="test")
    assert (
        again.texts == test.texts
        and bios(TOK, 40, kind="balanced", split="test", seed=1).texts != test.texts
    )  # noqa: E501
    # `frame` names the sentence frame each text was filled from
    for data in (test, train_all):
        for text, f in zip(data.texts, np.asarray(data.frame)):
            parts = re.split(r"\{\w+\}", FRAMES[data.split][f])
            assert re.fullmatch(".+".join(map(re.escape, parts)), text), (f, text)
        assert set(np.asarray(data.frame).tolist()) == set(range(len(FRAMES[data.split])))
    neutral = bios(TOK, 8, kind="neutral")
    assert (np.asarray(neutral.profession) == -1).all()
    assert np.bincount(np.asarray(neutral.gender)).tolist() == [4, 4]


def test_bios_bad_input():
    with pytest.raises(ValueError, match=r"multiple of 4.*nearest: 12"):
        bios(TOK, 13, kind="balanced")
    with pytest.raises(ValueError, match=r"unknown kind 'balance'.*did you mean 'balanced'"):
        bios(TOK, 8, kind="balance")
    with pytest.raises(ValueError, match=r"unknown split 'tset'"):
        bios(TOK, 8, split="tset")
    with pytest.raises(ValueError, match="neutral set exists for the train split only"):
        bios(TOK, 8, kind="neutral", split="test")


def test_bios_with_the_smollm2_tokenizer():
    from jaxcirc.io._gguf import smollm2_gguf_path

    try:
        tok = jc.io.load_tokenizer(smollm2_gguf_path())
    except Exception as e:  # noqa: BLE001 - optional test dependency
        pytest.skip(f"SmolLM2 tokenizer not available: {e}")
    data = bios(tok, 16, kind="balanced", split="test")
    rows, n = np.asarray(data.tokens), np.asarray(data.lengths)
    assert (rows[:, 0] == data.bos).all() and data.bos != data.pad
    for row, length, text in zip(rows, n, data.texts):
        assert tok.decode(row[1:length].tolist()) == text
        assert data.bos not in row[1:length] and data.pad not in row[1:length]


# --------------------------------------------------------------------------------- probe


def test_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 7)) * rng.uniform(0.1, 5, 7) + rng.normal(size=7)
    y = (X @ rng.normal(size=7) + rng.normal(size=120) > 0).astype(int)
    for C, standardize in ((0.05, True), (1.0, True), (0.01, False)):
        probe = S.train_probe(X, y, C=C, standardize=standardize)
        Z = (X - X.mean(0)) / X.std(0) if standardize else X
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(Z, y)
        np.testing.assert_allclose(np.asarray(probe.w), ref.coef_[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(probe(jnp.asarray(X, jnp.float32))), ref.decision_function(Z), atol=1e-3
        )


def test_accuracy_counts_groups():
    class D:
        profession = np.array([0, 0, 1, 1, 0, 1])
        gender = np.array([0, 1, 0, 1, 0, 1])
        group = 2 * profession + gender
        frame = np.array([0, 1, 1, 0, 1, 1])

    probe = S.Probe(jnp.ones(1), jnp.zeros(()), jnp.zeros(1), jnp.ones(1))
    x = np.array([[-1.0], [1.0], [-1.0], [1.0], [-1.0], [-1.0]])  # predicts 0 1 0 1 0 0
    acc = S.accuracy(probe, x, D)
    assert acc["profession"] == pytest.approx(100 * 3 / 6)
    assert acc["gender"] == pytest.approx(100 * 5 / 6)  # pred == gender on 5 of 6
    assert acc["worst_group"] == pytest.approx(0.0)  # female professor, male nurse missed
    assert acc["groups"] == pytest.approx({"male professor": 100.0, "female professor": 0.0,
                                           "male nurse": 0.0, "female nurse": 50.0})  # fmt: skip
    # by frame: the female nurse in frame 0 is right, the one in frame 1 wrong
    assert acc["frames"] == {"male professor": [100.0, 100.0], "female professor": [None, 0.0],
                             "male nurse": [None, 0.0], "female nurse": [100.0, 0.0]}  # fmt: skip
    # one entry per frame of the split, `None` for a frame a group never met (4 bios, 6 frames)
    few = bios(TOK, 4, kind="balanced", split="train")
    got = S.accuracy(probe, np.ones((4, 1)), few)["frames"]
    assert all(len(v) == len(FRAMES["train"]) for v in got.values())
    assert sum(v is None for row in got.values() for v in row) == 4 * 6 - 4
    neutral = bios(TOK, 4, kind="neutral")  # no profession: refused, not misnamed
    with pytest.raises(ValueError, match=r"needs bios with a profession.*group ids \[-2, -1\]"):
        S.accuracy(probe, np.zeros((4, 1)), neutral)


def test_probe_bad_input():
    with pytest.raises(ValueError, match="0/1 labels"):
        S.train_probe(np.ones((4, 2)), np.array([0, 1, 2, 0]))
    probe = S.train_probe(np.random.default_rng(0).normal(size=(8, 3)), np.arange(8) % 2, site="s")
    with pytest.raises(ValueError, match="site s of width 3"):
        probe(jnp.ones((2, 4)))


# ------------------------------------------------------------------ pooling and ablation


def test_pooled_is_the_masked_mean_without_bos():
    model = tiny_model()
    data = bios(TOK, 6, kind="ambiguous")
    site = "blocks.1.hook_resid_post"
    got = S.pooled(model, data, site, chunk=4)  # 6 rows in chunks of 4: a padded last chunk
    _, acts = jax.vmap(model.run)(data.tokens)  # causal: a padded row's first n are its own
    for i in range(6):
        n = int(data.lengths[i])
        np.testing.assert_allclose(got[i], np.asarray(acts[site][i, 1:n]).mean(0), atol=1e-5)
    # the metric of the attribution pools the same positions, finding the length from padding
    probe = S.train_probe(got, data.label, site=site)
    metric = S.ProbeMetric(probe, jnp.float32(-1.0), data.pad)
    values = eqx.filter_jit(lambda md, t: jax.vmap(metric, in_axes=(None, 0))(md, t))(
        model, data.tokens
    )
    np.testing.assert_allclose(values, -np.asarray(probe(jnp.asarray(got))), atol=1e-4)


def test_ablate_zeroes_flagged_features_and_keeps_the_error():
    model = tiny_model()
    saes = saes_for(model)
    data = bios(TOK, 4, kind="balanced")
    t = data.tokens[0]
    flags = {saes[0].site: [3, 5], saes[1].site: [0]}
    unedited = S.ablate(model, saes, {})
    np.testing.assert_array_equal(np.asarray(unedited(t)), np.asarray(model(t)))
    ablated = S.ablate(model, saes, flags)
    _, acts = ablated.run(t)
    # site 0 by hand: x − f_3 W_dec[3] − f_5 W_dec[5]
    x0 = model.run(t)[1][saes[0].site]
    f = saes[0].encode(x0)
    want0 = x0 - f[:, 3:4] * saes[0].W_dec[3] - f[:, 5:6] * saes[0].W_dec[5]
    np.testing.assert_allclose(np.asarray(acts[saes[0].site]), np.asarray(want0), atol=1e-5)
    # site 1 reads the edited stream: run layer 1 from want0 by patching it in
    patched = jc.interventions.intervene(model, {saes[0].site: jc.interventions.Patch(want0)})
    x1 = patched.run(t)[1][saes[1].site]
    want1 = x1 - saes[1].encode(x1)[:, 0:1] * saes[1].W_dec[0]
    np.testing.assert_allclose(np.asarray(acts[saes[1].site]), np.asarray(want1), atol=1e-5)
    # the same flags as (site, id) pairs
    pairs = S.ablate(model, saes, [(saes[0].site, 3), (saes[0].site, 5), (saes[1].site, 0)])
    np.testing.assert_allclose(np.asarray(pairs(t)), np.asarray(ablated(t)), atol=1e-6)


def test_ablate_bad_flags():
    model = tiny_model()
    saes = saes_for(model)
    with pytest.raises(ValueError, match=r"feature id 24 at blocks.0.hook_resid_post is out of "
                                         r"range: that SAE has d_sae=24"):  # fmt: skip
        S.ablate(model, saes, {saes[0].site: [2, 24]})
    with pytest.raises(ValueError, match=r"'blocks.0.hook_resid_pre' has no SAE.*did you mean"):
        S.ablate(model, saes, {"blocks.0.hook_resid_pre": [1]})
    with pytest.raises(ValueError, match="unknown site"):
        S.pooled(model, bios(TOK, 2), "blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="no SAE reads a site at or before"):
        S.upstream(saes[1:], "blocks.0.hook_resid_post")


def test_random_flags_are_uniform_over_all_features():
    saes = saes_for(tiny_model())
    flags = S.random_flags(saes, 30, seed=1)
    assert sum(len(v) for v in flags.values()) == 30
    for site, ids in flags.items():
        assert len(set(ids)) == len(ids) and all(0 <= i < 24 for i in ids)
    with pytest.raises(ValueError, match="n"):
        S.random_flags(saes, 49)


# ------------------------------------------------------------------------- attribution


def test_shift_effects_equal_brute_force_zero_ablation():
    """With method='exact', each feature's aggregated effect is the change of ±probe logit
    when it is zeroed at one position at a time (BOS excluded), summed, averaged by hand."""
    pytest.importorskip("jaxcirc.methods._feature_effects")
    model = tiny_model(1)
    saes = saes_for(model, d_sae=6, seed=2)
    data = bios(TOK, 2, kind="ambiguous")  # one professor, one nurse
    site = saes[1].site
    probe = S.train_probe(S.pooled(model, bios(TOK, 16), site), bios(TOK, 16).label, site=site)
    got = S.shift_effects(model, saes, probe, data, method="exact")
    seq = data.tokens.shape[1]

    @eqx.filter_jit
    def m(keeps, t, n, sign, k):  # ±probe logit of one bio, feature_keep `keeps[b]` at site k
        def one(keep):
            table = {s.site: jc.sae.Splice(s, feature_keep=keep if i == k else None)
                     for i, s in enumerate(saes)}  # fmt: skip
            x = jc.sae.splice(model, table).run(t)[1][site]
            return sign * probe(S._pool(x, t, n))

        return jax.vmap(one)(keeps)

    for k, sae in enumerate(saes):
        want = np.zeros(sae.d_sae)
        for i in range(len(data)):
            n, sign = int(data.lengths[i]), 1.0 if int(data.label[i]) == 0 else -1.0
            # one zeroed (position, feature) per row, every position; the last row edits nothing
            keeps = np.ones((seq, sae.d_sae, seq, sae.d_sae), np.float32)
            for p in range(seq):
                keeps[p, :, p][np.arange(sae.d_sae), np.arange(sae.d_sae)] = 0.0
            keeps = np.concatenate([keeps.reshape(-1, seq, sae.d_sae), np.ones_like(keeps[0, :1])])
            out = np.asarray(m(keeps, data.tokens[i], jnp.int32(n), jnp.float32(sign), k))
            delta = (out[:-1] - out[-1]).reshape(seq, sae.d_sae)
            want += delta[1:n].sum(0)  # the BOS (position 0) and the padding left out
        np.testing.assert_allclose(got[sae.site], want / len(data), atol=1e-4)
    # signs by other labels (e.g. gender): flipping every label negates
    flipped = S.shift_effects(model, saes, probe, data, method="exact", labels=1 - data.label)
    for sae in saes:
        np.testing.assert_allclose(flipped[sae.site], -got[sae.site], atol=1e-6)
    with pytest.raises(ValueError, match="labels must be 2 values of 0/1"):
        S.shift_effects(model, saes, probe, data, labels=[0, 2])


# ------------------------------------------------------------------------ gender proxy


def planted_gender_model():
    """A tiny model whose embeddings of she/her/She/Her carry +u and he/him/his/He/His −u, and
    SAEs whose feature 0 reads u: feature 0 is about gender, the rest are random."""
    model = tiny_model(3)
    u = np.zeros(16, np.float32)
    u[0] = 1.0
    W = np.asarray(model.embed.W_E).copy()
    W[:, 0] = 0.0
    for w, s in (("she", 1), ("her", 1), ("She", 1), ("Her", 1), ("he", -1), ("him", -1),
                 ("his", -1), ("He", -1), ("His", -1)):  # fmt: skip
        if w in TOK.vocab:
            W[TOK.vocab[w], 0] = 8.0 * s
    model = eqx.tree_at(lambda m: m.embed.W_E, model, jnp.asarray(W))
    saes = []
    for layer, k in enumerate(jax.random.split(jax.random.key(4), 2)):
        sae = jc.sae.init("relu", 16, 12, key=k, site=f"blocks.{layer}.hook_resid_post")
        W_enc = np.asarray(sae.W_enc).copy()
        W_enc[0] *= 0.0
        W_enc[:, 0] = 0.0
        W_enc[0, 0] = 1.0
        saes.append(eqx.tree_at(lambda s: s.W_enc, sae, jnp.asarray(W_enc)))
    return model, saes


def test_gender_proxy_flags_the_planted_gender_feature():
    model, saes = planted_gender_model()
    neutral = bios(TOK, 32, kind="neutral")
    scores = S.gender_scores(model, saes, neutral, chunk=16)
    for site, sc in scores.items():
        assert sc[0] > 2.0, (site, sc)
        assert np.sort(sc)[-2] < sc[0]
    ranked = [(s.site, j, 0.0) for s in saes for j in range(12)]
    flags = S.flag_gender(ranked, scores, threshold=float(max(np.sort(v)[-2] for v in
                                                              scores.values())) + 1e-6)  # fmt: skip
    assert flags == {s.site: [0] for s in saes}
    with pytest.raises(ValueError, match="needs the neutral bios"):
        S.gender_scores(model, saes, bios(TOK, 8))


# -------------------------------------------------------------------------- the table


def test_neuron_ablate_replaces_units_after_bos():
    model = tiny_model()
    data = bios(TOK, 4, kind="balanced")
    site = "blocks.0.hook_resid_post"
    means = {site: np.arange(16, dtype=np.float32)}
    m = S.neuron_ablate(model, {site: [2, 7]}, means, data.tokens.shape[1])
    x = np.asarray(m.run(data.tokens[0])[1][site])
    clean = np.asarray(model.run(data.tokens[0])[1][site])
    np.testing.assert_allclose(x[1:, [2, 7]], np.broadcast_to([2.0, 7.0], x[1:, [2, 7]].shape))
    np.testing.assert_allclose(x[0], clean[0])
    np.testing.assert_allclose(np.delete(x, [2, 7], 1), np.delete(clean, [2, 7], 1), atol=1e-6)


def test_shift_table_on_a_tiny_model(tmp_path):
    pytest.importorskip("jaxcirc.methods._feature_effects")
    model, saes = planted_gender_model()
    res = S.shift(model, saes, TOK, n_train=16, n_test=16, n_attribution=4, n_neutral=16,
                  top=6, steps=1, threshold=2.0, chunk=16)  # fmt: skip
    names = ["original probe", "SHIFT", "SHIFT + retrain", "random ablation",
             "random ablation + retrain", "neuron skyline", "neuron skyline + retrain", "oracle",
             "CircuitLasso", "CircuitLasso + retrain"]  # fmt: skip
    assert list(res.rows) == names
    for row in res.rows.values():
        for k in ("profession", "gender", "worst_group"):
            assert 0.0 <= row[k] <= 100.0
    n_flag = sum(len(v) for v in res.flags["SHIFT"].values())
    assert res.rows["SHIFT"]["features"] == n_flag
    # "familiar": balanced bios in the training wording (seed + 1), recomputed independently
    sets = [bios(TOK, 16, kind=k, split=sp, seed=sd) for k, sp, sd in
            (("ambiguous", "train", 0), ("balanced", "train", 0), ("neutral", "train", 0),
             ("balanced", "test", 0), ("balanced", "train", 1))]  # fmt: skip
    seq = max(d.tokens.shape[1] for d in sets)
    amb, familiar = S._pad_to(sets[0], seq), S._pad_to(sets[4], seq)
    site = saes[-1].site
    probe = S.train_probe(S.pooled(model, amb, site, chunk=16), amb.label, C=1e-3, site=site)
    want = S.accuracy(probe, S.pooled(model, familiar, site, chunk=16), familiar)
    del want["frames"]
    got = res.rows["original probe"]["familiar"]
    assert got["groups"] == pytest.approx(want.pop("groups"))
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert not set(familiar.texts) & set(sets[1].texts)  # not the oracle's training bios
    assert sum(len(v) for v in res.flags["random"].values()) == n_flag
    assert len(res.top) == 6
    flagged = {(r["site"], r["feature"]) for r in res.top if r["gender_score"] >= 2.0}
    assert flagged == {(s, i) for s, v in res.flags["SHIFT"].items() for i in v}
    want = S.bios_fvu(model, saes, bios(TOK, 16, kind="balanced", split="test", seed=0))
    got = res.info["bios_fvu_test"]  # the same over SHIFT's own (padded) test bios
    assert got and set(got) <= set(want)
    np.testing.assert_allclose([got[k] for k in got], [want[k] for k in got], rtol=1e-4)
    json.dumps(res.to_json())
    # the CLI's writer: JSON (the table) and a PNG
    from jaxcirc.cli._shift import write

    js, png = write({"model": "tiny", **res.to_json()}, tmp_path / "out")
    assert json.loads(js.read_text())["rows"] == json.loads(json.dumps(res.rows))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_iterated_shift_attributes_the_retrained_probe_on_the_ablated_model(monkeypatch):
    """Round 2 attributes the probe retrained in round 1 on the model with round 1's flags
    ablated, skips what is flagged, adds the next gendered feature; round 3 finds nothing new
    and stops. The attribution is scripted (real effects plus a planted lead) so each round's
    top feature is known; the planted gender features are feature 0 of each site."""
    model, saes = planted_gender_model()
    l0, l1 = (s.site for s in saes)
    real, calls = S.shift_effects, []

    def scripted(m, used, probe, data, **kw):
        out = {k: v.copy() for k, v in real(m, used, probe, data, **kw).items()}
        calls.append((m, probe))
        out[l1][0] += 100.0  # round 1's lead, flagged there; skipped after
        if len(calls) > 1:
            out[l0][0] += 50.0
        return out

    monkeypatch.setattr(S, "shift_effects", scripted)
    res = S.shift(model, saes, TOK, n_train=16, n_test=16, n_attribution=4, n_neutral=16,
                  top=1, steps=1, threshold=2.0, chunk=16, rounds=5)  # fmt: skip
    assert res.flags["SHIFT"] == {l1: [0]}
    assert res.flags["iterated SHIFT"] == {l1: [0], l0: [0]}
    assert [r["flagged"] for r in res.info["rounds"]] == [1, 1, 0]
    assert len(calls) == 3
    assert res.rows["iterated SHIFT"]["features"] == 2
    names = list(res.rows)
    assert names[1:5] == ["SHIFT", "SHIFT + retrain", "iterated SHIFT",
                          "iterated SHIFT + retrain"]  # fmt: skip
    # round 2 ran on the model with L1:0 zeroed, with the probe retrained on it
    t = bios(TOK, 4, kind="balanced").tokens[0]
    want = S.ablate(model, saes, {l1: [0]}).run(t)[1][l1]
    np.testing.assert_allclose(np.asarray(calls[1][0].run(t)[1][l1]), np.asarray(want),
                               atol=1e-6)  # fmt: skip
    sets = [bios(TOK, 16, kind=k, split=sp, seed=0) for k, sp in
            (("ambiguous", "train"), ("balanced", "train"), ("neutral", "train"),
             ("balanced", "test"))]  # fmt: skip
    amb = S._pad_to(sets[0], max(d.tokens.shape[1] for d in sets))
    x = S.pooled(S.ablate(model, saes, {l1: [0]}), amb, l1, chunk=16)
    retrained = S.train_probe(x, amb.label, C=1e-3, site=l1)
    np.testing.assert_allclose(np.asarray(calls[1][1].w), np.asarray(retrained.w), atol=1e-5)
    assert not np.allclose(np.asarray(calls[1][1].w), np.asarray(calls[0][1].w), atol=1e-5)
    with pytest.raises(ValueError, match="rounds"):
        S.shift(model, saes, TOK, n_train=16, n_test=16, n_attribution=4, rounds=0)


def test_iterated_shift_that_finds_nothing_new_repeats_shifts_rows(monkeypatch):
    """A second round whose top feature is already flagged adds nothing: the iterated rows are
    SHIFT's (only the time differs), not a recomputation."""
    model, saes = planted_gender_model()
    l1 = saes[1].site
    real = S.shift_effects

    def scripted(m, used, probe, data, **kw):
        out = {k: v.copy() for k, v in real(m, used, probe, data, **kw).items()}
        out[l1][0] += 100.0  # flagged in round 1; the next best is not gendered
        return out

    runs, chunked = [], S._chunked

    def counted(*a, desc="", **kw):
        runs.append(desc)
        return chunked(*a, desc=desc, **kw)

    monkeypatch.setattr(S, "shift_effects", scripted)
    monkeypatch.setattr(S, "_chunked", counted)
    res = S.shift(model, saes, TOK, n_train=16, n_test=16, n_attribution=4, n_neutral=16,
                  top=1, steps=1, threshold=2.0, chunk=16, rounds=3)  # fmt: skip
    assert [r["flagged"] for r in res.info["rounds"]] == [1, 0]
    assert "SHIFT: test" in runs and not [d for d in runs if d.startswith("iterated")]
    assert res.flags["iterated SHIFT"] == res.flags["SHIFT"] == {l1: [0]}
    for name in ("SHIFT", "SHIFT + retrain"):
        got, want = dict(res.rows[f"iterated {name}"]), dict(res.rows[name])
        assert got.pop("seconds") >= want.pop("seconds")
        assert got == want


def test_cli_shift_help_and_bad_input(tmp_path, capsys):
    from jaxcirc.cli import main

    assert main(["shift", "--help"]) == 0
    assert "--probe-layer" in capsys.readouterr().out
    assert main(["shift", "--saes", str(tmp_path / "none")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["shift", "--saes", str(tmp_path)]) == 1
    assert "holds no SAE folder" in capsys.readouterr().err
    for sae in saes_for(tiny_model()):
        jc.sae.save(tmp_path / sae.site, sae)
    assert main(["shift", "--saes", str(tmp_path), "--probe-layer", "4"]) == 1
    assert "--probe-layer 4 has no SAE; SAE layers: [0, 1]" in capsys.readouterr().err
    assert main(["shift", "--saes", str(tmp_path), "--top", "0"]) == 2
    assert main(["shift", "--saes", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds: must be at least 1" in capsys.readouterr().err


def test_cli_shift_runs_and_prints_every_row(tmp_path, capsys, monkeypatch):
    """The command's whole path on a tiny model (its loaders stubbed: no tokenizer file): the
    table printed row by row with the groups and the training-wording worst group, and the
    JSON written with the same rows."""
    from jaxcirc.cli import main

    model, saes = planted_gender_model()
    for sae in saes:
        jc.sae.save(tmp_path / "saes" / sae.site, sae)
    monkeypatch.setattr(jc, "load", lambda path: model)
    monkeypatch.setattr(jc.io, "load_tokenizer", lambda path: TOK)
    args = ["shift", "--saes", str(tmp_path / "saes"), "--model", "tiny", "--n-train", "16",
            "--n-test", "16", "--n-attribution", "4", "--n-neutral", "16", "--top", "4",
            "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "out" / "shift.json").read_text())["rows"]
    for name, row in rows.items():
        line = next(x for x in out.splitlines() if x.startswith(f"{name} "))
        assert f"worst group {row['worst_group']:5.1f}" in line
        assert f"training wording {row['familiar']['worst_group']:5.1f}" in line


def test_cli_shift_reads_saes_from_several_folders_and_refuses_two_at_one_site(tmp_path):
    from jaxcirc.io import load_saes

    saes = saes_for(tiny_model())
    for i, sae in enumerate(saes):
        jc.sae.save(tmp_path / f"part{i}" / "sae", sae)
    loaded = load_saes([tmp_path / f"part{i}" for i in range(len(saes))])
    assert [s.site for s in loaded] == sorted(s.site for s in saes)
    jc.sae.save(tmp_path / "again" / "sae", saes[0])
    with pytest.raises(ValueError, match=f"two SAEs read {saes[0].site}.*part0.*again"):
        load_saes([tmp_path / "part0", tmp_path / "again"])


def test_an_embedding_sae_is_upstream_of_every_block_and_its_ablation_reaches_the_probe():
    """`hook_embed` counts as layer −1: SHIFT splices it with the block SAEs, and zeroing its
    features changes the embedding the blocks read (by hand: x − f_i W_dec[i])."""
    model = tiny_model()
    embed = jc.sae.init("relu", 16, 24, key=jax.random.key(5), site="hook_embed")
    saes = [embed, *saes_for(model)]
    assert [s.site for s in S.upstream(saes, saes[1].site)] == ["hook_embed", saes[1].site]
    assert S._layer("hook_embed") == -1
    with pytest.raises(ValueError, match="neither an embedding.*nor in a block"):
        S._layer("ln_final.hook_normalized")
    t = bios(TOK, 4, kind="balanced").tokens[0]
    _, acts = S.ablate(model, saes, {"hook_embed": [2]}).run(t)
    x = model.run(t)[1]["hook_embed"]
    want = x - embed.encode(x)[:, 2:3] * embed.W_dec[2]
    np.testing.assert_allclose(np.asarray(acts["hook_embed"]), np.asarray(want), atol=1e-5)
    patched = jc.interventions.intervene(model, {"hook_embed": jc.interventions.Patch(want)})
    x0 = patched.run(t)[1][saes[1].site]
    np.testing.assert_allclose(np.asarray(acts[saes[1].site]), np.asarray(x0), atol=2e-3)


def test_bios_fvu_is_the_reconstruction_error_over_the_bios_tokens_without_bos():
    model, saes = tiny_model(), saes_for(tiny_model())
    data = bios(TOK, 4, kind="balanced")
    got = S.bios_fvu(model, saes, data)
    for sae in saes:
        rows = []
        for t, n in zip(data.tokens, data.lengths):
            rows.append(np.asarray(model.run(t)[1][sae.site])[1 : int(n)])
        x = np.concatenate(rows).astype(np.float64)
        err = x - np.asarray(sae.decode(sae.encode(jnp.asarray(x, jnp.float32))))
        want = (err**2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert got[sae.site] == pytest.approx(want, rel=1e-4)


def test_effects_signed_by_gender_rank_the_planted_gender_feature_first():
    model, saes = planted_gender_model()
    amb = S._pad_to(bios(TOK, 32, kind="ambiguous"), 48)
    bal = S._pad_to(bios(TOK, 32, kind="balanced"), 48)
    site = saes[1].site
    probe = S.train_probe(S.pooled(model, amb, site), amb.label, C=1e-3, site=site)
    effects = S.shift_effects(model, saes, probe, bal, steps=5, labels=bal.gender)
    for sae in saes:  # feature 0 reads the planted gender direction; the rest are random
        assert int(np.argmax(effects[sae.site])) == 0, (sae.site, effects[sae.site])
