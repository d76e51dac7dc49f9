"""Interchange interventions: the high-level causal model, IIA against hand-computed values,
multi-source interchange, DAS recovering a planted subspace, and bad-input errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcirc.methods import Alignment, CausalModel, das, iia
from jaxcirc.models._site import SiteRef
from jaxcirc.zoo._toy_sum import D, N, toy_model

sum_model = toy_model  # the zoo's planted S = a + b network (residual [a, b, 1, noise…])


HIGH = CausalModel(
    ["a", "b", "A", "B", "S"],
    {"A": ["a"], "B": ["b"], "S": ["A", "B"]},
    {"A": lambda a: a, "B": lambda b: b, "S": jnp.add},
    ["a", "b"],
    "S",
)
ANSWERS = jnp.arange(2 * N - 1)
ALL = np.array(list(itertools.product(range(N), repeat=2)))  # every (a, b)


def data(pairs):
    """Tokens [n, 1] and high-level inputs of each side of `pairs` (index arrays into ALL)."""
    ab = ALL[pairs]
    return jnp.asarray(N * ab[:, 0] + ab[:, 1])[:, None], {"a": ab[:, 0], "b": ab[:, 1]}


def all_pairs():
    base, source = np.divmod(np.arange(len(ALL) ** 2), len(ALL))
    return data(base), data(source)


def test_causal_model_run_do_and_interchange():
    assert int(HIGH.run({"a": 1, "b": 2})["S"]) == 3
    assert int(HIGH.run({"a": 1, "b": 2}, interventions={"A": 5})["S"]) == 7
    assert int(HIGH.interchange({"a": 1, "b": 2}, {"A": {"a": 3, "b": 0}})["S"]) == 5
    multi = HIGH.interchange({"a": 1, "b": 2}, {"A": {"a": 3, "b": 0}, "B": {"a": 0, "b": 0}})
    assert int(multi["S"]) == 3
    batch = HIGH.run({"a": jnp.arange(3), "b": jnp.ones(3, int)})
    np.testing.assert_array_equal(batch["S"], [1, 2, 3])


def test_iia_hand_computed_on_all_pairs():
    model = sum_model()
    (bt, bi), (st, si) = all_pairs()
    right = {"A": {"site": SiteRef("resid_post", 0), "position": 0, "unit": 0}}
    res = iia(model, HIGH, right, bt, st, base_inputs=bi, source_inputs=si, answer_tokens=ANSWERS)
    assert res.accuracy == 1.0
    # wrong: A read from unit 1 (b). Model: a_base + b_src; high level: a_src + b_base. Equal
    # iff a_base − b_base = a_src − b_src; a − b over 4×4 has counts 1,2,3,4,3,2,1 -> 44/256.
    wrong = Alignment({"A": {"site": "blocks.0.hook_resid_pre", "position": 0, "unit": 1}})
    res = iia(model, HIGH, wrong, bt, st, base_inputs=bi, source_inputs=si, answer_tokens=ANSWERS)
    assert res.accuracy == pytest.approx(44 / 256)
    # the same through label_fn and through a whole-site subspace basis along unit 0
    sub = {"A": {"site": SiteRef("resid_pre", 0), "basis": jnp.eye(D)[:1]}}
    res = iia(
        model,
        HIGH,
        sub,
        bt,
        st,
        base_inputs=bi,
        source_inputs=si,
        label_fn=lambda logits: jnp.argmax(logits[ANSWERS]),
    )
    assert res.accuracy == 1.0


def test_iia_multi_source():
    model = sum_model()
    rng = np.random.default_rng(0)
    b, s1, s2 = (rng.integers(0, len(ALL), 200) for _ in range(3))
    (bt, bi), (t1, i1), (t2, i2) = data(b), data(s1), data(s2)
    site = SiteRef("resid_post", 0)
    right = {"A": {"site": site, "unit": 0}, "B": {"site": site, "unit": 1}}
    kw = dict(base_inputs=bi, source_inputs={"A": i1, "B": i2}, answer_tokens=ANSWERS)
    res = iia(model, HIGH, right, bt, {"A": t1, "B": t2}, **kw)
    assert res.accuracy == 1.0
    np.testing.assert_array_equal(res.expected, i1["a"] + i2["b"])
    swapped = {"A": {"site": site, "unit": 1}, "B": {"site": site, "unit": 0}}
    res = iia(model, HIGH, swapped, bt, {"A": t1, "B": t2}, **kw)
    # the model now outputs a_s2 + b_s1 while the high level says a_s1 + b_s2
    expected = np.mean(i2["a"] + i1["b"] == i1["a"] + i2["b"])
    assert res.accuracy == pytest.approx(expected) and expected < 0.5
    # single source for both variables: everything comes from the source -> S(source)
    res = iia(model, HIGH, right, bt, t1, base_inputs=bi, source_inputs=i1, answer_tokens=ANSWERS)
    assert res.accuracy == 1.0
    np.testing.assert_array_equal(res.predicted, i1["a"] + i1["b"])


def test_das_recovers_planted_subspace():
    q = np.linalg.qr(np.random.default_rng(1).normal(size=(D, D)))[0].astype(np.float32)
    model = sum_model(rotation=q, nuisance=1.0)
    rng = np.random.default_rng(2)
    base, source = rng.integers(0, len(ALL), 512), rng.integers(0, len(ALL), 512)
    (bt, bi), (st, si) = data(base), data(source)
    loc = {"site": SiteRef("resid_post", 0), "position": 0}
    result = das(
        model,
        HIGH,
        "A",
        loc,
        bt,
        st,
        base_inputs=bi,
        source_inputs=si,
        answer_tokens=ANSWERS,
        k=1,
        steps=200,
        learning_rate=0.05,
        key=jax.random.key(0),
    )
    assert result.test_iia >= 0.95
    # principal angle between the learned and the planted direction (row 0 of q)
    cos = np.linalg.svd(result.basis @ q[:1].T, compute_uv=False).min()
    assert cos >= 0.95
    np.testing.assert_allclose(result.rotation @ result.rotation.T, np.eye(D), atol=1e-4)
    random_basis = jnp.asarray(np.linalg.qr(rng.normal(size=(D, 1)))[0].T)
    rand = iia(
        model,
        HIGH,
        {"A": {**loc, "basis": random_basis}},
        bt,
        st,
        base_inputs=bi,
        source_inputs=si,
        variables="A",
        answer_tokens=ANSWERS,
    )
    assert rand.accuracy < 0.6


def test_bad_inputs_raise_clear_errors():
    model = sum_model()
    (bt, bi), (st, si) = data(np.arange(4)), data(np.arange(4, 8))
    kw = dict(base_inputs=bi, source_inputs=si, answer_tokens=ANSWERS)
    with pytest.raises(
        ValueError, match="'A' is aligned to a missing site.*no site.*did you mean 'attn_out'"
    ):
        iia(model, HIGH, {"A": SiteRef("mlp_out", 0)}, bt, st, **kw)  # attention-only model
    with pytest.raises(ValueError, match="did you mean 'blocks.0.hook_resid_post'"):
        iia(model, HIGH, {"A": "blocks.0.hook_resid_pots"}, bt, st, **kw)
    with pytest.raises(ValueError, match="'BB' is not a variable.*did you mean 'B'"):
        iia(model, HIGH, {"BB": SiteRef("resid_pre", 0)}, bt, st, **kw)
    with pytest.raises(ValueError, match="rows but there are 3 model inputs"):
        iia(model, HIGH, {"A": SiteRef("resid_pre", 0)}, bt[:3], st[:3], **kw)
    with pytest.raises(ValueError, match="unit 16 out of range for variable .A.*nearest valid: 15"):
        iia(model, HIGH, {"A": {"site": SiteRef("resid_pre", 0), "unit": 16}}, bt, st, **kw)
    with pytest.raises(ValueError, match="lacks input variables \\['b'\\]"):
        iia(
            model,
            HIGH,
            {"A": SiteRef("resid_pre", 0)},
            bt,
            st,
            base_inputs={"a": bi["a"]},
            source_inputs=si,
            answer_tokens=ANSWERS,
        )
    with pytest.raises(ValueError, match="exactly one of answer_tokens"):
        iia(model, HIGH, {"A": SiteRef("resid_pre", 0)}, bt, st, base_inputs=bi, source_inputs=si)
    with pytest.raises(ValueError, match="readout_position 1 out of range.*nearest valid: 0"):
        iia(model, HIGH, {"A": SiteRef("resid_pre", 0)}, bt, st, readout_position=1, **kw)
    with pytest.raises(TypeError, match="readout_position must be an int"):
        iia(model, HIGH, {"A": SiteRef("resid_pre", 0)}, bt, st, readout_position=0.0, **kw)
    with pytest.raises(ValueError, match="cycle"):
        CausalModel(["x", "y"], {"x": ["y"], "y": ["x"]}, {"x": abs, "y": abs}, [], "x")
    with pytest.raises(ValueError, match="did you mean 'A'"):
        HIGH.run({"a": 1, "b": 1}, interventions={"AA": 1})


def test_cli_iia_writes_table(tmp_path, capsys):
    import json

    from jaxcirc.cli import main

    assert (
        main(
            [
                "iia",
                "--out",
                str(tmp_path),
                "--n-pairs",
                "64",
                "--das-steps",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "iia_toy.json").read_text())["rows"]
    assert rows[0]["iia"] == 1.0 and rows[1]["iia"] < 0.5 and rows[2]["iia"] == 1.0
    assert (tmp_path / "iia_toy.png").stat().st_size > 0
    assert "IIA" in capsys.readouterr().out
    assert main(["iia", "--n-pairs", "2", "--out", str(tmp_path)]) == 2


def test_tracr_frac_prevs_alignment():
    """IIA of the alignment tracr's compiler defines (each position's `tokens == "x"` value in
    the `map` residual dim before layer 1) is 1.0; the `tokens:x` dim (read by nobody) is not.
    Runs only where tracr is installed (`pip install tracr-pypi`; not a jaxcirc dependency)."""
    pytest.importorskip("tracr")
    from tracr.compiler import compiling, lib
    from tracr.rasp import rasp

    length = 5
    compiled = compiling.compile_rasp_to_model(
        lib.make_frac_prevs(rasp.tokens == "x"),
        vocab={"w", "x", "y", "z"},
        max_seq_len=length,
        compiler_bos="BOS",
    )
    from jaxcirc.io import from_tracr

    labels = [str(label) for label in compiled.residual_labels]
    model, circuit = from_tracr(compiled)  # numerical output: logit column 0 holds the value
    assert ("L1H0", "logits") in circuit.edges
    enc = compiled.input_encoder.encoding_map
    rng = np.random.default_rng(0)
    words = rng.choice(["w", "x", "y", "z"], size=(300, length))
    for row in words[:10]:
        ref = np.asarray(compiled.apply(["BOS", *row]).decoded[1:], np.float32)
        ours = model(jnp.asarray([enc["BOS"], *(enc[w] for w in row)]))[1:, 0]
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    tokens = jnp.asarray([[enc["BOS"], *(enc[w] for w in row)] for row in words])
    names = [f"x{i}" for i in range(1, length + 1)]
    mechanisms = {
        v: (lambda i: lambda t: (t[i] == enc["x"]).astype(jnp.int32))(i + 1)
        for i, v in enumerate(names)
    }
    mechanisms["frac"] = lambda *xs: jnp.round(60 * jnp.mean(jnp.stack(xs))).astype(jnp.int32)
    hl = CausalModel(
        ["tokens", *names, "frac"],
        {**{v: ["tokens"] for v in names}, "frac": names},
        mechanisms,
        ["tokens"],
        "frac",
    )
    source = tokens[rng.permutation(len(tokens))]
    site = SiteRef("resid_pre", 1)
    map_dim = next(i for i, label in enumerate(labels) if label.startswith("map"))
    kw = dict(
        base_inputs={"tokens": tokens},
        source_inputs={"tokens": source},
        label_fn=lambda logits: jnp.round(60 * logits[0]).astype(jnp.int32),
    )
    for j, v in enumerate(names):
        right = {v: {"site": site, "position": j + 1, "unit": map_dim}}
        wrong = {v: {"site": site, "position": j + 1, "unit": labels.index("tokens:x")}}
        assert iia(model, hl, right, tokens, source, variables=v, **kw).accuracy >= 0.99
        assert iia(model, hl, wrong, tokens, source, variables=v, **kw).accuracy < 0.8
