"""Work around a silent XLA:CPU miscompilation in jaxlib 0.10.2 (jax-ml/jax#39103): a weighted
sum over a leading axis, `jnp.sum(w[:, None, None] * x, 0)` on `f32[4, 16, 32768]`, returns
wrong values without an error; the YNN reduce fusion is the culprit. On that version jaxcirc
adds `--xla_cpu_experimental_ynn_fusion_type=-reduce` to `XLA_FLAGS`, which XLA reads when the
CPU backend starts, so it must run before the first computation (importing jaxcirc first does
that). `tests/test_xla_workaround.py` checks the reproduction."""

from __future__ import annotations

import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

AFFECTED = ("0.10.2",)
FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def apply() -> bool:
    """Add the flag on an affected jaxlib; return whether it is in effect for this process."""
    try:
        jaxlib = version("jaxlib")
    except PackageNotFoundError:
        return False
    if jaxlib not in AFFECTED:
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return FLAG in flags
    if _backend_started():
        warnings.warn(
            f"jaxlib {jaxlib} has a CPU miscompilation of weighted sums (jax-ml/jax#39103) "
            f"that jaxcirc works around with XLA_FLAGS={FLAG}, but JAX's backend already "
            "started in this process: import jaxcirc before running any JAX computation, or "
            "set that flag in the environment",
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


APPLIED = apply()  # on import, which `jaxcirc/__init__.py` does first
