"""Patching sweeps: equal to a brute-force loop of `intervene` + forward, compiled once."""

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


@pytest.mark.parametrize(
    "family,site,per",
    [("neox", "mlp_out", "position"), ("llama", "v", "head"), ("attn_only", "q", "head")],
)
def test_sweep_other_families(family, site, per, tokens):
    model = tiny(family, seed=4)
    clean, corrupt = tokens
    got = sweep(model, clean, corrupt, logit_diff, site, per)
    np.testing.assert_allclose(
        got, brute_force(model, clean, corrupt, logit_diff, site, per), atol=1e-5
    )
    if family == "llama":  # grouped-query: k and v have n_kv_heads heads
        assert sweep(model, clean, corrupt, logit_diff, "k", "head").shape == (
            2,
            model.cfg.kv_heads,
        )


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


def test_sweep_traces_once(tokens):
    model = tiny("gpt2", seed=2)
    clean, corrupt = tokens
    inner = jc.patching._sweep._sweep
    counted = eqx.debug.assert_max_traces(inner.__wrapped__, max_traces=1)
    jitted = eqx.filter_jit(counted)
    args = ("resid_pre", "position", None, None, False)
    first = jitted(model, clean, corrupt, logit_diff, *args)
    second = jitted(model, corrupt, clean, logit_diff, *args)  # new values, same program
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
    with pytest.raises(ValueError, match="non-empty"):
        sweep(model, clean[:, :0], corrupt[:, :0], logit_diff)
    with pytest.raises(ValueError, match="token id 99"):
        sweep(model, clean.at[0, 0].set(99), corrupt, logit_diff)
    with pytest.raises(ValueError, match="no site 'blocks.0.hook_resid_mid'"):
        sweep(tiny("neox"), clean, corrupt, logit_diff, site="resid_mid")
