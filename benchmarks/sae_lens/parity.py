"""Parity of jaxcirc's SAEs with SAELens's on SmolLM2-sized random SAEs (d_in 576, d_sae 4608).

Both directions, each architecture both can express: folders written by jaxcirc's
`save_saelens` and read by SAELens's `SAE.load_from_disk`, and folders written by SAELens's
own `save_model` / `save_inference_model` (BatchTopK) and read by `load_saelens`. Weights are
random with non-zero biases and thresholds; the inputs are random activations. The SAELens
side runs in its own process with `benchmarks/sae_lens/.venv` (`setup.sh`) when it exists,
else with this python. Records the largest absolute differences of the codes `f` and the
reconstructions, and the number of (row, feature) cells whose active/inactive state differs.

Usage: python benchmarks/sae_lens/parity.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE.parent.parent))

OURS = ("relu", "topk", "batchtopk", "jumprelu")
THEIRS = ("standard", "topk", "jumprelu", "batchtopk")


def _random_ours(arch, d_in, d_sae, seed, b_mean):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import jaxcirc as jc

    rng = np.random.default_rng(seed)
    k = 32 if arch in ("topk", "batchtopk") else None
    sae = jc.sae.init(arch, d_in, d_sae, key=jax.random.key(seed), k=k,
                      site="blocks.3.hook_resid_post")  # fmt: skip
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    sae = eqx.tree_at(
        lambda s: (s.W_enc, s.b_enc, s.W_dec, s.b_dec),
        sae,
        (f32(rng.normal(0, d_in**-0.5, (d_in, d_sae))), f32(rng.normal(b_mean, 0.2, d_sae)),
         f32(rng.normal(0, d_in**-0.5, (d_sae, d_in))), f32(rng.normal(0, 0.3, d_in))),
    )  # fmt: skip
    if arch == "jumprelu":
        theta = rng.uniform(0.05, 0.5, d_sae)
        sae = eqx.tree_at(lambda s: s.log_threshold, sae, f32(np.log(theta)))
    if arch == "batchtopk":
        sae = eqx.tree_at(lambda s: s.threshold, sae, f32(0.3))
    return sae


def _margin(sae, x):
    """Per cell, how far the active/inactive decision is from a tie: |pre − θ| for a
    threshold, |pre| for ReLU, and for TopK the gap between the k-th and (k+1)-th largest."""
    import jax.numpy as jnp

    pre = np.asarray(sae.pre(jnp.asarray(x)), np.float64)
    arch = sae.architecture
    if arch == "relu":
        return np.abs(pre)
    if arch == "jumprelu":
        return np.abs(pre - np.asarray(sae.threshold, np.float64))
    if arch == "batchtopk":
        return np.abs(pre - float(sae.threshold))
    top = -np.sort(-pre, axis=-1)
    gap = top[:, sae.k - 1] - top[:, sae.k]
    return np.broadcast_to(gap[:, None], pre.shape)


def side_torch(work: Path) -> None:
    """SAELens's side: write its own SAEs, then encode/decode every folder."""
    import torch
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    spec = json.loads((work / "spec.json").read_text())
    d_in, d_sae = spec["d_in"], spec["d_sae"]
    torch.manual_seed(0)
    common = dict(d_in=d_in, d_sae=d_sae)
    for arch in THEIRS:
        if arch == "batchtopk":
            sl = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=32))
        else:
            cfg_cls, cls = {"standard": (StandardSAEConfig, StandardSAE),
                            "topk": (TopKSAEConfig, TopKSAE),
                            "jumprelu": (JumpReLUSAEConfig, JumpReLUSAE)}[arch]  # fmt: skip
            cfg = cfg_cls(**common, **({"k": 32} if arch == "topk" else {}))
            cfg.metadata = SAEMetadata(hook_name="blocks.3.hook_resid_post")
            sl = cls(cfg)
        with torch.no_grad():
            sl.W_enc.normal_(0, d_in**-0.5)
            sl.W_dec.normal_(0, d_in**-0.5)
            sl.b_enc.normal_(spec["b_mean"], 0.2)
            sl.b_dec.normal_(0, 0.3)
            if arch == "jumprelu":
                sl.threshold.uniform_(0.05, 0.5)
            if arch == "batchtopk":
                sl.topk_threshold.fill_(0.3)
        folder = work / f"theirs_{arch}"
        (sl.save_inference_model if arch == "batchtopk" else sl.save_model)(folder)
    x = torch.from_numpy(np.load(work / "x.npy"))
    out = {}
    for folder in sorted(work.glob("*_*")):
        sae = SAE.load_from_disk(folder)
        with torch.no_grad():
            f = sae.encode(x)
            out[f"{folder.name}.f"] = f.numpy()
            out[f"{folder.name}.x"] = sae.decode(f).numpy()
    np.savez(work / "torch.npz", **out)
    print(json.dumps({"folders": sorted(p.name for p in work.glob("*_*"))}))


def _compare(d_in, d_sae, n, b_mean):
    import jax.numpy as jnp

    from jaxcirc.io import load_saelens, save_saelens

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = {"d_in": d_in, "d_sae": d_sae, "b_mean": b_mean}
        (work / "spec.json").write_text(json.dumps(spec))
        x = np.random.default_rng(1).normal(0, 1, (n, d_in)).astype(np.float32)
        np.save(work / "x.npy", x)
        for i, arch in enumerate(OURS):
            sae = _random_ours(arch, d_in, d_sae, seed=10 + i, b_mean=b_mean)
            save_saelens(work / f"ours_{arch}", sae)
        venv = HERE / ".venv" / "bin" / "python"
        python = str(venv) if venv.exists() else sys.executable
        where = "its own venv, `benchmarks/sae_lens/.venv`" if venv.exists() else "this python"
        subprocess.run([python, __file__, "--side", "torch", "--workdir", str(work)], check=True)
        theirs = np.load(work / "torch.npz")
        rows = []
        worst = 0.0
        for folder in sorted(work.glob("*_*")):
            sae = load_saelens(folder)
            f = np.asarray(sae.encode(jnp.asarray(x)))
            xhat = np.asarray(sae.decode(jnp.asarray(f)))
            f_t, x_t = theirs[f"{folder.name}.f"], theirs[f"{folder.name}.x"]
            margin = _margin(sae, x)
            flipped = (f != 0) != (f_t != 0)
            clear = margin > 1e-5  # cells whose active/inactive decision is not a rounding tie
            df = float(np.abs(f - f_t)[clear].max())
            dx = float(np.abs(xhat - x_t)[~flipped.any(-1)].max())
            flips = int(flipped.sum())
            flip_margin = f"{margin[flipped].max():.1e}" if flips else "-"
            worst = max(worst, df, dx)
            if flips and margin[flipped].max() > 1e-5:
                worst = max(worst, 1.0)  # a real disagreement, not a tie
            writer, arch = folder.name.split("_", 1)
            rows.append([
                f"`{arch}`", "jaxcirc → SAELens" if writer == "ours" else "SAELens → jaxcirc",
                type(sae).__name__, f"{(f != 0).mean() * d_sae:.1f}", f"{df:.2e}", f"{dx:.2e}",
                flips, flip_margin,
            ])  # fmt: skip
    return rows, worst, where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small SAEs, print only")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side == "torch":
        side_torch(Path(args.workdir))
        return

    from _common import machine, machine_markdown, table, write_section

    info = machine()
    d_in, d_sae, n = (64, 256, 256) if args.quick else (576, 4608, 1024)
    rows, worst = [], 0.0
    for regime, b_mean in (("sparse", -2.0), ("dense", -0.1)):
        r, w, where = _compare(d_in, d_sae, n, b_mean)
        rows += [[regime, *row] for row in r]
        worst = max(worst, w) if regime == "sparse" else worst
        dense_worst = w
    header = ["regime", "architecture", "written by → read by", "jaxcirc class", "mean L0",
              "max abs Δf (off ties)", "max abs Δx̂ (rows without a flip)", "active-set flips",
              "largest margin of a flip"]  # fmt: skip
    verdict = "met" if worst <= 1e-5 else "MISSED"
    body = "\n".join([
        "## SAE parity with SAELens 6.54.12 (`load_saelens` / `save_saelens`, issue 14)",
        "",
        f"Random SAEs of SmolLM2-135M's residual width (d_in {d_in}, d_sae {d_sae}, k 32 for "
        f"TopK and BatchTopK, thresholds in [0.05, 0.5], b_dec ~ N(0, 0.3)), {n} random "
        f"inputs; b_enc ~ N(-2, 0.2) gives the L0 of trained SAEs ('sparse'), N(-0.1, 0.2) "
        f"thousands of active features per input ('dense', a stress test); float32 on both "
        f"sides, SAELens in {where}. Target: every difference within 1e-5 (sparse): "
        f"**{verdict}** (largest {worst:.2e}; dense: {dense_worst:.2e}). "
        "Differences are float32 summation order (XLA vs torch matmul). A feature whose "
        "pre-activation lies within float32 rounding of its threshold (or, for TopK, of the "
        "k-th largest) may switch on one side only, and then differs by the whole jump; such "
        "ties are counted as flips with their margin |pre − θ| (all ≤ 1e-5 means ties only), "
        "and left out of the Δ columns.",
        "",
        table(header, rows),
        "",
        machine_markdown(info),
    ])  # fmt: skip
    print(body)
    if not args.quick:
        write_section("sae_lens_parity", body)


if __name__ == "__main__":
    main()
