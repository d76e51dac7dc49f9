"""Shared benchmark plumbing: model sizes, weights on disk, one subprocess per side, timing,
the machine description and `RESULTS.md` sections.

A benchmark script runs as a parent that writes random weights and tokens to a work folder,
then re-invokes itself once per side (`--side jax`, `--side torch`, ...). Each side loads the
same weights, saves its outputs there, and prints one JSON line with its timings and its own
peak memory, so the two frameworks never share a process.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # run from a checkout without installing jaxcirc


def _xla_workaround() -> None:
    """Set jaxcirc's XLA flag (a jaxlib 0.10.2 CPU miscompilation, `jaxcirc/_xla_workaround.py`)
    before anything here starts JAX's backend (`machine()` asks for the devices), without
    importing JAX: the PyTorch sides stay free of it, and their peak memory with them."""
    path = HERE.parent / "jaxcirc" / "_xla_workaround.py"
    spec = importlib.util.spec_from_file_location("_jaxcirc_xla_workaround", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


_xla_workaround()
RESULTS = HERE / "RESULTS.md"
CORES = len(os.sched_getaffinity(0))

GPT2_SMALL = dict(
    n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
)
QUICK = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=1000, n_ctx=128)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny model, print only (smoke test)")
    p.add_argument("--repeat", type=int, default=5, help="steady-state runs per side process")
    p.add_argument("--rounds", type=int, default=2, help="side processes, alternated, per side")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p


def sizes(quick: bool) -> dict:
    return QUICK if quick else GPT2_SMALL


# ---------------------------------------------------------------- weights and inputs


def jaxcirc_config(sz: dict):
    """The GPT-2 config: tied embeddings, no unembedding bias (as GPT-2 itself)."""
    import jaxcirc as jc

    return jc.models.gpt2(**sz)


def write_weights(sz: dict, path: Path, seed: int = 0) -> None:
    """Random GPT-2 weights (jaxcirc names) to `path`, with LayerNorm and biases off 1 and 0."""
    import jax

    import jaxcirc as jc

    model = jc.models.build(jaxcirc_config(sz), key=jax.random.key(seed))
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, x in jc.models.state_dict(model).items():
        if name.endswith(".w"):
            x = x + 0.1 * rng.standard_normal(x.shape, np.float32)
        elif name.endswith(".b") or ".b_" in name:
            x = x + 0.02 * rng.standard_normal(x.shape, np.float32)
        arrays[name] = x
    np.savez(path, **arrays)


def load_jaxcirc(sz: dict, path: Path):
    import jaxcirc as jc

    with np.load(path) as arrays:
        return jc.models.from_state_dict(jaxcirc_config(sz), arrays)


def load_tl(sz: dict, path: Path):
    """A TransformerLens `HookedTransformer` with the weights at `path`, nothing processed."""
    import warnings

    import torch
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(
        **sz,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        eps=1e-5,
        device="cpu",
        init_weights=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = tl.HookedTransformer(cfg)
    with np.load(path) as arrays:
        state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    state["unembed.b_U"] = torch.zeros(sz["d_vocab"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    assert not unexpected and set(missing) <= buffers, (missing, unexpected)
    return model.eval()


def tokens(batch: int, seq: int, d_vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, d_vocab, (batch, seq), dtype=np.int64)


# ---------------------------------------------------------------- measuring one side


def setup_torch():
    import torch

    torch.set_num_threads(CORES)
    return torch


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux's `VmHWM` belongs to the address space, which `execve` replaces; `ru_maxrss` is kept
    across `execve`, so in a side process it would start at the parent's size at fork time.
    """
    status = Path("/proc/self/status")
    if status.exists():
        return int(re.search(r"VmHWM:\s*(\d+) kB", status.read_text()).group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # macOS: bytes


def compile_clock() -> Callable[[], float]:
    """Start summing the seconds JAX spends tracing, lowering and compiling; return a reader."""
    import jax

    total = [0.0]

    def listen(event: str, seconds: float, **_):
        if event.startswith("/jax/core/compile/"):  # jaxpr trace, MLIR lowering, XLA compile
            total[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    return lambda: total[0]


def timed(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    """Wall-clock seconds of `repeat` calls of `fn` (which must block until its result is
    ready), and the last call's result."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def finish_side(workdir: Path, side: str, outputs: dict[str, np.ndarray], **timings) -> None:
    """Save `outputs` for the parent to compare, and print this side's report as JSON."""
    for name, value in outputs.items():
        np.save(workdir / f"{side}_{name}.npy", np.asarray(value))
    print(json.dumps({**timings, "peak_rss_mib": peak_rss_mib()}))


# ---------------------------------------------------------------- the parent


def run_sides(script: str, workdir: Path, sides: list[str], rounds: int) -> dict[str, dict]:
    """Run `script --side S` (same flags) for each side in its own process, `rounds` times,
    alternating sides so a drifting machine load hits all of them; return merged reports."""
    env = {**os.environ, "TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    runs = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in sides:
            cmd = [sys.executable, script, *sys.argv[1:], "--side", side, "--workdir", str(workdir)]
            print(f"[{side}, round {round_ + 1}/{rounds}] running ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"side {side} failed:\n{proc.stderr[-4000:]}")
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {runs[side][-1]}", flush=True)
    return {side: _merge(reports) for side, reports in runs.items()}


def _merge(reports: list[dict]) -> dict:
    """Pool steady-state samples, keeping each round's median; median of other times; max of
    memory."""
    out = dict(reports[0])
    for key in reports[0]:
        values = [r[key] for r in reports]
        if key == "steady_s":
            out[key] = [t for v in values for t in v]
            out["round_median_s"] = [statistics.median(v) for v in values]
        elif key.endswith("_s"):
            out[key] = statistics.median(values)
        elif key.endswith("_mib"):
            out[key] = max(values)
    return out


def load_output(workdir: Path, side: str, name: str) -> np.ndarray:
    return np.load(workdir / f"{side}_{name}.npy")


def check_close(a: np.ndarray, b: np.ndarray, atol: float, what: str) -> float:
    """Max abs difference of `a` and `b`; exit (no results reported) if it exceeds `atol`."""
    if a.shape != b.shape:
        sys.exit(f"{what}: shapes differ, {a.shape} vs {b.shape}")
    err = float(np.max(np.abs(a - b)))
    if not err <= atol:
        sys.exit(f"{what}: results disagree, max |diff| = {err:.2e} > {atol}")
    print(f"{what}: agree, max |diff| = {err:.2e} (<= {atol})")
    return err


def sgemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Best float32 GFLOP/s of an n×n×n torch matmul on all cores: a practical CPU ceiling."""
    torch = setup_torch()
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / min(timed(lambda: a @ b, repeat)[0]) / 1e9


def machine() -> dict:
    import importlib.metadata as md

    import psutil

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    flags = re.search(r"flags\s*:\s*(.*)", cpuinfo)
    simd = [f for f in ("avx2", "avx512f", "amx_tile") if flags and f in flags.group(1).split()]
    versions = {}
    for pkg in ("jax", "jaxlib", "equinox", "torch", "transformers", "transformer-lens"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "-"
    import jax

    devices = jax.devices()  # an accelerator's absolute times are recorded with its name
    accelerator = (
        f"{len(devices)} × {devices[0].device_kind} ({devices[0].platform})"
        if devices[0].platform != "cpu"
        else None
    )
    return {
        "accelerator": accelerator,
        "cpu": (cpu.group(1).strip() if cpu else platform.processor()) + f" ({', '.join(simd)})",
        "cores": CORES,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["python", os.path.relpath(sys.argv[0], HERE.parent), *sys.argv[1:]]),
    }


def machine_markdown(info: dict) -> str:
    return "\n".join(
        [
            f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; "
            f"1-min load average at start {info['load_avg_1min_at_start']}",
            *([f"- Accelerator: {info['accelerator']}"] if info.get("accelerator") else []),
            f"- Software: Python {info['python']}; {info['versions']}",
            f"- Date: {info['date']}; command: `{info['command']}`",
        ]
    )


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(name: str, body: str, *, record: bool = True) -> None:
    """Print a benchmark's report and, with `record` (not a `--quick` run), write it as the
    section `name` of `RESULTS.md`."""
    print(body, flush=True)
    if record:
        write_section(name, body)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section of `RESULTS.md` between `name`'s markers: under a lock
    (several benchmarks may finish at once) and by an atomic rename."""
    import fcntl

    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        if start in text and end in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        tmp = RESULTS.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, RESULTS)
    print(f"updated section {name!r} of {RESULTS}")


def speedups(slow: dict, fast: dict, digits: int = 2) -> str:
    """Per-round ratios of steady-state medians (rounds alternate, so each shares a load)."""
    pairs = zip(slow["round_median_s"], fast["round_median_s"])
    return ", ".join(f"{s / f:.{digits}f}×" for s, f in pairs)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"
