"""Prompts in chunks under a memory budget: sweep, causal tracing, path patching and edge
attribution equal their whole-batch results (chunk sizes that do not divide the batch); a
metric without a per-example form keeps the whole batch and is warned about once; a fresh
lambda of the same code and values reuses the compiled sweep."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny
from test_compile_once import count_compiles

import jaxcirc as jc
from jaxcirc import methods
from jaxcirc.metrics import bind, is_example_mean, logit_diff, normalize, prob_diff
from jaxcirc.patching import _budget, _stable, _sweep, sweep
from jaxcirc.tasks._induction import InductionMetric

BATCH, SEQ, VOCAB, CHUNK = 7, 6, 20, 3  # 3 chunks of 3, the last padded with 2 repeats
SIZES = dict(d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=VOCAB, n_ctx=8)
MODEL = tiny("attn_only", n_layers=2, **SIZES)  # two layers: the unrolled sweep engine
ONE_LAYER = tiny("gpt2", n_layers=1, **SIZES)  # the other engines: one layer compiles faster
CLEAN = jax.random.randint(jax.random.key(1), (BATCH, SEQ), 0, VOCAB)
CORRUPT = jax.random.randint(jax.random.key(2), (BATCH, SEQ), 0, VOCAB)
ANSWER = jnp.arange(BATCH) % VOCAB
WRONG = (3 * jnp.arange(BATCH) + 1) % VOCAB
LAST = jnp.array([5, 4, 3, 5, 2, 5, 1])  # per-example read positions (padded prompts)


@pytest.fixture(autouse=True, scope="module")
def _quick_compiles():
    """Compile without most XLA optimisations (a third of the compile time)."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def chunks(monkeypatch):
    """Force `CHUNK` prompts at once and record the chunk sizes the engines ran."""
    used, plan = [], _budget.prompts_per_chunk

    def fewer(batch, per_prompt, limit, metric=None, **kw):  # at the default budget
        size = plan(batch, per_prompt, limit, metric, **kw)
        split = metric is None or is_example_mean(metric, on_positions=kw.get("on_positions"))
        return min(size, CHUNK) if split and limit == _budget.MEMORY_BUDGET else size

    def spy(run, batch, size):
        used.append((batch, size))
        return mean(run, batch, size)

    mean = _budget.mean_over_prompts
    monkeypatch.setattr(_budget, "prompts_per_chunk", fewer)
    monkeypatch.setattr(_budget, "mean_over_prompts", spy)
    return used


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- the metric protocol


ONE_POSITION = {
    "logit_diff": lambda: bind(logit_diff, answer=ANSWER, distractor=WRONG, position=LAST),
    "prob_diff sets": lambda: bind(
        prob_diff, answer=jnp.stack([ANSWER, WRONG], 1), distractor=7, position=-1
    ),
    "cross_entropy": lambda: bind(jc.metrics.cross_entropy, answer=ANSWER, position=LAST),
    "kl_to_clean": lambda: bind(
        jc.metrics.kl_to_clean,
        clean_logits=jax.random.normal(jax.random.key(5), (BATCH, SEQ, VOCAB)),
        position=LAST,
    ),
    "normalized": lambda: normalize(bind(logit_diff, answer=ANSWER, distractor=WRONG), 2.0, -1.0),
}


@pytest.mark.parametrize("name", sorted(ONE_POSITION))
def test_per_example_forms_average_to_the_metric(name):
    metric = ONE_POSITION[name]()
    logits = jax.random.normal(jax.random.key(3), (BATCH, SEQ, VOCAB))
    assert is_example_mean(metric) and is_example_mean(metric, on_positions=True)
    rows = jnp.array([4, 1, 6])  # a chunk of rows: their answers and positions are theirs
    read = jnp.take_along_axis(logits, metric.positions(BATCH, SEQ)[:, :, None], 1)
    value, each, some, some_read = _per_example(metric, logits, read, rows)
    assert each.shape == (BATCH,)
    close(each.mean(), value)
    close(some, each[rows])
    close(some_read, each[rows])


@eqx.filter_jit
def _per_example(metric, logits, read, rows):
    return (
        metric(logits),
        metric.per_example(logits),
        metric.per_example(logits[rows], rows),
        metric.per_example_on_positions(read[rows], rows),
    )


def test_induction_metric_per_example():
    metric = jc.zoo.induction_task(5).metric
    logits = jax.random.normal(jax.random.key(3), (5, 32, 64))
    close(metric.per_example(logits).mean(), metric(logits))
    close(metric.per_example(logits[2:4], jnp.array([2, 3])), metric.per_example(logits)[2:4])


def test_only_declared_metrics_split():
    assert not is_example_mean(lambda logits: logits.mean())
    assert not is_example_mean(bind(lambda logits, k: logits[..., k].mean(), k=3))
    unknown = normalize(bind(lambda logits: logits.mean()), 1.0, 0.0)
    assert not is_example_mean(unknown)
    with pytest.raises(ValueError, match="not known to be a mean over examples"):
        bind(lambda logits: logits.mean()).per_example(jnp.zeros((2, 3, 4)))


def test_row_chunks_pad_and_mask():
    rows, valid = _budget.row_chunks(7, 3)
    assert rows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert valid.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    assert _budget.prompts_per_chunk(7, 100, 350) == 3
    assert _budget.prompts_per_chunk(7, 100, 10_000) == 7
    assert _budget.prompts_per_chunk(7, 100, 50) == 1  # at least one prompt
    with pytest.raises(ValueError, match="positive"):
        _budget.budget(0)
    with pytest.raises(TypeError, match="bytes"):
        _budget.budget("1GB")


# ------------------------------------------------------------------------- the engines


SWEEPS = [  # (metric, site, per): declared positions, full logits, per head
    ("logit_diff", "resid_pre", "position"),
    ("induction", "z", "position_head"),
    ("normalized", "v", "head"),
]


def sweep_metric(name):
    if name == "induction":
        targets = jax.random.randint(jax.random.key(4), (BATCH, SEQ), 0, VOCAB)
        return InductionMetric(targets, jnp.array([0.0, 0, 1, 1, 1, 0]))
    return ONE_POSITION[name]()


@pytest.mark.parametrize("name,site,per", SWEEPS)
def test_sweep_chunks_equal_the_whole_batch(name, site, per, chunks):
    metric = sweep_metric(name)
    whole = sweep(MODEL, CLEAN, CORRUPT, metric, site, per, memory_budget=1 << 40)
    assert chunks == []
    got = sweep(MODEL, CLEAN, CORRUPT, metric, site, per)
    assert chunks == [(BATCH, CHUNK)]
    close(got, whole)


def test_sweep_budget_sets_the_chunk():
    """The budget alone (no forced chunk) picks 3 prompts at once, and the result is exact."""
    metric = ONE_POSITION["logit_diff"]()
    positions, read = _sweep._read_plan(metric, None, BATCH, SEQ)
    fixed, units = _sweep._prompt_bytes(MODEL, "resid_pre", "position", SEQ, 1, read, None, None)
    budget = CHUNK * (fixed + units)
    assert _budget.prompts_per_chunk(BATCH, fixed + units, budget, metric) == CHUNK
    whole = sweep(MODEL, CLEAN, CORRUPT, metric)
    close(sweep(MODEL, CLEAN, CORRUPT, metric, memory_budget=budget), whole)


def test_a_metric_without_a_per_example_form_keeps_the_batch(monkeypatch):
    _budget._warned.clear()
    spy = []
    monkeypatch.setattr(_budget, "mean_over_prompts", lambda *a: spy.append(a))

    def last_logit_diff(logits):
        return (logits[:, -1, 3] - logits[:, -1, 7]).mean()

    whole = sweep(MODEL, CLEAN, CORRUPT, last_logit_diff)
    with pytest.warns(UserWarning, match="last_logit_diff.*per_example") as caught:
        small = sweep(MODEL, CLEAN, CORRUPT, last_logit_diff, memory_budget=1000)
    said = [str(w.message) for w in caught if "per_example" in str(w.message)]
    assert len(said) == 1 and "memory_budget" in said[0]
    assert spy == []  # never split: its meaning is kept
    close(small, whole)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per metric
        sweep(MODEL, CLEAN, CORRUPT, last_logit_diff, memory_budget=1000)


def test_causal_trace_chunks_equal_the_whole_batch(chunks):
    mask = (
        jnp.zeros((BATCH, SEQ), bool).at[:, 1:3].set(True).at[4, 1:].set(False).at[4, 0].set(True)
    )
    lengths = jnp.array([6, 4, 5, 6, 3, 6, 4])
    kw = dict(noise_std=0.5, n_samples=2, key=jax.random.key(0), window=2, lengths=lengths)
    whole = methods.causal_trace(ONE_LAYER, CLEAN, mask, ANSWER, memory_budget=1 << 40, **kw)
    got = methods.causal_trace(ONE_LAYER, CLEAN, mask, ANSWER, **kw)
    assert chunks == [(BATCH, CHUNK)]
    close(got.clean_prob, whole.clean_prob)
    close(got.corrupt_prob, whole.corrupt_prob)
    for kind in whole.indirect:
        close(got.indirect[kind], whole.indirect[kind])


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_chunks_equal_the_whole_batch(direction, chunks):
    metric = ONE_POSITION["logit_diff"]()
    kw = dict(direction=direction, receivers=["L0H*.q", "MLP0", "logits"])
    whole = methods.path_patch(ONE_LAYER, CLEAN, CORRUPT, metric, memory_budget=1 << 40, **kw)
    got = methods.path_patch(ONE_LAYER, CLEAN, CORRUPT, metric, **kw)
    assert chunks == [(BATCH, CHUNK)]
    close(got.values, whole.values)
    close(got.clean, whole.clean)
    close(got.corrupt, whole.corrupt)


EDGES = {
    "eap mean": (methods.EAP, dict(ablation="mean")),
    "eap_ig activations": (methods.EAPIG, dict(steps=2, variant="activations")),
    "edge patching": (methods.EdgePatching, dict(chunk_size=16)),
    "atp zero": (methods.AtP, dict(ablation="zero")),
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_edge_attribution_chunks_equal_the_whole_batch(name, chunks):
    cls, kw = EDGES[name]
    metric = ONE_POSITION["kl_to_clean" if name == "atp zero" else "logit_diff"]()
    whole = cls(**kw, memory_budget=1 << 40).scores(ONE_LAYER, CLEAN, CORRUPT, metric)
    got = cls(**kw).scores(ONE_LAYER, CLEAN, CORRUPT, metric)
    assert (BATCH, CHUNK) in chunks
    assert np.abs(np.asarray(whole.signed)).max() > 1e-3  # the scores are not all zero
    close(got.signed, whole.signed)


# ------------------------------------------------------------------------- fresh lambdas

SMALL = tiny("attn_only", n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=20, n_ctx=8)


def _compiled_sweep(metric):
    with count_compiles() as compiled:
        out = sweep(SMALL, CLEAN[:2, :4], CORRUPT[:2, :4], metric)
    return out, [name for name in compiled if "_sweep" in name]


def test_a_fresh_lambda_of_the_same_values_reuses_the_sweep():
    answer = jnp.array([3, 4])
    runs = [_compiled_sweep(lambda logits: logits[:, -1, answer].mean()) for _ in range(3)]
    assert len(runs[0][1]) == 1 and runs[1][1] == [] and runs[2][1] == []
    close(runs[2][0], runs[0][0])


def test_other_captured_values_compile_anew_and_say_so():
    _stable._warned.clear()
    make = lambda k: lambda logits: logits[:, -1, k].mean()
    expected = {k: sweep(SMALL, CLEAN[:2, :4], CORRUPT[:2, :4], bind(_at, k=k)) for k in (3, 5)}
    out3, compiled3 = _compiled_sweep(make(3))
    with pytest.warns(UserWarning, match="captures differ.*jaxcirc.metrics.bind"):
        out5, compiled5 = _compiled_sweep(make(5))
    assert len(compiled5) == 1  # a Python number is static: its own program, never another's
    close(out3, expected[3])
    close(out5, expected[5])
    out3_again, compiled = _compiled_sweep(make(3))
    assert compiled == []  # the program of k = 3, reused for an equal value
    close(out3_again, expected[3])


def _at(logits, k):
    return logits[:, -1, k].mean()


class _Holder:  # an object whose attributes may change: not comparable
    k = 3


def test_a_lambda_capturing_an_object_is_left_alone():
    _stable._warned.clear()
    holder = _Holder()
    make = lambda: lambda logits: logits[:, -1, holder.k].mean()
    metric = make()
    assert not isinstance(_stable.stable(metric), _stable.Keyed)
    first, _ = _compiled_sweep(metric)
    holder.k = 5
    with pytest.warns(UserWarning, match="cannot be compared"):
        second, compiled = _compiled_sweep(make())
    assert len(compiled) == 1  # traced anew: it reads k = 5
    close(second, sweep(SMALL, CLEAN[:2, :4], CORRUPT[:2, :4], bind(_at, k=5)))
    assert not np.allclose(first, second)
