"""SAELens's on-disk format: exact round trips, parity with SAELens itself (when installed) and
with a numpy transcription of its inference formulas, old configs, and refusals."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc.io import load_saelens, save_saelens

D_IN, D_SAE = 12, 40


def _random(architecture, seed=0, center=True, site="blocks.0.hook_resid_post"):
    """An SAE with random weights, non-zero biases and thresholds in [0.05, 0.6]."""
    rng = np.random.default_rng(seed)
    k = 5 if architecture in ("topk", "batchtopk") else None
    sae = jc.sae.init(architecture, D_IN, D_SAE, key=jax.random.key(seed), k=k, site=site,
                      center=center)  # fmt: skip
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    sae = eqx.tree_at(
        lambda s: (s.W_enc, s.b_enc, s.W_dec, s.b_dec),
        sae,
        (f32(D_IN, D_SAE), 0.3 * f32(D_SAE), f32(D_SAE, D_IN), 0.5 * f32(D_IN)),
    )
    if architecture == "jumprelu":
        theta = rng.uniform(0.05, 0.6, D_SAE)
        sae = eqx.tree_at(lambda s: s.log_threshold, sae, jnp.asarray(np.log(theta), jnp.float32))
    if architecture == "batchtopk":
        sae = eqx.tree_at(lambda s: s.threshold, sae, jnp.asarray(0.4, jnp.float32))
    return sae


def _inputs(seed=1, n=64):
    return np.random.default_rng(seed).standard_normal((n, D_IN)).astype(np.float32)


def _leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("architecture", jc.sae.ARCHITECTURES)
def test_round_trip_exact(tmp_path, architecture):
    sae = _random(architecture, center=architecture != "topk")
    save_saelens(tmp_path / "sae", sae)
    back = load_saelens(tmp_path / "sae")
    assert type(back) is type(sae)
    assert (back.site, back.center) == (sae.site, sae.center)
    _leaves_equal(back, sae)  # JumpReLU: log_threshold exact through jaxcirc_extra.safetensors
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == sae.site
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk"}.get(architecture, "jumprelu")


def test_round_trip_bfloat16_and_site_override(tmp_path):
    sae = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), _random("relu"))
    save_saelens(tmp_path, sae)
    assert json.loads((tmp_path / "cfg.json").read_text())["dtype"] == "bfloat16"
    back = load_saelens(tmp_path / "cfg.json", site="blocks.1.hook_mlp_out")
    assert back.W_enc.dtype == jnp.bfloat16 and back.site == "blocks.1.hook_mlp_out"
    np.testing.assert_array_equal(np.asarray(back.W_dec), np.asarray(sae.W_dec))
    assert load_saelens(tmp_path, dtype="float32").W_enc.dtype == jnp.float32


def test_save_is_atomic_and_overwrites(tmp_path):
    save_saelens(tmp_path, _random("relu", seed=0))
    save_saelens(tmp_path, _random("relu", seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    _leaves_equal(load_saelens(tmp_path), _random("relu", seed=3))


def test_jumprelu_threshold_without_sidecar(tmp_path):
    sae = _random("jumprelu")
    save_saelens(tmp_path, sae)
    (tmp_path / "jaxcirc_extra.safetensors").unlink()  # as SAELens would write the folder
    back = load_saelens(tmp_path)
    np.testing.assert_allclose(np.asarray(back.threshold), np.asarray(sae.threshold), rtol=3e-7)
    save_saelens(tmp_path / "j", sae)  # a later non-JumpReLU save removes a stale sidecar
    save_saelens(tmp_path / "j", _random("relu"))
    assert not (tmp_path / "j" / "jaxcirc_extra.safetensors").exists()


# ------------------------------------------- numpy transcription of SAELens's inference code


def _reference(cfg, w, x):
    """SAELens 6.x inference, transcribed: `sae_in = x − b_dec·apply_b_dec_to_input`,
    `pre = sae_in W_enc + b_enc`; standard `relu(pre)`; topk: the k largest of `pre`, then ReLU;
    jumprelu `relu(pre)·(pre > threshold)`; decode `f W_dec + b_dec`."""
    pre = (x - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        f = np.maximum(pre, 0)
    elif cfg["architecture"] == "topk":
        f = np.zeros_like(pre)
        top = np.argsort(-pre, axis=-1)[:, : cfg["k"]]
        rows = np.arange(len(pre))[:, None]
        f[rows, top] = np.maximum(pre[rows, top], 0)
    else:
        f = np.maximum(pre, 0) * (pre > w["threshold"])
    return f, f @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("architecture", jc.sae.ARCHITECTURES)
@pytest.mark.parametrize("center", [True, False])
def test_matches_numpy_reference_of_saelens(tmp_path, architecture, center):
    from safetensors.numpy import load_file

    sae = _random(architecture, seed=2, center=center)
    save_saelens(tmp_path, sae)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    w = {
        k: v.astype(np.float64) for k, v in load_file(tmp_path / "sae_weights.safetensors").items()
    }
    x = _inputs()
    f_ref, x_ref = _reference(cfg, w, x.astype(np.float64))
    back = load_saelens(tmp_path)
    f = np.asarray(back.encode(jnp.asarray(x)))
    assert (f != 0).sum() > 0 and (f == 0).sum() > 0
    np.testing.assert_allclose(f, f_ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(back.decode(jnp.asarray(f))), x_ref, atol=1e-4)
    np.testing.assert_array_equal(f != 0, f_ref != 0)


# ------------------------------------------------------------------- SAELens itself


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")


def _torch_encode(sl_sae, x):
    import torch

    with torch.no_grad():
        f = sl_sae.encode(torch.from_numpy(x))
        return f.numpy(), sl_sae.decode(f).numpy()


@pytest.mark.parametrize("architecture", jc.sae.ARCHITECTURES)
def test_saelens_reads_ours(tmp_path, sae_lens, architecture):
    sae = _random(architecture, seed=4, center=architecture != "relu")
    save_saelens(tmp_path, sae)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.metadata.hook_name == sae.site
    x = _inputs(5)
    f_t, x_t = _torch_encode(theirs, x)
    f = np.asarray(sae.encode(jnp.asarray(x)))
    np.testing.assert_allclose(f, f_t, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(jnp.asarray(f))), x_t, atol=1e-5)
    assert (f > 0).sum() > 0


def _saelens_sae(sae_lens, architecture, seed, center=True):
    """A SAELens SAE with random weights (its own classes), saved with its own writer."""
    import torch

    torch.manual_seed(seed)
    common = dict(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=center)
    meta = {"hook_name": "blocks.1.hook_resid_pre"}
    if architecture == "standard":
        cfg = sae_lens.StandardSAEConfig(**common)
        cls = sae_lens.StandardSAE
    elif architecture == "topk":
        cfg = sae_lens.TopKSAEConfig(**common, k=6)
        cls = sae_lens.TopKSAE
    else:
        cfg = sae_lens.JumpReLUSAEConfig(**common)
        cls = sae_lens.JumpReLUSAE
    cfg.metadata = sae_lens.saes.sae.SAEMetadata(**meta)
    sl = cls(cfg)
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn_like(p))
        sl.b_enc.mul_(0.3)
        if architecture == "jumprelu":
            sl.threshold.copy_(torch.rand(D_SAE) * 0.6)
            sl.threshold[:3] = 0.0  # a threshold of zero: plain ReLU for those features
    return sl


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_ours_reads_saelens(tmp_path, sae_lens, architecture):
    sl = _saelens_sae(sae_lens, architecture, seed=6, center=architecture != "topk")
    sl.save_model(tmp_path)
    sae = load_saelens(tmp_path)
    assert sae.site == "blocks.1.hook_resid_pre"
    assert sae.architecture == jc.io._saelens.ARCHITECTURES[architecture]
    x = _inputs(7)
    f_t, x_t = _torch_encode(sl, x)
    f = np.asarray(sae.encode(jnp.asarray(x)))
    np.testing.assert_allclose(f, f_t, atol=1e-5)
    # float32 round-off relative to decoded values of magnitude ~70
    np.testing.assert_allclose(np.asarray(sae.decode(jnp.asarray(f))), x_t, rtol=1e-6, atol=1e-5)
    # and back: what we write SAELens reads as the same SAE
    save_saelens(tmp_path / "again", sae)
    f_again, _ = _torch_encode(sae_lens.SAE.load_from_disk(tmp_path / "again"), x)
    np.testing.assert_allclose(f_again, f_t, atol=1e-6)


def test_saelens_batchtopk_inference_save_loads_as_batchtopk(tmp_path, sae_lens):
    import torch

    cfg = sae_lens.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)
    sl = sae_lens.BatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for p in sl.parameters():
            p.copy_(torch.randn_like(p))
        sl.topk_threshold.fill_(0.7)
    sl.save_inference_model(tmp_path)
    sae = load_saelens(tmp_path)
    assert isinstance(sae, jc.sae.BatchTopKSAE) and sae.k == 4
    x = _inputs(8)
    f_t, x_t = _torch_encode(sae_lens.SAE.load_from_disk(tmp_path), x)
    f = np.asarray(sae.encode(jnp.asarray(x)))
    np.testing.assert_allclose(f, f_t, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(jnp.asarray(f))), x_t, atol=1e-5)


# ------------------------------------------------------------------------ older configs


def test_pre_6_config(tmp_path):
    """A SAELens 3-5 style config: `hook_point`, `activation_fn_str: topk` with its k in
    `activation_fn_kwargs`, boolean `normalize_activations`, no architecture."""
    sae = _random("topk", seed=9)
    save_saelens(tmp_path, sae)
    old = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "hook_point": "blocks.0.hook_resid_post",
        "hook_point_layer": 0,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": sae.k},
        "normalize_activations": False,
        "sae_lens_training_version": "3.13.0",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    _leaves_equal(load_saelens(tmp_path), sae)
    del old["d_sae"]
    old["expansion_factor"] = D_SAE // D_IN + 1  # the earliest configs: d_sae = d_in · factor
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"W_enc has shape \[12, 40\]; .* implies \[12, 48\]"):
        load_saelens(tmp_path)
    old["normalize_activations"] = True
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="normalize_activations='expected_average_only_in'"):
        load_saelens(tmp_path)


# ----------------------------------------------------------------------------- refusals


def _edit_cfg(path, **changes):
    cfg = json.loads((path / "cfg.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architecture": "standrad"}, "unknown architecture 'standrad' .did you mean 'standard'"),
        ({"architecture": "gated"}, "architecture='gated' .* has no jaxcirc module"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"dtype": "float8"}, "dtype 'float8'"),
        ({"d_sae": D_SAE + 1}, r"W_enc has shape \[12, 40\]; .* implies \[12, 41\]"),
        ({"d_in": None}, "'d_in' is missing"),
        ({"reshape_activations": "hook_q"}, "reshape_activations='hook_q'"),
        ({"metadata": {"sae_lens_version": "6.1.0", "hook_head_index": 2}}, "hook_head_index=2"),
    ],
)
def test_refuses_what_it_cannot_represent(tmp_path, changes, message):
    save_saelens(tmp_path, _random("relu"))
    _edit_cfg(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        load_saelens(tmp_path)


def test_refuses_rescaled_topk_and_bad_files(tmp_path):
    save_saelens(tmp_path, _random("topk"))
    _edit_cfg(tmp_path, rescale_acts_by_decoder_norm=True)
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm=True"):
        load_saelens(tmp_path)
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        load_saelens(tmp_path / "nowhere")
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_saelens(tmp_path)


def test_refuses_extra_nonfinite_and_float64(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_saelens(tmp_path, _random("relu"))
    weights = load_file(tmp_path / "sae_weights.safetensors")
    save_file({**weights, "W_skip": np.zeros((2, 2), np.float32)},
              tmp_path / "sae_weights.safetensors")  # fmt: skip
    with pytest.raises(ValueError, match=r"would ignore: \['W_skip'\]"):
        load_saelens(tmp_path)
    bad = dict(weights)
    bad["b_enc"] = bad["b_enc"].copy()
    bad["b_enc"][7] = np.nan
    save_file(bad, tmp_path / "sae_weights.safetensors")
    with pytest.raises(jc.NonFiniteError, match="b_enc.*index \\[7\\]"):
        load_saelens(tmp_path)
    save_file(weights, tmp_path / "sae_weights.safetensors")
    _edit_cfg(tmp_path, dtype="float64")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        load_saelens(tmp_path)
    assert load_saelens(tmp_path, dtype="float32").W_enc.dtype == jnp.float32


def test_load_saes_reads_either_format_by_site_and_names_what_is_missing(tmp_path):
    """`jaxcirc.io.load_saes` over a folder holding a SAELens SAE and a jaxcirc SAE at other
    sites: both, ordered by site, equal to what was saved; `sites` picks and orders them; a
    site without an SAE and a folder without any are errors naming them."""
    from jaxcirc.io import load_sae, load_saes

    ours = _random("topk", seed=3, site="blocks.1.hook_resid_post")
    theirs = _random("jumprelu", seed=4, site="blocks.0.hook_resid_post")
    jc.sae.save(tmp_path / "saes" / "ours", ours)
    save_saelens(tmp_path / "saes" / "theirs", theirs)
    got = load_saes(tmp_path / "saes")
    assert [s.site for s in got] == [theirs.site, ours.site]
    x = jnp.asarray(_inputs())
    for a, b in zip(got, (theirs, ours)):
        assert type(a) is type(b)
        np.testing.assert_array_equal(np.asarray(a.encode(x)), np.asarray(b.encode(x)))
    picked = load_saes([tmp_path / "saes"], sites=[ours.site, theirs.site])
    assert [s.site for s in picked] == [ours.site, theirs.site]
    assert load_sae(tmp_path / "saes" / "theirs", site="hook_embed").site == "hook_embed"
    with pytest.raises(ValueError, match="--init: no SAE in .* reads blocks.2.hook_resid_post"):
        load_saes(tmp_path / "saes", sites=["blocks.2.hook_resid_post"], what="--init")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no SAE folder"):
        load_saes(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not an SAE folder"):
        load_sae(tmp_path / "empty")
