"""`jaxcirc.patching.sweep` against TransformerLens 3.x `patching.get_act_patch_*`.

Both libraries run the same random GPT-2-style weights (raw init, nothing folded) on the same
clean/corrupt tokens with the same logit-difference metric; the sweeps must agree to 1e-4.
Each jaxcirc sweep compiles anew (~2 s), so `resid_pre`, `attn_out`, `mlp_out` and head `z` run by
default; the other sites, `logit_positions` and the attention-pattern order are marked `slow`.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl_patching = pytest.importorskip("transformer_lens.patching")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _tl import tl_model, to_jaxcirc, tokens  # noqa: E402

import jaxcirc as jc  # noqa: E402

ATOL = 1e-4
BATCH, SEQ = 3, 6
ANSWER, WRONG = 3, 7


def logit_diff(logits):
    """Mean logit difference at the last position; works on torch and jax arrays alike."""
    return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).mean()


class Pair:
    """The TL model and its jaxcirc twin on fixed tokens; each sweep is run once and cached."""

    def __init__(self):
        self.tl = tl_model(seed=0)
        self.model = to_jaxcirc(self.tl)
        self.clean, self.corrupt = tokens(BATCH, SEQ, self.tl.cfg.d_vocab, seed=1)
        with torch.no_grad():
            _, self.cache = self.tl.run_with_cache(torch.tensor(self.clean))
        self._tl, self._jc = {}, {}

    def tl_sweep(self, name: str) -> np.ndarray:
        if name not in self._tl:
            fn = getattr(tl_patching, f"get_act_patch_{name}")
            with torch.no_grad():
                out = fn(self.tl, torch.tensor(self.corrupt), self.cache, logit_diff)
            self._tl[name] = out.numpy()
        return self._tl[name]

    def jc_sweep(self, site: str, per: str, **kwargs) -> np.ndarray:
        key = (site, per, tuple(kwargs))  # kwargs names suffice: each is used with one value
        if key not in self._jc:
            out = jc.patching.sweep(
                self.model, self.clean, self.corrupt, logit_diff, site=site, per=per, **kwargs
            )
            self._jc[key] = np.asarray(out)
        return self._jc[key]


@pytest.fixture(scope="module")
def pair():
    return Pair()


def test_logits_match(pair):
    with torch.no_grad():
        expected = pair.tl(torch.tensor(pair.clean)).numpy()
    got = jax.jit(jax.vmap(pair.model))(pair.clean)
    np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL, rtol=0)


# (TransformerLens function, jaxcirc site, per): same shape, same order, same values
REQUIRED = [
    ("resid_pre", "resid_pre", "position"),
    ("attn_out", "attn_out", "position"),
    ("mlp_out", "mlp_out", "position"),
    ("attn_head_out_all_pos", "z", "head"),
    ("attn_head_out_by_pos", "z", "position_head"),
]
MORE = [
    ("resid_mid", "resid_mid", "position"),
    ("attn_head_q_all_pos", "q", "head"),
    ("attn_head_k_by_pos", "k", "position_head"),
    ("attn_head_v_all_pos", "v", "head"),
    ("attn_head_pattern_all_pos", "pattern", "head"),
]
CASES = REQUIRED + [pytest.param(*case, marks=pytest.mark.slow) for case in MORE]


@pytest.mark.parametrize("tl_name, site, per", CASES, ids=[c[0] for c in REQUIRED + MORE])
def test_sweep_matches_transformer_lens(pair, tl_name, site, per):
    expected = pair.tl_sweep(tl_name)
    got = pair.jc_sweep(site, per)
    assert got.shape == expected.shape
    assert np.ptp(expected) > 100 * ATOL, "patching effects too small to test anything"
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_sweep_logit_positions_matches_transformer_lens(pair):
    """Unembedding only the last position leaves a last-position metric unchanged."""
    got = pair.jc_sweep("resid_pre", "position", logit_positions=jnp.array([SEQ - 1]))
    np.testing.assert_allclose(got, pair.tl_sweep("resid_pre"), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_pattern_by_position_matches_transformer_lens(pair):
    """Pattern per head and query position: TL's `[layer, head, dest_pos]` order."""
    got = pair.jc_sweep("pattern", "head_position")
    np.testing.assert_allclose(got, pair.tl_sweep("attn_head_pattern_by_pos"), atol=ATOL, rtol=0)
