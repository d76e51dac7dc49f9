#!/usr/bin/env bash
# Creates benchmarks/auto_circuit/.venv with auto-circuit (PyPI `auto-circuit`), TransformerLens 2.x
# and numpy<2, next to (never inside) the system python that runs jaxcirc. torch is pinned to the
# version the rest of the project uses (tests/constraints.txt), installed first so pip's config
# finds the CPU build. Usage: bash benchmarks/auto_circuit/setup.sh  [python executable]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-python3}"
venv="$here/.venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\n' >"$constraints"
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0
# pyarrow<21: newer pyarrow wheels need numpy>=2, and transformer-lens 2.x imports datasets -> pyarrow
"${pip[@]}" -c "$constraints" "auto-circuit==1.0.1" "transformer-lens<3" "numpy<2" "pyarrow<21" scipy
"$venv/bin/python" -c "import auto_circuit, transformer_lens, numpy, torch; import importlib.metadata as md; print('ok:', ', '.join(f'{p} {md.version(p)}' for p in ('auto-circuit', 'transformer-lens', 'numpy', 'torch')))"
