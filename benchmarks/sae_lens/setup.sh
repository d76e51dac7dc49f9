#!/usr/bin/env bash
# Creates benchmarks/sae_lens/.venv with SAELens (PyPI `sae-lens`, pinned below) next to (never
# inside) the python that runs jaxcirc. torch is pinned to the project's version
# (tests/constraints.txt) and installed first, and every later pip call is constrained to it, so
# pip never pulls a CUDA build. Touches .venv/READY once `import sae_lens` works.
# Usage: bash benchmarks/sae_lens/setup.sh  [python executable]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-python3}"
venv="$here/.venv"
sae_lens_version="6.54.12"
"$python" -m venv "$venv"
rm -f "$venv/READY"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\n' >"$constraints"
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0
"${pip[@]}" -c "$constraints" "sae-lens==$sae_lens_version"
"$venv/bin/python" -c "import sae_lens, torch, transformer_lens; import importlib.metadata as md; print('ok:', ', '.join(f'{p} {md.version(p)}' for p in ('sae-lens', 'transformer-lens', 'torch')))"
touch "$venv/READY"
