"""bfloat16 models (`jaxcirc.models.cast`): every method runs on bfloat16 weights and
activations, returns float32 results (norms, softmax and metrics compute in float32), and
stays within a stated tolerance of the float32 model's answer.

The tolerances (also in the README) are relative to the largest float32 value, or, for
methods that select, on the selection: bfloat16 keeps 8 bits of mantissa (relative step
2^-8 ≈ 0.4 %), so a few layers of it move values by 1–3 %.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc

VALUE_RTOL = 0.04  # forward values, sweeps, tracing, path patching, exact edge patching
GRAD_RTOL = 0.05  # gradient attributions (AtP, EAP, EAP-IG) and SAE feature effects


@pytest.fixture(scope="module")
def pair():
    m32 = jc.zoo.induction_model()
    m16 = jc.models.cast(m32, "bfloat16")
    task = jc.zoo.induction_task(8, 6, seed=0)
    return m32, m16, task


def rel(got, want) -> float:
    """max |got - want| / max |want| over the finite entries (NaN marks the same entries)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    ok = np.isfinite(want)
    return float(np.abs(got - want)[ok].max() / np.abs(want[ok]).max())


def both(pair, fn):
    """`fn` on the float32 and on the bfloat16 model; the bfloat16 result must be float32."""
    m32, m16, _ = pair
    want, got = fn(m32), fn(m16)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    return got, want


def top(values, k):
    v = np.nan_to_num(np.asarray(values, np.float64).ravel(), nan=-np.inf)
    return set(np.argsort(-v)[:k].tolist())


def test_cast_keeps_the_model_and_records_the_dtype(pair):
    m32, m16, task = pair
    assert m16.cfg.dtype == "bfloat16" and m16.embed.W_E.dtype == jnp.bfloat16
    assert jc.models.cast(jc.models.scan_layers(m32), "bfloat16").scan
    back = jc.models.cast(m16, "float32")  # bfloat16 -> float32 is exact
    np.testing.assert_array_equal(back.embed.W_E, np.asarray(m16.embed.W_E, np.float32))
    logits = m16(task.clean[0])
    assert logits.dtype == jnp.bfloat16
    assert rel(logits, m32(task.clean[0])) < VALUE_RTOL
    with pytest.raises(ValueError, match="float16"):
        jc.models.cast(m32, "fp16")


def test_patching_tracing_and_path_patching(pair):
    _, _, task = pair
    clean, corrupt = task.clean[:, :-1], task.corrupt[:, :-1]
    answer, wrong = task.clean[:, -1], task.corrupt[:, 5]
    metric = jc.metrics.bind(jc.metrics.logit_diff, answer=answer, distractor=wrong)
    for site, per in (("resid_pre", "position"), ("z", "head")):
        got, want = both(
            pair, lambda m: jc.patching.sweep(m, clean, corrupt, metric, site=site, per=per)
        )
        assert rel(got, want) < VALUE_RTOL, site
    got, want = both(
        pair, lambda m: jc.methods.path_patch(m, clean, corrupt, metric, receivers="L1H*.k").values
    )
    assert rel(got, want) < VALUE_RTOL
    subject = jnp.zeros(clean.shape, bool).at[:, :3].set(True)
    trace = lambda m: jc.methods.causal_trace(
        m, clean, subject, answer, n_samples=2, kinds=("resid",), key=jax.random.key(0)
    ).indirect_effect["resid"]
    got, want = both(pair, trace)
    assert rel(got, want) < VALUE_RTOL


def test_edge_attribution_and_faithfulness(pair):
    m32, _, task = pair
    args = (task.clean, task.corrupt, task.metric)
    for name, method, tol in (
        ("atp", jc.methods.atp, GRAD_RTOL),
        ("eap", jc.methods.eap, GRAD_RTOL),
        ("eap_ig", jc.methods.eap_ig, GRAD_RTOL),
        ("edge_patching", jc.methods.edge_patching, VALUE_RTOL),
    ):
        got, want = both(pair, lambda m: method(m, *args).values)
        assert rel(got, want) < tol, name
        assert len(top(got, 10) & top(want, 10)) >= 9, name
    circuit = jc.methods.eap(m32, *args).top(20)
    got, want = both(pair, lambda m: jc.metrics.faithfulness(m, *args, circuit))
    assert abs(float(got) - float(want)) < 0.03


def test_circuit_discovery(pair):
    _, _, task = pair
    got, want = both(
        pair, lambda m: jc.methods.acdc(m, task.clean, task.corrupt, threshold=0.05).mask
    )
    np.testing.assert_array_equal(got, want)  # the same circuit
    got, want = both(pair, lambda m: jc.methods.circuit_lasso(m, task).scores.values)
    assert len(top(got, 10) & top(want, 10)) >= 8
    got, want = both(
        pair,
        lambda m: jc.methods.learned_mask(m, task.clean, task.corrupt, steps=100).scores.values,
    )
    assert len(top(got, 10) & top(want, 10)) >= 8


def test_pruning_and_interchange_interventions(pair):
    _, _, task = pair
    keep = lambda m: (
        jc.methods.prune_model(m, task.clean, sites=["blocks.0.attn.hook_z"], keep_fraction=0.5)
        .replacements[0]
        .keep
    )
    got, want = both(pair, keep)
    np.testing.assert_array_equal(got, want)
    toy32 = jc.zoo.toy_model()
    hl = jc.methods.CausalModel(
        ["a", "b", "A", "B", "S"], {"A": ["a"], "B": ["b"], "S": ["A", "B"]},
        {"A": lambda a: a, "B": lambda b: b, "S": jnp.add}, inputs=["a", "b"], output="S",
    )  # fmt: skip
    a, b = jnp.divmod(jnp.arange(16), 4)
    base, source = (4 * a + b)[:, None], (4 * a + b)[::-1, None]
    kw = dict(base_inputs={"a": a, "b": b}, source_inputs={"a": a[::-1], "b": b[::-1]},
              answer_tokens=jnp.arange(7))  # fmt: skip
    site = "blocks.0.hook_resid_post"
    out = {}
    for name, m in (("f32", toy32), ("bf16", jc.models.cast(toy32, "bfloat16"))):
        iia = jc.methods.iia(
            m, hl, {"A": {"site": site, "position": 0, "unit": 0}}, base, source, **kw
        )
        das = jc.methods.das(
            m, hl, "A", site, base, source, k=1, steps=50, key=jax.random.key(0), **kw
        )
        assert das.losses.dtype == np.float32
        out[name] = (iia.accuracy, das.train_iia, das.test_iia)
    assert out["bf16"] == out["f32"]


def test_sae_training_and_feature_effects(pair):
    _, _, task = pair
    site = "blocks.0.hook_resid_post"

    def sae(m):
        return jc.sae.init("topk", m.cfg.d_model, 64, k=4, key=jax.random.key(0), site=site)

    def trained(m):
        buf = jc.sae.ActivationBuffer(m, task.clean, [site], batch_size=32)
        return jc.sae.train(sae(m), buf, steps=2, progress=False).saes[0].W_dec

    got, want = both(pair, trained)
    assert got.dtype == np.float32 and rel(got, want) < 0.01  # SAE weights train in float32
    metric = lambda m, t, a: m(t)[-1, a[1]] - m(t)[-1, a[0]]
    args = jnp.stack([task.clean[:, -1], task.corrupt[:, 5]], 1)
    effects = lambda m: jc.methods.feature_effects(
        m, [sae(m)], task.clean[:, :-1], metric, patch=task.corrupt[:, :-1], method="ig",
        steps=2, metric_args=args,
    ).aggregate("none").features[0]  # fmt: skip
    got, want = both(pair, effects)
    assert rel(got, want) < 2 * GRAD_RTOL
    assert len(top(got, 20) & top(want, 20)) >= 16
