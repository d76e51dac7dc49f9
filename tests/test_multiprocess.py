"""Several processes under `jax.distributed`: the same programs give the same numbers.

Two local CPU processes, each owning 2 devices (`--xla_force_host_platform_device_count=2`),
join one run with `jax.distributed.initialize` (CPU collectives over gloo) and build one mesh
over all 4 devices. A data-parallel patching sweep and a data-parallel SAE training run on that
mesh give, in both processes, what one plain process without a mesh gives: the sweep's effects
and the SAE's loss curve and weights. Checkpoints and `jaxcirc.save` go to one shared folder,
written by process 0 alone; a save that fails on process 0 is an error on both processes.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

STEPS = 12


def work(process: int, processes: int, port: int, checkpoint: str) -> dict:
    """One process's share (with `processes > 1`) or the whole run on one process."""
    import jax

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=processes, process_id=process)
    import jax.numpy as jnp
    from conftest import tiny
    from jax.sharding import Mesh

    import jaxcirc as jc
    from jaxcirc.metrics import bind, logit_diff
    from jaxcirc.patching import sweep

    jax.config.update("jax_disable_most_optimizations", True)
    mesh = Mesh(np.array(jax.devices()), ("b",)) if processes > 1 else None
    kw = {} if mesh is None else {"mesh": mesh}
    model = tiny("gpt2", seed=3, n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                 d_vocab=20, n_ctx=8)  # fmt: skip
    clean = jax.random.randint(jax.random.key(1), (7, 5), 0, 20)
    corrupt = jax.random.randint(jax.random.key(2), (7, 5), 0, 20)
    metric = bind(logit_diff, answer=jnp.arange(7) % 20, distractor=(3 * jnp.arange(7) + 1) % 20)
    effects = sweep(model, clean, corrupt, metric, buckets=1, **kw)

    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((16, 8))  # each row a mix of 2 of 16 planted directions
    codes = [rng.random((32, 16)) * (rng.random((32, 16)) < 2 / 16) for _ in range(STEPS)]
    batches = [(c @ atoms).astype(np.float32) for c in codes]
    sae = jc.sae.init("topk", 8, 16, k=2, key=jax.random.key(3))
    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=2, dead_tokens=64, log_every=1)
    res = jc.sae.train(sae, iter(batches), steps=STEPS, config=config, checkpoint=checkpoint,
                       checkpoint_every=4, **kw)  # fmt: skip
    folder = os.path.dirname(checkpoint)
    jc.save(os.path.join(folder, "model"), model)  # every process calls it; process 0 writes
    loaded = jc.load(os.path.join(folder, "model"))
    same = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(model))
    )
    try:  # a folder that is not a checkpoint: process 0 refuses, and so does every process
        jc.save(os.path.join(folder, "occupied"), model)
        refused = None
    except Exception as e:  # noqa: BLE001 - the test reads which error each process got
        refused = f"{type(e).__name__}: {e}"
    return {
        "saved model loads equal": same,
        "refused": refused,
        "devices": len(jax.devices()),
        "local devices": len(jax.local_devices()),
        "effects": np.asarray(effects).tolist(),
        "losses": [h["saes"][0]["loss"] for h in res.history],
        "W_dec": np.asarray(res.saes[0].W_dec).tolist(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(process, processes, port, devices, checkpoint) -> subprocess.Popen:
    from conftest import device_env

    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.abspath(__file__), str(process), str(processes), str(port),
           str(checkpoint)]  # fmt: skip
    return subprocess.Popen(cmd, env=device_env(devices), cwd=here, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")


@pytest.fixture(scope="module")
def runs(folders):
    port = _free_port()
    one, two = (f / "ckpt" for f in folders)  # the two processes share one folder
    for f in folders:  # a folder holding someone's file: jaxcirc.save must refuse it
        (f / "occupied").mkdir(exist_ok=True)
        (f / "occupied" / "notes.txt").write_text("not a checkpoint")
    procs = [_launch(0, 1, 0, 1, one), _launch(0, 2, port, 2, two), _launch(1, 2, port, 2, two)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-4000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_two_processes_form_one_mesh(runs):
    single, *pair = runs
    assert single["devices"] == 1
    assert [(r["devices"], r["local devices"]) for r in pair] == [(4, 2), (4, 2)]


def test_two_process_sweep_equals_one_process(runs):
    single, *pair = runs
    for r in pair:
        np.testing.assert_allclose(r["effects"], single["effects"], rtol=1e-5, atol=1e-6)


def test_two_process_sae_training_equals_one_process(runs):
    single, *pair = runs
    losses = single["losses"]
    assert len(losses) == STEPS and np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    for r in pair:
        np.testing.assert_allclose(r["losses"], single["losses"], rtol=1e-5)
        np.testing.assert_allclose(r["W_dec"], single["W_dec"], rtol=1e-5, atol=1e-6)


def test_one_checkpoint_written_by_process_zero(runs, folders):
    one, two = folders
    # one complete checkpoint and one saved model, no temporary or replaced copies left by a
    # second writer, the occupied folder untouched
    assert sorted(p.name for p in two.iterdir()) == ["ckpt", "model", "occupied"]
    assert [p.name for p in (two / "occupied").iterdir()] == ["notes.txt"]
    assert all(r["saved model loads equal"] for r in runs)
    single = json.loads((one / "ckpt" / "state.json").read_text())
    pair = json.loads((two / "ckpt" / "state.json").read_text())
    assert pair["step"] == single["step"] == STEPS


def test_a_save_that_fails_on_process_zero_fails_on_every_process(runs):
    single, zero, one = runs
    assert single["refused"].startswith("FileExistsError") and "occupied" in single["refused"]
    assert zero["refused"] == single["refused"].replace(*_folders_of(single, zero))
    assert one["refused"].startswith("RuntimeError: process 0 failed to write")  # no hang


def _folders_of(single, zero):
    """The two runs' folders, as their error messages name them."""
    a = single["refused"].split("FileExistsError: ", 1)[1].split(" ", 1)[0]
    b = zero["refused"].split("FileExistsError: ", 1)[1].split(" ", 1)[0]
    return a, b


if __name__ == "__main__":
    process, processes, port = (int(a) for a in sys.argv[1:4])
    print(json.dumps(work(process, processes, port, sys.argv[4])))
