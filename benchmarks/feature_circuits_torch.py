"""Marks et al.'s node and edge attribution written with PyTorch hooks (the reference for
`bench_feature_circuits.py`).

The Hugging Face `transformers` SmolLM2 (weights from the same GGUF), our SAE weights copied in,
each SAE site (a decoder layer's output, `blocks.{l}.hook_resid_post`) replaced through a
forward hook by `decode(f) + ε` with `f` and `ε` leaf tensors:

- node effects by IG (Marks et al. 2025, §3.1; their `_pe_ig`): per site, `steps` forward and
  backward passes of the whole batch with that site's `f`, `ε` at `(1 − α) clean + α patch`;
  effect = mean gradient × (patch − clean), the error's summed over the width;
- edge effects between adjacent sites (their `jvp`): one forward with the upstream site's
  `f`, `ε` as leaves and the downstream site's `f`, `ε` computed from the run, then one
  backward per kept downstream node of `Σ_batch ∇_d m · d`, dotted with the upstream change.

Plain PyTorch, no nnsight: a hook per site, `torch.autograd.grad` per downstream node.
"""

from __future__ import annotations

import os
import time

import numpy as np


def load_model(gguf_path):
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TorchSAE:
    def __init__(self, weights: dict, k: int | None, center: bool):
        import torch

        self.W_enc, self.b_enc, self.W_dec, self.b_dec = (
            torch.tensor(np.asarray(weights[n], np.float32))
            for n in ("W_enc", "b_enc", "W_dec", "b_dec")
        )
        self.k, self.center = k, center

    def encode(self, x):
        import torch

        pre = (x - self.b_dec if self.center else x) @ self.W_enc + self.b_enc
        if self.k is None:
            return torch.relu(pre)
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def _layer_output(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, x):
    return (x, *output[1:]) if isinstance(output, tuple) else x


class Hooks:
    """Per-site behaviour of the forward hooks: record `(f, ε)`, or substitute given ones."""

    def __init__(self, model, layers, saes):
        self.model, self.layers, self.saes = model, layers, saes
        self.substitute: dict[int, tuple] = {}  # site -> (f, e) leaves
        self.record: dict[int, tuple] = {}
        self.handles = [model.model.layers[layer].register_forward_hook(self._hook(i))
                        for i, layer in enumerate(layers)]  # fmt: skip

    def _hook(self, i):
        def hook(module, args, output):
            sae = self.saes[i]
            if i in self.substitute:
                f, e = self.substitute[i]
                return _replace(output, sae.decode(f) + e)
            x = _layer_output(output)
            f = sae.encode(x)
            e = x - sae.decode(f)
            self.record[i] = (f, e)
            return None

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def metric(model, tokens, answer, distractor):
    """Per-example `logit(distractor) − logit(answer)` at the last position (patch − clean)."""
    logits = model(tokens).logits[:, -1]
    rows = np.arange(tokens.shape[0])
    return logits[rows, distractor] - logits[rows, answer]


def codes(model, hooks, tokens):
    import torch

    hooks.substitute, hooks.record = {}, {}
    with torch.no_grad():
        model(tokens)
    return {i: (f.clone(), e.clone()) for i, (f, e) in hooks.record.items()}


def node_effects_ig(model, hooks, tokens, patch, answer, distractor, steps):
    """Per site: `(features [batch, seq, d_sae], errors [batch, seq], mean grads)`."""
    import torch

    clean, other = codes(model, hooks, tokens), codes(model, hooks, patch)
    out = {}
    for i in range(len(hooks.layers)):
        (fc, ec), (fp, ep) = clean[i], other[i]
        gf, ge = torch.zeros_like(fc), torch.zeros_like(ec)
        for k in range(steps):
            a = k / steps
            f = ((1 - a) * fc + a * fp).requires_grad_(True)
            e = ((1 - a) * ec + a * ep).requires_grad_(True)
            hooks.substitute, hooks.record = {i: (f, e)}, {}
            m = metric(model, tokens, answer, distractor).sum()
            g = torch.autograd.grad(m, (f, e))
            gf += g[0]
            ge += g[1]
        gf, ge = gf / steps, ge / steps
        out[i] = ((gf * (fp - fc)), (ge * (ep - ec)).sum(-1), (gf, ge), (fp - fc, ep - ec))
    hooks.substitute = {}
    return out


def edge_effects(model, hooks, tokens, answer, distractor, nodes, down_grads, up_deltas, i):
    """`[D, U]` mean edge effects from kept nodes `up` of site `i` to kept nodes `down` of site
    `i + 1` (each a list of `(position or None, feature or None)`); one backward per `d`."""
    import torch

    clean = codes(model, hooks, tokens)
    fc, ec = clean[i]
    f = fc.clone().requires_grad_(True)
    e = ec.clone().requires_grad_(True)
    hooks.substitute, hooks.record = {i: (f, e)}, {}
    with torch.enable_grad():
        model(tokens)
    fd, ed = hooks.record[i + 1]
    gf, ge = down_grads
    dfu, deu = up_deltas
    up, down = nodes
    batch = tokens.shape[0]
    out = np.zeros((len(down), len(up)), np.float64)
    for r, (pos, feat) in enumerate(down):
        at = slice(None) if pos is None else pos
        if feat is None:
            scalar = (ge[:, at] * ed[:, at]).sum()
        else:
            scalar = (gf[:, at, feat] * fd[:, at, feat]).sum()
        g_f, g_e = torch.autograd.grad(scalar, (f, e), retain_graph=True)
        ef = (g_f * dfu).detach()
        ee = (g_e * deu).sum(-1).detach()
        for c, (upos, ufeat) in enumerate(up):
            uat = slice(None) if upos is None else upos
            v = ee[:, uat] if ufeat is None else ef[:, uat, ufeat]
            out[r, c] = float(v.sum()) / batch
    hooks.substitute = {}
    return out


def run(gguf_path, layers, sae_weights, k, center, tokens, patch, answer, distractor, steps,
        kept, threads=2):  # fmt: skip
    """Node IG effects and edge effects on the kept nodes, with timings.

    `kept[i]`: the kept nodes of site `i` as `(position or None, feature or None)`. Returns
    `{"features": [...], "errors": [...], "edges": {i: [D, U]}, "node_s", "edge_s", "load_s"}`.
    """
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_model(gguf_path)
    saes = [TorchSAE(w, k, center) for w in sae_weights]
    hooks = Hooks(model, layers, saes)
    load_s = time.perf_counter() - t0
    tokens, patch = torch.tensor(np.asarray(tokens)), torch.tensor(np.asarray(patch))
    answer, distractor = np.asarray(answer), np.asarray(distractor)
    t0 = time.perf_counter()
    nodes = node_effects_ig(model, hooks, tokens, patch, answer, distractor, steps)
    node_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    edges = {}
    for i in range(len(layers) - 1):
        if kept[i] and kept[i + 1]:
            pair = (kept[i], kept[i + 1])
            edges[i] = edge_effects(model, hooks, tokens, answer, distractor, pair,
                                    nodes[i + 1][2], nodes[i][3], i)  # fmt: skip
    edge_s = time.perf_counter() - t0
    hooks.close()
    return {
        "features": [nodes[i][0].numpy() for i in range(len(layers))],
        "errors": [nodes[i][1].numpy() for i in range(len(layers))],
        "edges": edges,
        "node_s": node_s,
        "edge_s": edge_s,
        "load_s": load_s,
    }
