"""Per-device peak memory of a sharded `resid_pre` sweep on 1, 2, 4 and 8 devices (issue 16).

`jaxcirc.patching.sweep(..., mesh=Mesh(devices[:n], ("batch",)))` splits the prompts over `n`
virtual CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`; the script re-runs
itself with it). For each `n`, the compiled SPMD program's `memory_analysis()` gives the bytes
one device holds: its arguments (the replicated weights and its share of the tokens), its
temporaries (the activations of its prompts) and its outputs. `memory_budget` is set high so
no device chunks its prompts: the temporaries then follow the prompts per device. Every
sharded result is checked against the unsharded sweep. The devices share this machine's
cores, so wall times are not a speed-up measurement; they are printed for completeness.
Usage: `python benchmarks/bench_sharding.py [--quick]`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

FLAG = "--xla_force_host_platform_device_count=8"
if FLAG not in os.environ.get("XLA_FLAGS", ""):  # before JAX starts: re-run with 8 devices
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

DEVICES = (1, 2, 4, 8)
SIZES = c.QUICK  # 2 layers, d_model 64, d_vocab 1000: compiles in about a minute on 2 cores
QUICK = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=100, n_ctx=16)
BATCH, SEQ = 64, 16
QUICK_BATCH, QUICK_SEQ = 16, 8


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    import jaxcirc as jc
    from jaxcirc import _mesh
    from jaxcirc.patching import sweep

    info = c.machine()
    sz, batch, seq = (QUICK, QUICK_BATCH, QUICK_SEQ) if args.quick else (SIZES, BATCH, SEQ)
    model = jc.models.gpt2(**sz, key=jax.random.key(0))
    clean = jnp.asarray(c.tokens(batch, seq, sz["d_vocab"], seed=1))
    corrupt = jnp.asarray(c.tokens(batch, seq, sz["d_vocab"], seed=2))
    answer = jnp.arange(batch) % sz["d_vocab"]
    metric = jc.metrics.bind(jc.metrics.logit_diff, answer=answer, distractor=answer[::-1])
    kw = dict(memory_budget=1 << 36, chunk_size=seq)  # no prompt chunks; the same unit chunks
    start = time.perf_counter()
    reference = np.asarray(sweep(model, clean, corrupt, metric, **kw))
    ref_s = time.perf_counter() - start
    rows = []
    for n in DEVICES:
        mesh = Mesh(np.array(jax.devices()[:n]), ("batch",))
        start = time.perf_counter()
        with _mesh.recording() as seen:
            got = np.asarray(sweep(model, clean, corrupt, metric, mesh=mesh, **kw))
        first = time.perf_counter() - start
        start = time.perf_counter()
        np.asarray(sweep(model, clean, corrupt, metric, mesh=mesh, **kw))
        steady = time.perf_counter() - start
        ((program, inputs),) = seen
        mem = program.lower(*inputs).compile().memory_analysis()
        peak = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
        rows.append(
            (n, -(-batch // n), mem, peak, float(np.abs(got - reference).max()), first, steady)
        )
    base = rows[0][3]
    mib = lambda b: f"{b / 2**20:.2f}"
    table = c.table(
        ["devices", "prompts / device", "arguments MiB", "temporaries MiB", "peak MiB / device",
         "vs 1 device", "max abs diff vs unsharded", "first call s", "steady s"],
        [
            [n, per, mib(m.argument_size_in_bytes), mib(m.temp_size_in_bytes), mib(peak),
             f"{peak / base:.2f}×", f"{diff:.1e}", f"{first:.1f}", f"{steady:.2f}"]
            for n, per, m, peak, diff, first, steady in rows
        ],
    )  # fmt: skip
    falls = all(a[3] > b[3] for a, b in zip(rows, rows[1:]))
    body = "\n\n".join(
        [
            "## Sharded sweep: per-device peak memory (bench_sharding)",
            f"`sweep(site='resid_pre', mesh=Mesh(devices[:n], ('batch',)))` on a GPT-2-shaped "
            f"model ({sz['n_layers']} layers, d_model {sz['d_model']}, d_vocab {sz['d_vocab']}, "
            f"random weights), {batch} prompt pairs of {seq} tokens, metric "
            f"`bind(logit_diff, answer, distractor)`; `memory_analysis()` of the compiled SPMD "
            f"program (per device). Unsharded sweep: {ref_s:.1f} s first call. Virtual CPU "
            f"devices share {c.CORES} cores: times are not a speed-up.",
            table,
            f"Peak per device falls with every doubling of devices: **{'yes' if falls else 'NO'}**"
            f" (the replicated weights, {mib(rows[0][2].argument_size_in_bytes)} MiB of "
            f"arguments, stay on every device).",
            c.machine_markdown(info),
        ]
    )
    c.publish("bench_sharding", body, record=not args.quick)


if __name__ == "__main__":
    main()
