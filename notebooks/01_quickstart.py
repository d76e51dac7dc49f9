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
# # jaxcirc in ten minutes
#
# A trained network read as a structural causal model: we run the embedded two-layer
# attention-only **induction model** (no download), look inside it, intervene on it, find the
# circuit behind its behaviour by activation patching and edge attribution, and check that the
# circuit alone does the job. Induction (Olsson et al. 2022): after `… A B … A` the model
# predicts `B`, with a *previous-token head* in layer 0 feeding the keys of *induction heads* in
# layer 1.

# %%
import jax
import jax.numpy as jnp
import treescope
from IPython.display import Image

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The model is a pytree
# An Equinox module: weights are arrays, `model(tokens)` is a pure function. Treescope shows
# its structure (click to expand).

# %%
model = jc.zoo.induction_model()
model

# %% [markdown]
# `model.run` returns the logits and every activation under its TransformerLens name.

# %%
tokens = jnp.array([7, 3, 41, 12, 7, 3, 41])  # a repeat: the model should predict 12 next
logits, acts = model.run(tokens)
print("next token:", int(logits[-1].argmax()))
assert int(logits[-1].argmax()) == 12
acts["blocks.0.attn.hook_pattern"]  # [heads, query, key]

# %% [markdown]
# ## Interventions are values
# `intervene` returns a new model; the old one is untouched. Zeroing every layer-1 head's output
# at the last position breaks the prediction.

# %%
broken = jc.intervene(model, {"blocks.1.attn.hook_z": jc.Zero(position=jnp.array([6]))})
print(
    "clean logit of 12:",
    float(logits[-1, 12]),
    " with layer-1 heads zeroed:",
    float(broken(tokens)[-1, 12]),
)

# %% [markdown]
# ## The task: clean and corrupted prompts
# Clean prompts repeat a random sequence; in the corrupted ones the first half is resampled,
# so copying gives a different token. The metric is the logit difference between the clean
# answer and the corrupted prompt's answer (Wang et al. 2023).

# %%
task = jc.zoo.induction_task(16, 6, seed=0)
print(
    task.clean.shape,
    "clean metric",
    float(task.metric(jax.vmap(model)(task.clean))),
    "corrupt metric",
    float(task.metric(jax.vmap(model)(task.corrupt))),
)

# %% [markdown]
# ## Activation patching: which heads carry the behaviour?
# Each head's output is patched from the clean run into the corrupted run, one compiled program
# for every (layer, head). Normalised so 1 is the clean run and 0 the corrupted one.

# %%
metric = jc.metrics.normalize(task.metric, *task.evaluate(model))
heads = jc.patching.sweep(model, task.clean, task.corrupt, metric, site="z", per="head")
Image(jc.viz.patching_heatmap(heads, "head", path="heads.png", metric_label="recovered"))

# %% [markdown]
# ## A circuit on the edge graph
# Edge attribution patching (EAP; Syed et al. 2023) scores every edge of the graph (embedding,
# heads with separate q/k/v inputs, logits) from one forward and one backward pass; EAP with
# integrated gradients (EAP-IG; Hanna et al. 2024) averages the gradient along the path from
# the corrupted to the clean run. Every discovery method returns the same `Circuit`.

# %%
eap = jc.discover(jc.methods.EAP(n_edges=20), model, task)
circuit = jc.discover(jc.methods.EAPIG(steps=5, n_edges=20), model, task)
print(len(circuit), "edges found by EAP-IG:")
for src, dst in circuit.edges():
    print(f"   {src:>6} -> {dst}")
# the previous-token head in layer 0 writes into the keys of the layer-1 induction heads
assert any(
    src.startswith("L0H") and dst.startswith("L1H") and dst.endswith(".k")
    for src, dst in circuit.edges()
)

# %% [markdown]
# ## Is the circuit enough?
# Faithfulness: run the model with every edge outside the circuit cut to its corrupted value;
# 1 means the circuit alone recovers the clean behaviour. EAP's first-order estimate ranks the
# key edges well but misses the induction heads' *value* inputs (the token to copy), so its
# small circuits fail; EAP-IG finds them.

# %%
sizes = [4, 8, 12, 16, 20, 24, 32, 40]
curves = {
    name: jc.metrics.faithfulness_curve(
        model, task.clean, task.corrupt, task.metric, found.scores, sizes
    )
    for name, found in (("EAP", eap), ("EAP-IG", circuit))
}
for name, curve in curves.items():
    print(f"{name:>6}:", dict(zip(sizes, [round(float(v), 2) for v in curve])))
assert curves["EAP-IG"][sizes.index(24)] > 0.8

Image(
    jc.viz.plot_curves(
        {name: (sizes, curve) for name, curve in curves.items()},
        "faithfulness.png",
        title="Induction circuit: faithfulness vs size",
        x_label="edges kept (top by score)",
        y_label="faithfulness (1 = the full model)",
    )
)

# %%
Image(jc.viz.plot_circuit(circuit, None, "circuit.png", title="EAP-IG: top 20 edges"))

# %% [markdown]
# ## Next
# `jaxcirc discover --out report` runs this story (and EAP-IG, ACDC, CircuitLasso and a pruned
# abstraction) as one command with an HTML report. The other notebooks: IOI on SmolLM2, the
# tracr scorecard, CircuitLasso, interventional-risk pruning, SAEs and SHIFT, weight-sparse
# training.
