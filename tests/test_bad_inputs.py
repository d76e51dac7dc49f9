"""No silent wrong answers: every bad index, token id, non-finite result and bad setting fails
with an error of a stated type whose message names the bad value (and, for ranges, the
nearest valid choice), eagerly and under `jit` and `vmap`."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc import methods
from jaxcirc import metrics as M
from jaxcirc._finite import NonFiniteError
from jaxcirc.graph import EdgeMask, ablation_values, graph, masked_logits, source_outputs
from jaxcirc.zoo._toy_sum import N, toy_model

Runtime = jax.errors.JaxRuntimeError  # what a check inside a compiled program raises
V, SEQ = 20, 6
MODEL = tiny("gpt2", n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=V, n_ctx=16)
NAN_MODEL = eqx.tree_at(
    lambda m: m.blocks[0].attn.W_V, MODEL, MODEL.blocks[0].attn.W_V.at[1, 2, 3].set(jnp.nan)
)
NAN_WEIGHT = r"non-finite weight: blocks\.0\.attn\.W_V \[1, 2, 3\] is nan"
CLEAN = jax.random.randint(jax.random.key(1), (2, SEQ), 0, V)
CORRUPT = jax.random.randint(jax.random.key(2), (2, SEQ), 0, V)
BAD = CORRUPT.at[1, 3].set(V + 3)  # id 23 at row 1, position 3
BAD_ID = r"token id 23 at row 1, position 3 is outside \[0, d_vocab=20\) \(nearest valid id: 19\)"
BIG = np.asarray(CORRUPT, np.int64)
BIG[1, 3] = 2**32 + 5  # int32 would wrap it to 5
BIG_ID = r"token id 4294967301 at row 1, position 3 is outside"
Z, POST = "blocks.0.attn.hook_z", "blocks.0.mlp.hook_post"
SUBJECT = jnp.zeros((2, SEQ), bool).at[:, 1].set(True)


def metric(logits):
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


def per_example(logits):
    return logits[:, -1, 3] - logits[:, -1, 7]


def logits():
    return jax.random.normal(jax.random.key(3), (3, SEQ, V))


def zeroed(**selection):
    """The model with `Zero(**selection)` at the attention's z site (or `site=`)."""
    site = selection.pop("site", Z)
    return jc.intervene(MODEL, {site: jc.Zero(**selection)})


def run_zeroed(site=Z, axis="head"):
    """A function of a (traced) index: the model with that index zeroed, run on CLEAN[0]."""
    return lambda i: jc.intervene(MODEL, {site: jc.Zero(**{axis: i})})(CLEAN[0])


# the zoo's planted S = a + b network and its high-level model (Geiger et al. 2021)
from test_compile_once import HIGH, INPUTS, LOC, TOKENS  # noqa: E402

ANSWERS = np.arange(2 * N - 1)


def iia(**kw):
    model = kw.pop("model", toy_model())
    kw = {"base_inputs": INPUTS[0], "source_inputs": INPUTS[1], "answer_tokens": ANSWERS, **kw}
    alignment = kw.pop("alignment", {"A": LOC})
    return methods.iia(model, HIGH, alignment, *kw.pop("tokens", TOKENS), **kw)


def das(**kw):
    kw = {"base_inputs": INPUTS[0], "source_inputs": INPUTS[1], "answer_tokens": ANSWERS,
          "steps": 1, "batch_size": 4, "test_fraction": 0.5, "key": jax.random.key(0),
          **kw}  # fmt: skip
    return methods.das(toy_model(), HIGH, "A", LOC, *TOKENS, **kw)


def lasso(**kw):
    return methods.circuit_lasso(MODEL, CLEAN, CORRUPT, alpha=0.01, **kw)


def trace(**kw):
    kw = {"key": jax.random.key(0), "n_samples": 1, "kinds": ("resid",), "window": 1, **kw}
    tokens, answer = kw.pop("tokens", CLEAN), kw.pop("answer", jnp.array([1, 2]))
    return methods.causal_trace(kw.pop("model", MODEL), tokens, SUBJECT, answer, **kw)


def ones():
    return EdgeMask.ones(graph(MODEL))


# ---------------------------------------------------------------- 1. indices: never clamped
INDICES = {
    # interventions: concrete indices now, traced ones when the site runs
    "position array": (
        lambda: zeroed(position=jnp.array([100]))(CLEAN[0]),
        ValueError,
        r"position 100 out of range for site blocks\.0\.attn\.hook_z .*"
        r"nearest valid: 5",
    ),
    "position int": (
        lambda: zeroed(position=100)(CLEAN[0]),
        ValueError,
        r"position 100 out of range.*nearest valid: 5",
    ),
    "position negative": (
        lambda: zeroed(position=-7)(CLEAN[0]),
        ValueError,
        r"position -7 out of range.*nearest valid: -6",
    ),
    "head array": (
        lambda: zeroed(head=jnp.array([7])),
        ValueError,
        r"head 7 out of range.*head axis has size 2.*nearest valid: 1",
    ),
    "unit int": (
        lambda: zeroed(site=POST, unit=16),
        ValueError,
        r"unit 16 out of range for site blocks\.0\.mlp\.hook_post.*nearest valid: 15",
    ),
    "head jit": (
        lambda: jax.jit(run_zeroed())(jnp.array([7])),
        Runtime,
        r"head 7 out of range for site blocks\.0\.attn\.hook_z.*nearest valid: 1",
    ),
    "head vmap": (
        lambda: jax.vmap(run_zeroed())(jnp.array([[0], [7]])),
        Runtime,
        r"head 7 out of range",
    ),
    "head negative jit": (
        lambda: jax.jit(run_zeroed())(jnp.array(-3)),
        Runtime,
        r"head -3 out of range.*nearest valid: -2",
    ),
    "unit jit": (
        lambda: jax.jit(run_zeroed(POST, "unit"))(jnp.array([3, 16])),
        Runtime,
        r"unit 16 out of range.*nearest valid: 15",
    ),
    "position jit": (
        lambda: jax.jit(run_zeroed(axis="position"))(jnp.array(SEQ)),
        Runtime,
        r"position 6 out of range.*nearest valid: 5",
    ),
    "position vmap jit": (
        lambda: jax.jit(jax.vmap(run_zeroed(axis="position")))(jnp.array([[1], [9]])),
        Runtime,
        r"position 9 out of range",
    ),
    # metrics: positions against seq, ids against d_vocab, both from the logits' shape
    "metric position": (
        lambda: M.logit_diff(logits(), 3, 7, position=100),
        ValueError,
        r"position 100 out of range for logits of 6 positions.*nearest valid: 5",
    ),
    "metric position negative": (
        lambda: M.logit_diff(logits(), 3, 7, position=-100),
        ValueError,
        r"position -100 out of range.*nearest valid: -6",
    ),
    "metric per-example position": (
        lambda: M.prob_diff(logits(), 3, 7, position=jnp.array([1, 2, 6])),
        ValueError,
        r"position 6 out of range",
    ),
    "metric position jit": (
        lambda: jax.jit(lambda p: M.logit_diff(logits(), 3, 7, position=p))(11),
        Runtime,
        r"position 11 out of range.*nearest valid: 5",
    ),
    "metric answer": (
        lambda: M.logit_diff(logits(), jnp.array([1, 2, 23]), 7),
        ValueError,
        r"answer id 23 at example 2 is outside \[0, d_vocab=20\).*nearest valid "
        r"id: 19",
    ),
    "metric negative id": (
        lambda: M.logit_diff(logits(), 3, jnp.array([4, -1, 6])),
        ValueError,
        r"distractor id -1 at example 1 .*negative ids pad a set",
    ),
    "metric empty set": (
        lambda: M.logit_diff(logits(), 3, jnp.array([[4, -1], [-1, -1], [6, 7]])),
        ValueError,
        r"distractor set of example 1 has no id",
    ),
    "metric cross entropy": (
        lambda: M.cross_entropy(logits(), 20),
        ValueError,
        r"answer id 20 is outside",
    ),
    "metric kl position": (
        lambda: M.kl_to_clean(logits(), logits(), position=6),
        ValueError,
        r"position 6 out of range",
    ),
    "metric answer jit": (
        lambda: jax.jit(M.prob_diff)(logits(), jnp.array([1, 2, 60]), 7),
        Runtime,
        r"answer id 60 at example 2 is outside",
    ),
    "metric answer vmap": (
        lambda: jax.vmap(lambda x, a: M.logit_diff(x[None], a[None], 7))(
            logits(), jnp.array([1, 77, 2])
        ),
        Runtime,
        r"answer id 77 at row 1",
    ),
    "bind position": (
        lambda: M.bind(M.logit_diff, answer=3, distractor=7, position=100).positions(2, SEQ),
        ValueError,
        r"position 100 out of range",
    ),
    "sweep logit_positions": (
        lambda: jc.patching.sweep(MODEL, CLEAN, CORRUPT, metric, logit_positions=[100]),
        ValueError,
        r"logit_positions 100 out of range for 6 positions.*nearest valid: 5",
    ),
    "sweep logit_positions negative": (
        lambda: jc.patching.sweep(MODEL, CLEAN, CORRUPT, metric, logit_positions=[-100]),
        ValueError,
        r"logit_positions -100 out of range.*nearest valid: -6",
    ),
    "sweep declared position": (
        lambda: jc.patching.sweep(
            MODEL, CLEAN, CORRUPT, M.bind(M.logit_diff, answer=3, distractor=7, position=9)
        ),
        ValueError,
        r"position 9 out of range",
    ),
    "iia answer_tokens": (
        lambda: iia(answer_tokens=[3, 40]),
        ValueError,
        r"answer_tokens\[1\] = 40 is outside \[0, d_vocab=\d+\)",
    ),
    "iia readout_position": (
        lambda: iia(readout_position=100),
        ValueError,
        r"readout_position 100 out of range.*nearest valid: 0",
    ),
    "iia aligned unit": (
        lambda: iia(alignment={"A": {**LOC, "unit": [0, 999]}}),
        ValueError,
        r"unit 999 out of range for variable 'A'",
    ),
    "das answer_tokens": (
        lambda: das(answer_tokens=[-1, 2]),
        ValueError,
        r"answer_tokens\[0\] = -1 is outside.*nearest valid id: 0",
    ),
    "trace answer": (
        lambda: trace(answer=jnp.array([1, 23])),
        ValueError,
        r"answer id 23 of prompt 1 is outside",
    ),
    "subject position": (
        lambda: methods.subject_mask(SEQ, [100]),
        ValueError,
        r"subject position 100 .*nearest valid: 5",
    ),
}

# ---------------------------------------------------------------- 2. token ids on every path
TOKENS_CASES = {
    "forward": (
        lambda: MODEL(BAD[1]),
        ValueError,
        r"token id 23 at position 3 is outside.*nearest valid id: 19",
    ),
    "forward int64": (lambda: MODEL(BIG[1]), ValueError, r"token id 4294967301 at position 3"),
    "forward python int": (
        lambda: MODEL([1, 2, 2**70]),
        ValueError,
        r"token id 1180591620717411303424 at position 2",
    ),
    "forward jit": (
        lambda: jax.jit(lambda t: MODEL(t))(BAD[1]),
        Runtime,
        r"token id 23 at position 3 is outside",
    ),
    "forward vmap": (lambda: jax.vmap(MODEL)(BAD), Runtime, BAD_ID),
    "forward jit vmap": (lambda: jax.jit(jax.vmap(MODEL))(BAD), Runtime, BAD_ID),
    "source_outputs jit": (
        lambda: jax.jit(lambda t: source_outputs(MODEL, t))(BAD),
        Runtime,
        BAD_ID,
    ),
    "eap": (lambda: methods.eap(MODEL, CLEAN, BAD, metric), ValueError, "corrupt: " + BAD_ID),
    "eap int64": (lambda: methods.eap(MODEL, BIG, CORRUPT, metric), ValueError, "clean: " + BIG_ID),
    "eap_ig": (lambda: methods.eap_ig(MODEL, CLEAN, BAD, metric, steps=2), ValueError, BAD_ID),
    "atp": (lambda: methods.atp(MODEL, CLEAN, BAD, metric), ValueError, BAD_ID),
    "edge_patching": (lambda: methods.edge_patching(MODEL, CLEAN, BAD, metric), ValueError, BAD_ID),
    "acdc": (lambda: methods.acdc(MODEL, CLEAN, BAD), ValueError, "corrupt: " + BAD_ID),
    "learned_mask": (lambda: methods.learned_mask(MODEL, CLEAN, BAD, steps=1), ValueError, BAD_ID),
    "learned_mask int64": (
        lambda: methods.learned_mask(MODEL, CLEAN, BIG, steps=1),
        ValueError,
        BIG_ID,
    ),
    "faithfulness": (lambda: M.faithfulness(MODEL, CLEAN, BAD, metric, ones()), ValueError, BAD_ID),
    "masked_logits": (lambda: masked_logits(MODEL, BAD, ones(), None), ValueError, BAD_ID),
    "ablation_values": (lambda: ablation_values(MODEL, CLEAN, BIG, "mean"), ValueError, BIG_ID),
    "sweep": (lambda: jc.patching.sweep(MODEL, CLEAN, BAD, metric), ValueError, BAD_ID),
    "sweep int64": (lambda: jc.patching.sweep(MODEL, BIG, CORRUPT, metric), ValueError, BIG_ID),
    "causal_trace": (lambda: trace(tokens=BAD), ValueError, BAD_ID),
    "path_patch": (lambda: methods.path_patch(MODEL, CLEAN, BAD, metric), ValueError, BAD_ID),
    "circuit_lasso": (lambda: methods.circuit_lasso(MODEL, CLEAN, BAD), ValueError, BAD_ID),
    "iia base": (
        lambda: iia(tokens=[TOKENS[0].at[5, 0].set(400), TOKENS[1]]),
        ValueError,
        r"base_tokens: token id 400 at row 5, position 0",
    ),
    "iia source int64": (
        lambda: iia(tokens=[TOKENS[0], np.asarray(TOKENS[1], np.int64) + 2**32]),
        ValueError,
        r"source_tokens\['A'\]: token id 429496\d+ at row 0",
    ),
    "unit inputs": (
        lambda: methods.prune_model(MODEL, BAD, sites=[POST], keep_fraction=0.5),
        ValueError,
        r"inputs: " + BAD_ID,
    ),
}

# ---------------------------------------------------------------- 3. non-finite results
NONFINITE = {
    "forward": (
        lambda: NAN_MODEL(CLEAN[0]),
        NonFiniteError,
        r"non-finite logits: position 0, vocab 0 is nan; .*" + NAN_WEIGHT,
    ),
    "intervention value": (
        lambda: jc.intervene(MODEL, {Z: jc.Patch(jnp.zeros((SEQ, 2, 4)).at[2, 1, 3].set(jnp.inf))})(
            CLEAN[0]
        ),
        NonFiniteError,
        r"non-finite intervention value: blocks\.0\.attn\.hook_z\.intervention\.value "
        r"\[2, 1, 3\] is inf",
    ),
    "activation": (
        lambda: methods.eap(
            jc.intervene(MODEL, {POST: jc.Function(lambda x: x.at[3, 5].set(jnp.nan))}),
            CLEAN,
            CORRUPT,
            metric,
        ),
        NonFiniteError,
        r"non-finite EAP scores: edge .* is nan; the first non-finite activation is "
        r"blocks\.0\.mlp\.hook_post at row 0, position 3, unit 5",
    ),
    "sweep": (
        lambda: jc.patching.sweep(NAN_MODEL, CLEAN, CORRUPT, metric),
        NonFiniteError,
        r"non-finite patching sweep: layer 0, position 0 is nan; .*" + NAN_WEIGHT,
    ),
    "eap": (
        lambda: methods.eap(NAN_MODEL, CLEAN, CORRUPT, metric),
        NonFiniteError,
        r"non-finite EAP scores: edge embed -> L0H0\.q is nan; .*" + NAN_WEIGHT,
    ),
    "edge_patching": (
        lambda: methods.edge_patching(NAN_MODEL, CLEAN, CORRUPT, metric),
        NonFiniteError,
        r"EdgePatching scores: edge .* is nan",
    ),
    "causal_trace": (
        lambda: trace(model=NAN_MODEL),
        NonFiniteError,
        r"causal_trace clean_prob is nan; .*" + NAN_WEIGHT,
    ),
    "logit_diff": (
        lambda: M.logit_diff(logits().at[1, -1, 3].set(jnp.nan), 3, 7),
        NonFiniteError,
        r"logit_diff is nan; the logits at example 1, vocab 3",
    ),
    "acdc": (
        lambda: methods.acdc(NAN_MODEL, CLEAN, CORRUPT),
        NonFiniteError,
        r"ACDC divergence .* is nan; .*" + NAN_WEIGHT,
    ),
    "learned_mask": (
        lambda: methods.learned_mask(NAN_MODEL, CLEAN, CORRUPT, steps=1),
        NonFiniteError,
        r"non-finite LearnedMask loss: step 0 is nan",
    ),
    "faithfulness": (
        lambda: M.faithfulness(NAN_MODEL, CLEAN, CORRUPT, metric, ones()),
        NonFiniteError,
        r"faithfulness m\(model\) is nan; .*" + NAN_WEIGHT,
    ),
    "masked_logits": (
        lambda: masked_logits(NAN_MODEL, CLEAN, ones(), ablation_values(MODEL, CLEAN, CORRUPT)),
        NonFiniteError,
        r"non-finite masked logits: row 0, position 0, vocab 0 is nan",
    ),
    "path_patch": (
        lambda: methods.path_patch(NAN_MODEL, CLEAN, CORRUPT, metric),
        NonFiniteError,
        r"path patching clean is nan; .*" + NAN_WEIGHT,
    ),
    "iia": (
        lambda: iia(
            model=eqx.tree_at(
                lambda m: m.unembed.W_U, toy_model(), toy_model().unembed.W_U * jnp.nan
            )
        ),
        NonFiniteError,
        r"non-finite IIA logits at the readout position: pair 0, vocab 0 is nan; "
        r"the model has a non-finite weight: unembed\.W_U",
    ),
}

# ---------------------------------------------------------------- 6. raw or misleading errors
SETTINGS = {
    "sweep metric per example": (
        lambda: jc.patching.sweep(MODEL, CLEAN, CORRUPT, per_example),
        ValueError,
        r"metric must return a scalar; .* returned shape \[2\] \(one value per example",
    ),
    "eap metric per example": (
        lambda: methods.eap(MODEL, CLEAN, CORRUPT, per_example),
        ValueError,
        r"returned shape \[2\]",
    ),
    "faithfulness metric": (
        lambda: M.faithfulness(MODEL, CLEAN, CORRUPT, per_example, ones()),
        ValueError,
        r"returned shape \[2\]",
    ),
    "edge_patching chunk_size": (
        lambda: methods.edge_patching(MODEL, CLEAN, CORRUPT, metric, chunk_size=-3),
        ValueError,
        r"EdgePatching chunk_size must be >= 1; got -3 \(nearest valid: 1\)",
    ),
    "trace chunk_size": (
        lambda: trace(chunk_size=-3),
        ValueError,
        r"causal_trace chunk_size must be >= 1; got -3",
    ),
    "sweep chunk_size": (
        lambda: jc.patching.sweep(MODEL, CLEAN, CORRUPT, metric, chunk_size=-3),
        ValueError,
        r"chunk_size must be a positive int; got -3",
    ),
    "mask leading axis": (
        lambda: jc.intervene(
            MODEL, {"blocks.0.hook_resid_pre": jc.Zero(mask=jnp.ones((1, SEQ, 8)))}
        )(CLEAN[0]),
        ValueError,
        r"mask of shape \(1, 6, 8\) does not broadcast to site blocks\.0\.hook_resid_pre",
    ),
    "intervene string": (
        lambda: jc.intervene(MODEL, {Z: "zero"}),
        TypeError,
        r"got 'zero' \(did you mean jaxcirc\.Zero\(\.\.\.\)\?\)",
    ),
    "intervene class": (
        lambda: jc.intervene(MODEL, {Z: jc.Zero}),
        TypeError,
        r"the class, not a value",
    ),
    "das steps": (lambda: das(steps=0), ValueError, r"das steps must be >= 1; got 0"),
    "das learning_rate nan": (
        lambda: das(learning_rate=float("nan")),
        ValueError,
        r"das learning_rate must be a finite number > 0; got nan",
    ),
    "das k": (lambda: das(k=0), ValueError, r"das k .* must be 1\.\.\d+; got 0"),
    "das batch_size": (lambda: das(batch_size=0), ValueError, r"batch_size must be >= 1; got 0"),
    "lasso no rows": (
        lambda: jc.solvers.lasso(np.zeros((0, 3)), np.zeros(0), 0.1),
        ValueError,
        r"X has shape \(0, 3\)",
    ),
    "trace kinds string": (
        lambda: trace(kinds="mlp"),
        TypeError,
        r"kinds must be a sequence .* \('mlp',\); got the string 'mlp'",
    ),
    "trace kind": (
        lambda: trace(kinds=("mlpp",)),
        ValueError,
        r"unknown kind 'mlpp' \(did you mean 'mlp'\?\)",
    ),
    "lasso rank 0": (lambda: lasso(rank=0), ValueError, r"rank .* must be >= 1; got 0"),
    "lasso rank negative": (lambda: lasso(rank=-2), ValueError, r"rank .* got -2"),
    "lasso val_fraction": (
        lambda: lasso(val_fraction=1.5),
        ValueError,
        r"val_fraction .* in \(0, 1\); got 1\.5",
    ),
    "lasso granularity": (
        lambda: lasso(granularity="neuron"),
        ValueError,
        r"unknown granularity 'neuron' \(did you mean 'neurons'\?\)",
    ),
    "learned_mask steps": (
        lambda: methods.LearnedMask(steps=0),
        ValueError,
        r"steps must be >= 1; got 0",
    ),
    "acdc threshold nan": (
        lambda: methods.ACDC(threshold=float("nan")),
        ValueError,
        r"threshold must be a finite number >= 0; got nan",
    ),
    "acdc ablation": (
        lambda: methods.ACDC(ablation="zeros"),
        ValueError,
        r"unknown ablation 'zeros' \(did you mean 'zero'\?\)",
    ),
    "ablation how": (
        lambda: ablation_values(MODEL, CLEAN, CORRUPT, "meen"),
        ValueError,
        r"unknown ablation 'meen' \(did you mean 'mean'\?\)",
    ),
    "masked_logits ablated shape": (
        lambda: masked_logits(MODEL, CLEAN, ones(), jnp.zeros((2, 3))),
        ValueError,
        r"ablated has shape \[2, 3\]; expected \[batch, n_sources, seq, d_model\]",
    ),
    "n_edges": (
        lambda: methods.EAP(n_edges=-1),
        ValueError,
        r"n_edges must be >= 0; got -1 \(nearest valid: 0\)",
    ),
    "faithfulness undefined": (
        lambda: M.faithfulness(MODEL, CLEAN, CORRUPT, lambda x: x[:, 0, 0].mean() * 0, ones()),
        ValueError,
        r"faithfulness is undefined: the metric is -?0\.0 both with every edge",
    ),
}

CASES = {
    **{f"index: {k}": v for k, v in INDICES.items()},
    **{f"tokens: {k}": v for k, v in TOKENS_CASES.items()},
    **{f"non-finite: {k}": v for k, v in NONFINITE.items()},
    **{f"setting: {k}": v for k, v in SETTINGS.items()},
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_naming_it(name):
    fn, error, pattern = CASES[name]
    with pytest.raises(error) as info:
        jax.block_until_ready(jax.tree_util.tree_leaves(fn()))
    assert re.search(pattern, str(info.value), re.S), str(info.value)


def test_enough_cases():
    assert len(CASES) >= 60
    traced = [k for k, (_, error, _) in CASES.items() if error is Runtime]
    assert len(traced) >= 10, traced


def test_cli_patch_refuses_a_nan_model(monkeypatch, tmp_path, capsys):
    """`jaxcirc patch` on a model with a NaN weight exits non-zero naming the tensor (the
    model built in-process: loading one from disk is refused earlier, by `jaxcirc.load`)."""
    from jaxcirc import zoo
    from jaxcirc.cli import main

    model = zoo.induction_model()
    bad = eqx.tree_at(lambda m: m.blocks[1].attn.W_O, model,
                      model.blocks[1].attn.W_O.at[0, 2, 5].set(jnp.nan))  # fmt: skip
    monkeypatch.setattr(zoo, "induction_model", lambda: bad)
    code = main(["patch", "--out", str(tmp_path), "--n-prompts", "2", "--half-len", "3",
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0
    assert "blocks.1.attn.W_O [0, 2, 5] is nan" in err, err
    assert not list(tmp_path.glob("*.json"))  # no JSON of nulls


def test_runtime_checks_compile_once():
    """A traced check is one `cond` built once per message: a second identical eager `vmap`
    (where the check runs op by op) compiles nothing new."""
    from test_compile_once import count_compiles

    batched = [
        lambda: jax.vmap(MODEL)(CLEAN),
        lambda: jax.vmap(run_zeroed())(jnp.array([0, 1])),
        lambda: jax.vmap(lambda x, a: M.logit_diff(x[None], a[None], 7))(logits(), jnp.arange(3)),
    ]
    for fn in batched:
        jax.block_until_ready(fn())
        with count_compiles() as compiled:
            jax.block_until_ready(fn())
        assert compiled == []


def test_an_empty_set_is_refused_only_where_it_is_undefined():
    """A set of ids with no id: `logit_diff` (a mean over the set) refuses it, `prob_diff` (a
    sum: probability 0) takes it."""
    sets = jnp.array([[4, -1], [-1, -1], [6, 7]])
    x = logits()
    p = jax.nn.softmax(x[:, -1], -1)
    want = jnp.mean(p[:, 3] - jnp.array([p[0, 4], 0.0, p[2, 6] + p[2, 7]]))
    np.testing.assert_allclose(M.prob_diff(x, 3, sets), want, rtol=1e-5)
    with pytest.raises(ValueError, match="distractor set of example 1 has no id"):
        M.logit_diff(x, 3, sets)
