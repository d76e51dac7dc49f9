"""The shipped Python-code models of the weight-sparse study (Gao et al. 2025, arXiv 2511.13653).

`python_model(kind)`: the `jaxcirc.models.weight_sparse()` shape (2 layers, d_model 128, 8
heads × 16, 512 MLP neurons, the 2048-token Python BPE `jaxcirc.io.python_bpe()`, AbsTopK 1/4,
attention sink) pretrained on the Python standard library's source by
`benchmarks/train_sparse_python.py` with fixed seeds: `"sparse"` with every weight matrix at
1/16 nonzeros, `"dense"` the same run without the projection, `"dense_matched"` the dense run's
snapshot whose held-out loss is nearest the sparse model's (the comparison at matched
pretraining loss). `python_models_record()` is the training record: settings, held-out files,
loss curves and task accuracies.
"""

from __future__ import annotations

import importlib.resources
import json

from ._induction import _shipped

KINDS = {"sparse": "python_sparse_2l", "dense": "python_dense_2l",
         "dense_matched": "python_dense_matched_2l"}  # fmt: skip


def python_model(kind: str = "sparse"):
    """The shipped Python-code model `kind` (`"sparse"`, `"dense"` or `"dense_matched"`)."""
    if kind not in KINDS:
        from ..models._site import nearest

        raise ValueError(f"unknown kind {kind!r}{nearest(kind, tuple(KINDS))}; choose from "
                         f"{', '.join(KINDS)}")  # fmt: skip
    return _shipped(KINDS[kind])


def python_models_record() -> dict:
    """The record `benchmarks/train_sparse_python.py` wrote beside the shipped models."""
    path = importlib.resources.files("jaxcirc").joinpath("data", "python_models.json")
    return json.loads(path.read_text())
