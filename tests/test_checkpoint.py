"""Checkpoints: exact roundtrips, atomic overwrites, recovery from interrupted saves, and refusing
anything that was not written by `jaxcirc.save` or was changed since (hashes, configs, links)."""

import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc
from jaxcirc import models
from jaxcirc.io import NonFiniteWeightError, _checkpoint, load_checkpoint, save_checkpoint

SIZES = dict(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, d_vocab=23, n_ctx=12)
FAMILIES = {
    "gpt2": models.gpt2,
    "neox": models.neox,
    "llama": models.llama,
    "attn_only": models.attn_only,
}
TOKENS = np.array([1, 5, 7, 2, 22, 0, 3])


def make(family="gpt2", seed=0, **overrides):
    """A random model of `family`, filled from NumPy (no eager JAX initialisation)."""
    special = {"attn_only": dict(SIZES, d_mlp=0), "llama": dict(SIZES, rotary_dim=8)}
    cfg = FAMILIES[family](**{**special.get(family, SIZES), **overrides})
    skeleton = eqx.filter_eval_shape(models.build, cfg, key=jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), skeleton
    )


def same(a, b):
    sa, sb = models.state_dict(a), models.state_dict(b)
    assert a.cfg == b.cfg and sa.keys() == sb.keys()
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def marker(path):
    return json.loads((path / _checkpoint.MARKER).read_text())


def largest_array_file(path):
    files = [f for f in (path / "arrays").rglob("*") if f.is_file()]
    return max(files, key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_roundtrip_is_exact(family, tmp_path):
    model = make(family)
    save_checkpoint(tmp_path / "ckpt", model)
    same(load_checkpoint(tmp_path / "ckpt"), model)
    assert leftovers(tmp_path) == []
    entry = marker(tmp_path / "ckpt")["arrays"]["embed.W_E"]
    assert entry["shape"] == [23, 16] and entry["dtype"] == "float32" and len(entry["sha256"]) == 64


def test_top_level_save_and_load_and_bfloat16(tmp_path):
    model = make("llama", dtype="bfloat16")
    jaxcirc.save(tmp_path / "m", model)
    loaded = jaxcirc.load(tmp_path / "m")
    assert loaded.blocks[0].attn.W_Q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(loaded(TOKENS), model(TOKENS))
    as_f32 = jaxcirc.load(tmp_path / "m", dtype="float32")
    assert as_f32.cfg.dtype == "float32" and as_f32.embed.W_E.dtype == jnp.float32


def test_overwrite_replaces_the_checkpoint_and_an_empty_directory(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2", seed=0))
    new = make("neox", seed=1)
    save_checkpoint(path, new)
    same(load_checkpoint(path), new)
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", new)
    same(load_checkpoint(tmp_path / "empty"), new)
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
    same(load_checkpoint(path), old)
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
    same(load_checkpoint(path), old)
    assert leftovers(tmp_path) == []


def test_half_written_directory_refuses_to_load_and_is_not_replaced(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    (path / _checkpoint.MARKER).unlink()  # not written by jaxcirc any more, as far as we know
    with pytest.raises(ValueError, match="incomplete checkpoint.*JAXCIRC_CHECKPOINT"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        jaxcirc.load(path)  # dispatch recognises it too, not as a Hugging Face directory
    with pytest.raises(FileExistsError, match="no JAXCIRC_CHECKPOINT file"):
        save_checkpoint(path, make("gpt2"))
    assert (path / "config.json").is_file()


def test_killed_swap_is_recovered_by_load(tmp_path):
    path = tmp_path / "ckpt"
    old = make("gpt2")
    save_checkpoint(path, old)
    (tmp_path / ".ckpt.tmp-0123abcd").mkdir()  # the new copy, never moved into place
    os.replace(path, tmp_path / ".ckpt.old-0123abcd")  # killed between the two renames
    with pytest.warns(UserWarning, match="interrupted; the previous checkpoint was moved back"):
        same(jaxcirc.load(path), old)
    assert leftovers(tmp_path) == []


def test_killed_first_save_says_what_to_do(tmp_path):
    (tmp_path / ".ckpt.tmp-0123abcd").mkdir()
    with pytest.raises(FileNotFoundError, match="first save to it was interrupted.*jaxcirc.save"):
        jaxcirc.load(tmp_path / "ckpt")
    assert leftovers(tmp_path) == []


def test_next_save_removes_leftovers_of_killed_saves_only(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    for name in (".ckpt.tmp-0000aaaa", ".ckpt.old-0000bbbb"):
        (tmp_path / name / "arrays").mkdir(parents=True)
        (tmp_path / name / "arrays" / "blob").write_bytes(b"\0" * 1000)
    (tmp_path / ".ckpt2.tmp-0000cccc").mkdir()  # another checkpoint's: not ours to delete
    (tmp_path / ".ckpt.tmp-notours").mkdir()  # not a name a save writes
    new = make("gpt2", seed=3)
    save_checkpoint(path, new)
    assert leftovers(tmp_path) == [".ckpt.tmp-notours", ".ckpt2.tmp-0000cccc"]
    same(load_checkpoint(path), new)


def test_refuses_to_replace_other_directories_and_intervened_models(tmp_path):
    other = tmp_path / "proj"
    (other / "arrays").mkdir(parents=True)  # a user's folder that merely has an arrays/ inside
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="proj exists and is not a jaxcirc checkpoint"):
        jaxcirc.save(other, make("gpt2"))
    assert (other / "notes.txt").read_text() == "mine" and (other / "arrays").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a jaxcirc checkpoint"):
        save_checkpoint(tmp_path / "file", make("gpt2"))
    save_checkpoint(tmp_path / "real", make("gpt2"))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileExistsError, match="link is a symlink"):
        save_checkpoint(tmp_path / "link", make("gpt2"))
    patched = jaxcirc.intervene(make("gpt2"), {"blocks.0.hook_resid_pre": jaxcirc.Zero()})
    with pytest.raises(ValueError, match="intervention"):
        save_checkpoint(tmp_path / "ckpt", patched)
    with pytest.raises(TypeError, match="Transformer"):
        save_checkpoint(tmp_path / "ckpt", {"W": np.ones(3)})
    assert not (tmp_path / "ckpt").exists()
    assert leftovers(tmp_path) == []


def test_flipped_bytes_are_caught_by_the_hashes(tmp_path, capfd):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    blob = largest_array_file(path)
    data = bytearray(blob.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0x55
    blob.write_bytes(bytes(data))
    rel = blob.relative_to(path / "arrays").as_posix()
    with pytest.raises(ValueError, match=f"arrays/{rel} differs .*SHA-256"):
        jaxcirc.load(path)
    assert "Event loop is closed" not in capfd.readouterr().err  # orbax never saw the bad file


def test_changed_array_is_caught_by_its_hash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    real = _checkpoint._read_arrays

    def flipped(directory):
        arrays = real(directory)
        arrays["blocks.1.mlp.W_in"] = arrays["blocks.1.mlp.W_in"].copy()
        arrays["blocks.1.mlp.W_in"].view(np.uint32)[3, 4] ^= 1 << 30  # one bit, as on disk
        return arrays

    monkeypatch.setattr(_checkpoint, "_read_arrays", flipped)
    with pytest.raises(ValueError, match="array 'blocks.1.mlp.W_in' differs .*SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{oops", r"marker .*JAXCIRC_CHECKPOINT is corrupt \(JSONDecodeError"),
        ('{"format": 7}', "has format 7; this version of jaxcirc reads formats \\[1, 2\\]"),
        ('{"format": 2, "arrays": 3}', "marker .*JAXCIRC_CHECKPOINT is corrupt: expected"),
    ],
)
def test_corrupt_marker_names_the_file(tmp_path, text, match):
    save_checkpoint(tmp_path / "ckpt", make("gpt2"))
    (tmp_path / "ckpt" / _checkpoint.MARKER).write_text(text)
    with pytest.raises(ValueError, match=match):
        jaxcirc.load(tmp_path / "ckpt")


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(n_layers=10**7), "n_layers=10000000, but the stored arrays hold 2 layers"),
        (dict(n_layers=-1), "n_layers=-1, but the stored arrays hold 2 layers"),
        (dict(d_model="16"), "d_model='16': expected an int"),
        (dict(n_heads=2.5), "n_heads=2.5: expected an int"),
        (dict(n_heads=0), "n_heads=0: expected a positive int"),
        (dict(d_vocab=-5), "d_vocab=-5: expected a positive int"),
        (dict(norm="rmsnrm"), "norm='rmsnrm': expected one of .*did you mean 'rmsnorm'"),
        (dict(n_headz=2), "unknown field 'n_headz'.*did you mean 'n_heads'"),
        (
            dict(n_heads=4, d_head=4),
            r"weight blocks\.0\.attn\.\w+ has shape .*; gpt2 config expects",
        ),
        (
            dict(d_vocab=10**12),
            r"W_E has shape \(23, 16\); gpt2 config expects \(1000000000000, 16",
        ),
        (dict(norm_eps=1e-3), "config.json was changed after the save"),
    ],
)
def test_config_is_checked_against_the_arrays_quickly(tmp_path, changes, match):
    path = tmp_path / "ckpt"
    save_checkpoint(path, make("gpt2"))
    edit_config(path, **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        jaxcirc.load(path)
    assert time.perf_counter() - start < 5
    assert "config.json" in str(info.value)


def test_symlinks_inside_a_checkpoint_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_checkpoint(a, make("gpt2", seed=0))
    save_checkpoint(b, make("gpt2", seed=1))
    (b / "arrays").rename(tmp_path / "b-arrays")
    (b / "arrays").symlink_to(a / "arrays")  # would load a's weights under b's marker
    with pytest.raises(ValueError, match="b/arrays is a symlink"):
        jaxcirc.load(b)
    blob = largest_array_file(a)
    blob.rename(tmp_path / "moved")
    blob.symlink_to(tmp_path / "moved")
    with pytest.raises(ValueError, match=f"{blob.name} is a symlink"):
        jaxcirc.load(a)


def test_nonfinite_weights_are_named(tmp_path):
    model = make("gpt2")
    bad = eqx.tree_at(
        lambda m: m.blocks[1].attn.W_Q, model, model.blocks[1].attn.W_Q.at[0, 3, 2].set(jnp.nan)
    )
    save_checkpoint(tmp_path / "ckpt", bad)  # saving a diverged model is fine
    with pytest.raises(
        NonFiniteWeightError,
        match=r"'blocks.1.attn.W_Q' in checkpoint .*ckpt "
        r"holds 1 NaN and 0 inf.*\(0, 3, 2\).*"
        "allow_nonfinite=True",
    ):
        jaxcirc.load(tmp_path / "ckpt")
    loaded = jaxcirc.load(tmp_path / "ckpt", allow_nonfinite=True)
    assert np.isnan(loaded.blocks[1].attn.W_Q[0, 3, 2])
    huge = eqx.tree_at(lambda m: m.embed.W_E, model, model.embed.W_E.at[2, 1].set(1e6))
    save_checkpoint(tmp_path / "huge", huge)
    with pytest.raises(NonFiniteWeightError, match="'embed.W_E'.*overflow float16"):
        jaxcirc.load(tmp_path / "huge", dtype="float16")


def test_format_1_checkpoints_still_load(tmp_path):
    model = make("gpt2")
    path = tmp_path / "v1"
    path.mkdir()
    (path / "config.json").write_text(model.cfg.to_json())
    _checkpoint._write_arrays(path / "arrays", models.state_dict(model))
    (path / _checkpoint.MARKER).write_text('{"format": 1}')
    with pytest.warns(UserWarning, match="format-1 checkpoint without content hashes"):
        same(jaxcirc.load(path), model)
    save_checkpoint(path, model)  # a format-1 checkpoint is jaxcirc's, so it may be replaced
    assert marker(path)["format"] == 2


def test_recovery_restores_the_newest_version_set_aside_for_every_kind_of_folder(tmp_path):
    """Two killed saves left two previous versions; the newer one (by when it was completed,
    not by its random name) goes back into place, for an SAE folder as for a checkpoint."""
    from jaxcirc import _atomic, sae

    older = sae.init("topk", 8, 16, k=2, key=jax.random.key(0))
    newer = sae.init("topk", 8, 16, k=2, key=jax.random.key(1))
    sae.save(tmp_path / "b", older)
    sae.save(tmp_path / "a", newer)
    os.replace(tmp_path / "b", tmp_path / ".s.old-ffffffff")  # sorts last by name
    past = time.time() - 100
    for f in (tmp_path / ".s.old-ffffffff").rglob("*"):
        os.utime(f, (past, past))
    os.utime(tmp_path / ".s.old-ffffffff", (past, past))
    os.replace(tmp_path / "a", tmp_path / ".s.old-00000000")
    (tmp_path / ".s.tmp-12345678").mkdir()
    loaded = sae.load(tmp_path / "s")
    assert np.array_equal(np.asarray(loaded.W_enc), np.asarray(newer.W_enc))
    assert not _atomic.has_interrupted_save(tmp_path / "s")
