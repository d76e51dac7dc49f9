"""jaxcirc's EAP agrees with auto-circuit's on a tracr-compiled model (rank correlation ≥ 0.99).

auto-circuit needs TransformerLens 2.x and numpy<2, so it lives in its own venv; the test runs
`benchmarks/bench_eap_auto_circuit.py`'s comparison (export here, auto-circuit in a subprocess
of that venv) and skips where the venv has not been created.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_eap_auto_circuit.py"
VENV_PYTHON = ROOT / "benchmarks" / "auto_circuit" / ".venv" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not VENV_PYTHON.exists(),
    reason="auto-circuit venv missing; create it with `bash benchmarks/auto_circuit/setup.sh`",
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_eap_auto_circuit", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eap_matches_auto_circuit_on_tracr_reverse(tmp_path):
    pytest.importorskip("tracr")  # compiles the program where no cached case ships
    r = _bench().run_case("reverse", tmp_path / "reverse", n=8, repeat=0)
    assert r["auto_circuit"]["tl_logits_max_abs_diff"] <= 1e-4
    assert r["n_shared"] == r["n_edges_jaxcirc"] == r["n_edges_auto_circuit"]
    assert r["n_nonzero"] >= 2
    assert r["spearman_abs"] >= 0.99
    assert r["pearson_signed"] >= 0.99
