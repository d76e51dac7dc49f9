"""Patching sweeps: equal to a brute-force loop of `intervene` + forward, compiled once.

The sweep recomputes only the positions a patch can change (position buckets resumed from the
corrupted run's keys and values) and unembeds only what the metric reads; every case is checked
against full forwards of the patched model.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logit_diff, tiny

import jaxcirc as jc
from jaxcirc.patching import PER, sweep


@eqx.filter_jit
def _patched_metric(model, ref, corrupt, value, selection, metric):
    def one(tokens, v):
        return jc.intervene(model, {ref: jc.Patch(v, **selection)})(tokens)

    return metric(jax.vmap(one)(corrupt, value))


def brute_force(model, clean, corrupt, metric, site, per):
    """A Python loop of one `intervene` + batched forward per (layer, unit): the reference."""
    clean_acts = jax.vmap(model.run)(clean)[1]
    axes = jc.SiteRef(site, 0).axes
    out = []
    for layer in range(model.cfg.n_layers):
        ref = jc.SiteRef(site, layer)
        value = clean_acts[ref]
        sizes = [value.shape[1 + axes.index(a)] for a in PER[site][per]]
        row = [
            _patched_metric(
                model,
                ref,
                corrupt,
                value,
                {a: jnp.int32(i) for a, i in zip(PER[site][per], unit)},
                metric,
            )
            for unit in np.ndindex(*sizes)
        ]
        out.append(np.reshape(row, sizes))
    return np.stack(out)


CASES = [(site, per) for site in PER for per in PER[site]]


@pytest.mark.parametrize("site,per", CASES)
def test_sweep_equals_brute_force(site, per, tokens):
    model = tiny("gpt2", seed=2)
    clean, corrupt = tokens
    got = sweep(model, clean, corrupt, logit_diff, site, per)
    np.testing.assert_allclose(
        got, brute_force(model, clean, corrupt, logit_diff, site, per), atol=1e-5
    )


FAMILY_CASES = [
    ("neox", "resid_pre", "position"),  # parallel block, partial rotary
    ("neox", "mlp_out", "position"),
    ("neox", "k", "position_head"),
    ("llama", "resid_mid", "position"),  # grouped-query attention, rotary
    ("llama", "q", "position_head"),
    ("llama", "v", "position_head"),
    ("llama", "pattern", "head_position"),
    ("llama", "v", "head"),
    ("attn_only", "attn_out", "position"),
    ("attn_only", "z", "position_head"),
    ("attn_only", "q", "head"),
]


@pytest.mark.parametrize("family,site,per", FAMILY_CASES)
def test_sweep_other_families(family, site, per, tokens):
    model = tiny(family, seed=4)
    clean, corrupt = tokens
    got = sweep(model, clean, corrupt, logit_diff, site, per)
    np.testing.assert_allclose(
        got, brute_force(model, clean, corrupt, logit_diff, site, per), atol=1e-5
    )
    if family == "llama" and per == "head":  # grouped-query: k and v have n_kv_heads heads
        assert model.cfg.kv_heads < model.cfg.n_heads
        assert sweep(model, clean, corrupt, logit_diff, "k", "head").shape == (
            2,
            model.cfg.kv_heads,
        )


def test_resume_from_a_position_equals_the_full_run(family_model):
    """`resume(x[start:], layer, start=, cache=)` gives the full run's positions `start:`."""
    model = family_model
    tokens = jax.random.randint(jax.random.key(0), (7,), 0, 50)
    _, acts = model.run(tokens)
    cache = model.kv_cache(acts)
    final = acts[jc.SiteRef("resid_post", model.cfg.n_layers - 1)]
    resume = eqx.filter_jit(lambda m, x, layer, start: m.resume(x, layer, start=start, cache=cache))
    for layer in range(model.cfg.n_layers):
        for start in (0, 5):
            x = acts[jc.SiteRef("resid_pre", layer)][start:]
            np.testing.assert_allclose(resume(model, x, layer, start), final[start:], atol=1e-5)
            traced = resume(model, x, jnp.int32(layer), start)  # a traced layer: lax.cond
            np.testing.assert_allclose(traced, final[start:], atol=1e-5)
    with pytest.raises(ValueError, match="needs the cache"):
        model.resume(final[3:], 0, start=3)


def test_resume_refuses_bidirectional_models():
    model = tiny("gpt2", causal=False)
    _, acts = model.run(jnp.arange(4))
    with pytest.raises(ValueError, match="bidirectional"):
        model.resume(acts["blocks.0.hook_resid_pre"][2:], 0, start=2, cache=model.kv_cache(acts))


def _carrying(family: str, clean):
    """A model with position-indexed interventions of full-length values inside attention."""
    model = tiny(family, seed=5)
    acts = model.run(clean[0])[1]
    k = acts["blocks.1.attn.hook_k"]
    return jc.intervene(
        model,
        {
            "blocks.0.attn.hook_z": jc.Patch(
                0.5 * acts["blocks.0.attn.hook_z"], position=4, head=1
            ),
            "blocks.1.attn.hook_k": jc.Add(0.3 * jnp.ones_like(k), position=1),
            "blocks.1.attn.hook_pattern": jc.Scale(0.7, head=2),
            "blocks.0.hook_attn_out": jc.Zero(position=jnp.array([2, 5])),
            "ln_final.hook_normalized": jc.Scale(1.5, position=0),
        },
    )


@pytest.mark.parametrize(
    "family,site,per",
    [("gpt2", "resid_pre", "position"), ("gpt2", "z", "position_head"),
     ("llama", "k", "position_head"), ("llama", "pattern", "head_position")],
)  # fmt: skip
def test_sweep_of_a_model_carrying_interventions(family, site, per, tokens):
    """A model's own interventions see every position, as in a full run (the window gets the
    cached prefix in front of it), and the sweep's patches apply after them."""
    clean, corrupt = tokens
    model = _carrying(family, clean)
    assert len(jc.patching._sweep._plan(model, site, per, 3, 6, 6, 3, None).buckets) == 3
    got = sweep(model, clean, corrupt, logit_diff, site, per, buckets=3)
    np.testing.assert_allclose(
        got, brute_force(model, clean, corrupt, logit_diff, site, per), atol=1e-5
    )


def test_sweep_falls_back_to_every_position_when_it_must(tokens):
    """An intervention that may mix positions (`Function`), or a bidirectional model, keeps
    every position in every run."""
    clean, corrupt = tokens
    centred = jc.Function(lambda z: z - z.mean(0, keepdims=True))
    mixing = jc.intervene(tiny("gpt2", seed=6), {"blocks.1.attn.hook_z": centred})
    bidirectional = tiny("gpt2", seed=6, causal=False)
    for model in (mixing, bidirectional):
        assert len(jc.patching._sweep._plan(model, "resid_pre", "position", 3, 6, 6, 4, None)
                   .buckets) == 1  # fmt: skip
        got = sweep(model, clean, corrupt, logit_diff, "resid_pre", "position", buckets=4)
        np.testing.assert_allclose(
            got, brute_force(model, clean, corrupt, logit_diff, "resid_pre", "position"), atol=1e-5
        )


def test_bucket_counts_and_chunks_agree(tokens):
    model = tiny("llama", seed=2)
    clean, corrupt = tokens
    reference = sweep(model, clean, corrupt, logit_diff, "z", "position_head", buckets=1)
    for kwargs in ({"buckets": 2}, {"buckets": 6}, {"buckets": 3, "chunk_size": 5}):
        got = sweep(model, clean, corrupt, logit_diff, "z", "position_head", **kwargs)
        np.testing.assert_allclose(got, reference, atol=1e-5, err_msg=str(kwargs))


class ReadsAt(eqx.Module):
    """A metric that declares the positions it reads, per example: the mean logit difference of
    tokens 3 and 7 over them. Called on full logits it refuses, so a test sees which is used."""

    where: jax.Array  # [batch, n]

    def positions(self, batch, seq):
        return self.where

    def on_positions(self, logits):
        return (logits[:, :, 3] - logits[:, :, 7]).mean()

    def __call__(self, logits):
        raise AssertionError("the sweep read every position's logits")


def _full(metric):
    return lambda logits: metric.on_positions(
        jnp.take_along_axis(logits, metric.where[:, :, None], axis=1)
    )


@pytest.mark.parametrize("declare", ["read_positions", "methods"])
def test_sweep_unembeds_only_the_positions_a_metric_reads(declare, tokens, monkeypatch):
    """Positions before a bucket's start (here 0, 1, 2) read the corrupted run's logits."""
    model = _carrying("gpt2", tokens[0])
    clean, corrupt = tokens
    metric = ReadsAt(jnp.array([[5, 1], [0, 5], [2, 3]]))
    if declare == "read_positions":  # jaxcirc.metrics's protocol
        monkeypatch.setattr(
            jc.metrics, "read_positions",
            lambda m, batch, seq: m.where if isinstance(m, ReadsAt) else None, raising=False,
        )  # fmt: skip
    else:  # a metric with positions/on_positions methods, before read_positions exists
        monkeypatch.delattr(jc.metrics, "read_positions", raising=False)
    for site, per in (("resid_pre", "position"), ("pattern", "head_position")):
        got = sweep(model, clean, corrupt, metric, site, per, buckets=3)
        expected = brute_force(model, clean, corrupt, _full(metric), site, per)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_per_example_logit_positions(tokens):
    model = tiny("neox", seed=2)
    clean, corrupt = tokens
    where = jnp.array([[5, 1], [0, -1], [2, 3]])
    reference = sweep(model, clean, corrupt, _full(ReadsAt(where % 6)), "mlp_out", "position")
    got = sweep(
        model, clean, corrupt, lambda lg: (lg[..., 3] - lg[..., 7]).mean(), "mlp_out",
        "position", logit_positions=where,
    )  # fmt: skip
    np.testing.assert_allclose(got, reference, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        sweep(model, clean, corrupt, logit_diff, logit_positions=jnp.array([6]))
    with pytest.raises(ValueError, match=r"\[batch=3, n\]"):
        sweep(model, clean, corrupt, logit_diff, logit_positions=jnp.zeros((2, 1), int))


def test_sweep_endpoints(tokens):
    """Patching the whole residual stream at layer 0 restores the clean run exactly."""
    model = tiny("gpt2", seed=2)
    clean, corrupt = tokens
    values = sweep(model, clean, corrupt, logit_diff, "resid_post", "position")
    clean_metric = logit_diff(jax.vmap(model)(clean))
    # the last layer's last position carries everything the metric reads
    np.testing.assert_allclose(values[-1, -1], clean_metric, atol=1e-5)


def test_chunking_and_logit_positions_do_not_change_results(tokens):
    model = tiny("gpt2", seed=2)
    clean, corrupt = tokens
    reference = sweep(model, clean, corrupt, logit_diff, "z", "position_head")
    chunked = sweep(model, clean, corrupt, logit_diff, "z", "position_head", chunk_size=5)
    np.testing.assert_allclose(chunked, reference, atol=1e-6)
    last_only = sweep(
        model,
        clean,
        corrupt,
        lambda lg: (lg[:, 0, 3] - lg[:, 0, 7]).mean(),
        "z",
        "position_head",
        logit_positions=jnp.array([5]),
    )
    np.testing.assert_allclose(last_only, reference, atol=1e-5)


def test_sweep_traces_once(tokens, monkeypatch):
    """Every bucket, layer and unit is one compiled program, reused for new token values."""
    model = tiny("gpt2", seed=2)
    clean, corrupt = tokens
    module = jc.patching._sweep
    counted = eqx.debug.assert_max_traces(module._sweep.__wrapped__, max_traces=1)
    monkeypatch.setattr(module, "_sweep", eqx.filter_jit(counted))
    first = sweep(model, clean, corrupt, logit_diff, buckets=3)
    second = sweep(model, corrupt, clean, logit_diff, buckets=3)  # new values, same program
    assert not np.allclose(first, second)
    assert eqx.debug.get_num_traces(counted) == 1


def test_progress_bar(tokens, capsys):
    model = tiny("gpt2", seed=2)
    sweep(model, *tokens, logit_diff, progress=True)
    assert "patching resid_pre per position" in capsys.readouterr().err


def test_bad_input(tokens):
    model = tiny("gpt2", seed=2)
    clean, corrupt = tokens
    with pytest.raises(ValueError, match="same shape"):
        sweep(model, clean, corrupt[:, :5], logit_diff)
    with pytest.raises(ValueError, match="did you mean 'resid_pre'"):
        sweep(model, clean, corrupt, logit_diff, site="resid_pr")
    with pytest.raises(ValueError, match="per.*did you mean 'head'"):
        sweep(model, clean, corrupt, logit_diff, site="z", per="heads")
    with pytest.raises(ValueError, match="is empty"):
        sweep(model, clean[:, :0], corrupt[:, :0], logit_diff)
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        sweep(model, clean, corrupt, logit_diff, memory_budget=0)
    with pytest.raises(ValueError, match="token id 99"):
        sweep(model, clean.at[0, 0].set(99), corrupt, logit_diff)
    with pytest.raises(ValueError, match="buckets must be a positive int"):
        sweep(model, clean, corrupt, logit_diff, buckets=0)
    with pytest.raises(ValueError, match="no site 'blocks.0.hook_resid_mid'"):
        sweep(tiny("neox"), clean, corrupt, logit_diff, site="resid_mid")
