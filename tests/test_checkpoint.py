"""Orbax checkpoints: exact roundtrips, atomic overwrites, refusing half-written directories."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc
from jaxcirc import models
from jaxcirc.io import _checkpoint, load_checkpoint, save_checkpoint

SIZES = dict(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, d_vocab=23, n_ctx=12)
FAMILIES = {"gpt2": models.gpt2, "neox": models.neox, "llama": models.llama,
            "attn_only": models.attn_only}
TOKENS = np.array([1, 5, 7, 2, 22, 0, 3])


def make(family="gpt2", seed=0, **overrides):
    special = {"attn_only": dict(SIZES, d_mlp=0), "llama": dict(SIZES, rotary_dim=8)}
    sizes = special.get(family, SIZES)
    return FAMILIES[family](key=jax.random.key(seed), **{**sizes, **overrides})


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_roundtrip_is_exact(family, tmp_path):
    model = make(family)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    np.testing.assert_array_equal(loaded(TOKENS), model(TOKENS))
    assert leftovers(tmp_path) == []


def test_top_level_save_and_load_and_bfloat16(tmp_path):
    model = make("llama", dtype="bfloat16")
    jaxcirc.save(tmp_path / "m", model)
    loaded = jaxcirc.load(tmp_path / "m")
    assert loaded.blocks[0].attn.W_Q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(loaded(TOKENS), model(TOKENS))
    as_f32 = jaxcirc.load(tmp_path / "m", dtype="float32")
    assert as_f32.cfg.dtype == "float32" and as_f32.embed.W_E.dtype == jnp.float32


def test_overwrite_replaces_the_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2", seed=0))
    new = make("neox", seed=1)
    save_checkpoint(path, new)
    np.testing.assert_array_equal(load_checkpoint(path)(TOKENS), new(TOKENS))
    assert leftovers(tmp_path) == []


def test_crash_mid_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    old = make("gpt2", seed=0)
    save_checkpoint(path, old)

    def crash(directory, arrays):
        directory.mkdir()
        (directory / "partial").write_bytes(b"\0" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint, "_write_arrays", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make("gpt2", seed=1))
    np.testing.assert_array_equal(load_checkpoint(path)(TOKENS), old(TOKENS))
    assert leftovers(tmp_path) == []


def test_failed_swap_restores_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    old = make("llama", seed=0)
    save_checkpoint(path, old)
    calls = []
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the rename of the new checkpoint into place
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(_checkpoint.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, make("llama", seed=1))
    monkeypatch.undo()
    np.testing.assert_array_equal(load_checkpoint(path)(TOKENS), old(TOKENS))
    assert leftovers(tmp_path) == []


def test_half_written_directory_refuses_to_load(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    (path / _checkpoint.MARKER).unlink()  # as if the process died before the marker
    with pytest.raises(ValueError, match="incomplete checkpoint.*JAXCIRC_CHECKPOINT"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        jaxcirc.load(path)  # dispatch recognises it too, not as a Hugging Face directory
    save_checkpoint(path, make("gpt2"))  # and a new save may replace it
    assert load_checkpoint(path).cfg.family == "gpt2"


def test_interrupted_swap_points_to_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    os.replace(path, tmp_path / ".ckpt.old-12345678")  # killed between the two renames
    with pytest.raises(FileNotFoundError, match="previous checkpoint at .*ckpt.old-12345678"):
        load_checkpoint(path)


def test_refuses_to_replace_other_directories_and_intervened_models(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="not a jaxcirc checkpoint"):
        save_checkpoint(other, make("gpt2"))
    assert (other / "cat.jpg").read_bytes() == b"meow"
    patched = jaxcirc.intervene(make("gpt2"), {"blocks.0.hook_resid_pre": jaxcirc.Zero()})
    with pytest.raises(ValueError, match="intervention"):
        save_checkpoint(tmp_path / "ckpt", patched)
    with pytest.raises(TypeError, match="Transformer"):
        save_checkpoint(tmp_path / "ckpt", {"W": np.ones(3)})
    assert not (tmp_path / "ckpt").exists()
