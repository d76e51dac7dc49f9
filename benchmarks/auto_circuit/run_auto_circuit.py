"""auto-circuit's EAP on a model exported by `export.py`; runs in `benchmarks/auto_circuit/.venv`.

Builds a TransformerLens 2.x `HookedTransformer` from `config.json` + `weights.npz`, checks its
logits on the clean prompts against jaxcirc's (atol 1e-4), wraps it with auto-circuit's
`patchable_model(factorized=True, separate_qkv=True, slice_output="last_seq")`, and runs
`mask_gradient_prune_scores(grad_function="logit", mask_val=0.0, integrated_grad_samples=None,
ablation_type=RESAMPLE, clean_corrupt="corrupt")` — auto-circuit's fast, exact form of edge
attribution patching (its docs: equal to `edge_attribution_patching_prune_scores`). The answer
function matches jaxcirc's metric: `avg_diff` for a logit difference, `avg_val` for one logit.

Conventions: auto-circuit's mask is 0 on the clean edge and 1 on the patched (corrupt) one, and
its loss is `-metric`, so its score is `(corrupt - clean) · ∂(-metric)/∂input`: the negative of
jaxcirc's `(ablated - clean) · ∂metric/∂input`. The scores are written as auto-circuit computes
them (`ac_scores`) next to the edge names mapped to jaxcirc's (`"Resid Start"` -> `embed`,
`A{l}.{h}` -> `L{l}H{h}`, `MLP {l}` -> `MLP{l}`, `A{l}.{h}.Q` -> `L{l}H{h}.q`,
`Resid End` -> `logits`).

    benchmarks/auto_circuit/.venv/bin/python benchmarks/auto_circuit/run_auto_circuit.py DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402


def peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        return int(re.search(r"VmHWM:\s*(\d+) kB", status.read_text()).group(1)) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def jaxcirc_name(name: str) -> str:
    """auto-circuit node name -> jaxcirc graph name."""
    if name == "Resid Start":
        return "embed"
    if name == "Resid End":
        return "logits"
    if m := re.fullmatch(r"A(\d+)\.(\d+)(?:\.([QKV]))?", name):
        layer, head, qkv = m.groups()
        return f"L{layer}H{head}" + (f".{qkv.lower()}" if qkv else "")
    if m := re.fullmatch(r"MLP (\d+)", name):
        return f"MLP{m.group(1)}"
    raise ValueError(f"unknown auto-circuit node {name!r}")


def load_model(workdir: Path, info: dict):
    import torch
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(**info["tl_config"], init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tl.HookedTransformer(cfg)
    with np.load(workdir / "weights.npz") as arrays:
        state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or not set(missing) <= buffers:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--repeat", type=int, default=5, help="timed EAP runs after the first")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    a = p.parse_args(argv)

    import torch
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType
    from auto_circuit.utils.graph_utils import patchable_model

    torch.set_num_threads(a.threads)
    rss_imports = peak_rss_mib()
    info = json.loads((a.workdir / "config.json").read_text())
    data = dict(np.load(a.workdir / "data.npz"))
    clean = torch.from_numpy(data["clean"]).long()
    corrupt = torch.from_numpy(data["corrupt"]).long()

    model = load_model(a.workdir, info)
    with torch.no_grad():
        logits = model(clean).numpy()
    err = float(np.abs(logits - data["logits"]).max())
    if not err <= 1e-4:
        raise SystemExit(f"TransformerLens logits differ from jaxcirc's: max |diff| {err:.2e}")

    model.cfg.use_attn_result = True  # what auto-circuit's factorized graph reads and writes
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    model.setup()
    for param in model.parameters():
        param.requires_grad_(False)
    patchable = patchable_model(
        model,
        factorized=True,
        slice_output="last_seq",
        separate_qkv=True,
        device=torch.device("cpu"),
    )
    answers = torch.from_numpy(data["answers"]).long()
    wrong = torch.from_numpy(data["wrong"]).long()
    dataset = PromptDataset(clean, corrupt, list(answers), list(wrong))
    loader = PromptDataLoader(
        dataset, seq_len=None, diverge_idx=0, batch_size=len(clean), shuffle=False
    )
    answer_function = {"logit_diff": "avg_diff", "logit": "avg_val"}[info["metric"]]

    def run():
        return mask_gradient_prune_scores(
            patchable, loader, None, grad_function="logit", answer_function=answer_function,
            mask_val=0.0, integrated_grad_samples=None, ablation_type=AblationType.RESAMPLE,
            clean_corrupt="corrupt",
        )  # fmt: skip

    t = time.perf_counter()
    scores = run()
    first = time.perf_counter() - t
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        scores = run()
        times.append(time.perf_counter() - t)

    edges = sorted(patchable.edges, key=lambda e: (e.src.src_idx, e.dest.layer, e.dest.name))
    rows = [
        (e.src.name, e.dest.name, jaxcirc_name(e.src.name), jaxcirc_name(e.dest.name),
         float(e.prune_score(scores)))
        for e in edges
    ]  # fmt: skip
    out = {
        "edges": rows,
        "tl_logits_max_abs_diff": err,
        "first_call_s": first,
        "steady_s": times,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_imports_mib": rss_imports,
        "threads": a.threads,
        "versions": {
            m: __import__("importlib.metadata").metadata.version(m)
            for m in ("auto-circuit", "transformer-lens", "torch", "numpy")
        },
    }
    (a.workdir / "auto_circuit.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "edges"} | {"n_edges": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
