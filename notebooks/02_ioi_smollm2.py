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
# # Indirect object identification in SmolLM2-135M
#
# *"When Mary and John went to the store, John gave a drink to"* → **Mary**. Wang et al. (2023),
# "Interpretability in the Wild", found the circuit GPT-2 small uses for this task: *name mover*
# heads in late layers copy the indirect object (IO) into the answer, *S-inhibition* heads tell
# them not to copy the repeated subject (S), and earlier *duplicate-token* and *induction* heads
# find the repetition. Here we ask the same questions of a real, modern model: SmolLM2-135M
# (30 layers, 9 query heads sharing 3 key/value groups per layer), read from its GGUF file.
#
# The notebook uses small settings (4 prompts, narrow path patching, plain EAP) so that it runs
# in about two minutes on two CPU cores; the markdown says what a real run would use.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import treescope
from IPython.display import Image

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The model and the task
# `jc.load` reads the GGUF (dequantized to float32) into a pure Equinox `Transformer`;
# `jc.io.load_tokenizer` reads the tokenizer stored in the same file. Its 30 identical layers
# run as one `lax.scan` (`lm.scan`; `jc.models.scan_layers`), so every program below compiles
# one block body instead of thirty: the same numbers, several times less compiling.

# %%
GGUF = jc.io.smollm2_gguf_path()
lm = jc.load(GGUF)
tok = jc.io.load_tokenizer(GGUF)
lm.cfg

# %% [markdown]
# `jc.tasks.ioi` builds prompt pairs from the paper's templates. `templates="BABA"` names the
# subject first (*"When **S** and **IO** …, **S** gave … to"*); `corruption="ABC"` is the
# paper's *p_ABC* distribution: the three name slots get three unrelated names, so nothing in
# the corrupted prompt marks which name is the indirect object. The metric is the logit
# difference `logit(IO) − logit(S)` at the last token, averaged over prompts. A real run uses
# a few hundred prompts; 4 prompts of one length keep this notebook fast.

# %%
N = 4
task = jc.tasks.ioi(tok, N, seed=0, templates="BABA", corruption="ABC", seq_len=14)
for clean, corrupt in zip(task.prompts[:2], task.corrupt_prompts[:2]):
    print(f"clean:   {clean}\ncorrupt: {corrupt}\n")
print(
    "answer (IO):",
    repr(tok.decode([int(task.answer[0])])),
    " distractor (S):",
    repr(tok.decode([int(task.distractor[0])])),
)
task

# %% [markdown]
# The model solves the task: on the clean prompts the IO name gets a much higher logit than
# the subject's; on the corrupted prompts the two names of the clean prompt are not in the
# prompt at all, and the difference collapses. Normalising the metric (`jc.metrics.normalize`)
# makes it read 1 on the clean run and 0 on the corrupted one, the scale of every figure below.

# %%
clean_ld, corrupt_ld = (float(v) for v in task.evaluate(lm))
print(f"logit difference IO - S: clean {clean_ld:.2f}, corrupt {corrupt_ld:.2f}")
top = jax.vmap(lm)(task.clean)[jnp.arange(N), task.lengths - 1].argmax(-1)
print("top next token per clean prompt:", [tok.decode([int(t)]) for t in top])
assert clean_ld > 2.0 and clean_ld > corrupt_ld + 2.0
assert int((top == task.answer).sum()) >= N // 2  # the IO name is the top prediction
metric = jc.metrics.normalize(task.metric, clean_ld, corrupt_ld)

# %% [markdown]
# ## Activation patching, one head at a time
# For each of the 270 heads, the head's output (`hook_z`, at every position) is patched from
# the clean run into the corrupted run, and the normalised metric is read (Vig et al. 2020;
# Heimersheim & Nanda 2024). `jc.patching.sweep` runs all heads as one compiled program,
# resuming every run from the cached corrupted run at the patched layer.

# %%
heads = jc.patching.sweep(lm, task.clean, task.corrupt, metric, site="z", per="head")
Image(
    jc.viz.patching_heatmap(
        heads,
        "head",
        path="ioi_heads.png",
        metric_label="recovered",
        title="IOI: patching each head's output (clean → corrupt)",
    )
)

# %% [markdown]
# A handful of heads in layer 23 restore much of the behaviour on their own, and a few others
# in the last layers push the other way (negative values: heads that write *against* the IO
# answer, like the paper's negative name movers). The rest of the 270 heads do almost nothing.

# %%
h = np.asarray(heads)
order = np.argsort(h.ravel())[::-1]
ranked = [(int(i) // h.shape[1], int(i) % h.shape[1], float(h.ravel()[i])) for i in order]
print("top heads (layer, head, recovered):", [(lay, hd, round(v, 2)) for lay, hd, v in ranked[:6]])
print("most negative:", [(lay, hd, round(v, 2)) for lay, hd, v in ranked[-3:]])
# the heads that matter most sit in the last third of the network, as in the paper
assert all(layer >= 20 for layer, _, _ in ranked[:4])
assert ranked[0][2] > 0.2 and np.median(np.abs(h)) < 0.05

# %% [markdown]
# ## Path patching: which heads write the answer directly?
# Activation patching of a head counts every route from it to the output. Path patching (Wang
# et al. 2023; Goldowsky-Dill et al. 2023) isolates one route: a *sender*'s output is set to its
# value on the corrupted prompt, but only as read by one *receiver*; every other component keeps
# its clean output. With the unembedding (`"logits"`) as the receiver this measures each
# head's **direct** effect on the answer — how the paper found its name movers. A second
# receiver asks what reaches the *query* of the strongest name mover from the previous
# heads (the paper's S-inhibition heads act there): with grouped-query attention queries stay
# per head (`L23H3.q`), while a head-level key/value name such as `L23H3.k` selects the
# key/value group the head shares (`L23KV1.k`). Each pair is one run of the edge graph resumed
# at the receiver's layer, so narrow receivers and senders keep this fast: here the heads of
# layers 19, 23, 24 and 29. A real run uses every head and MLP as senders
# (`senders=None`), and the queries, keys and values of every name mover as receivers.

# %%
name_mover = f"L{ranked[0][0]}H{ranked[0][1]}"
pp = jc.methods.path_patch(
    lm,
    task.clean,
    task.corrupt,
    task.metric,
    senders=["L19H*", "L23H*", "L24H*", "L29H*"],
    receivers=["logits", f"{name_mover}.q"],
)
effects = np.asarray(pp.effects)
for j, receiver in enumerate(pp.receivers):
    print(f"into {receiver} (logit difference change when the path is corrupted):")
    for i in np.argsort(-np.nan_to_num(np.abs(effects[:, j]), nan=-1))[:4]:
        print(f"   {pp.senders[i]:>6} {effects[i, j]:+.2f}")
Image(
    jc.viz.plot_path_patching(
        pp,
        "ioi_path_patching.png",
        scale="normalized",
        metric_label="logit difference",
        title="IOI path patching (noising)",
    )
)

# %% [markdown]
# The heads whose direct path to the logits matters most are the layer-23 heads that
# activation patching found: they *are* the name movers, and corrupting their direct effect
# lowers the logit difference (a positive share of the clean→corrupt effect). A head with the
# opposite sign (layer 24) writes against the answer, and one layer-19 head stands out among
# the inputs to the name mover's query.

# %%
effect = np.asarray(pp.normalized())
direct = {s: float(effect[i, pp.receivers.index("logits")]) for i, s in enumerate(pp.senders)}
strongest = max(direct, key=lambda s: abs(direct[s]))
print("strongest direct effect:", strongest, round(direct[strongest], 2))
assert strongest.startswith("L2") and direct[name_mover] > 0.1
pp

# %% [markdown]
# ## A circuit on the edge graph: EAP
# Edge attribution patching (EAP; Syed et al. 2023) scores all 70,651 edges of SmolLM2's graph
# (embedding, every head's q input, every key/value group's k and v inputs, MLPs, logits) with
# one forward and one backward pass: the score of edge `u → v` is
# `(a_u − z_u) · ∂metric/∂(input of v)`. `jc.discover` returns a `Circuit` (the top edges by
# |score|, with all the scores). EAP-IG (Hanna et al. 2024; `jc.methods.EAPIG(steps=5)`)
# averages the gradient over interpolation steps and is what a real run would use, with a few
# hundred prompts and circuits of a few hundred edges.

# %%
circuit = jc.discover(jc.methods.EAP(n_edges=300), lm, task)
print(len(circuit), "edges; the strongest:")
for src, dst in circuit.scores.top(8).edges():
    print(f"   {src:>6} -> {dst}")
# independent of the patching sweep, EAP's strongest edges into the logits leave the heads
# that activation patching found
into_logits = [src for src, dst in circuit.scores.top(40).edges() if dst == "logits"]
print("heads writing to the logits among the top 40 edges:", into_logits)
assert name_mover in into_logits
circuit

# %% [markdown]
# ## Is the circuit faithful?
# Faithfulness (Wang et al. 2023; Hanna et al. 2024): keep the top-`n` edges, give every other
# edge its corrupted value, and measure the metric, so that 1 is the full model and 0 the model
# with every edge corrupted. One compiled `vmap` evaluates every size.
#
# With 4 prompts and plain EAP the small circuits are **not** faithful, and the curve is not
# even monotone: the top edges by |score| mix edges that help with edges that hurt, and a
# first-order estimate is poor over 30 layers where the ABC corruption changes every name.
# Only a few thousand edges (still under 10 % of the graph) recover most of the behaviour.
# This is the gap that EAP-IG (Hanna et al. 2024) closes: on 8 prompt pairs with the S2
# corruption, EAP-IG's top 400 edges reach a faithfulness of 0.86 (the README's benchmark
# table).

# %%
sizes = [100, 400, 1600, 6400]
curve = np.asarray(
    jc.metrics.faithfulness_curve(lm, task.clean, task.corrupt, task.metric, circuit.scores, sizes)
)
print(dict(zip(sizes, curve.round(2))))
assert curve[-1] > 0.4

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot(sizes, curve, marker="o", label="EAP top-n edges")
ax.axhline(1, color="grey", lw=0.5, label="full model")
ax.axhline(0, color="grey", lw=0.5, ls="--", label="every edge corrupted")
ax.set(
    xscale="log",
    xlabel="edges kept (top by |EAP score|, of 70,651)",
    ylabel="faithfulness",
    title="IOI on SmolLM2-135M: faithfulness vs circuit size",
)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Next
# The same calls scale up: more prompts (`jc.tasks.ioi(tok, 256, templates="mixed")`),
# EAP-IG with 5–50 steps, ACDC (`jc.methods.ACDC`) or CircuitLasso (`jc.methods.CircuitLasso`)
# on the same graph, and completeness (`jc.metrics.completeness`) beside faithfulness.
# `jaxcirc discover --model PATH --task ioi` writes the whole story as an HTML report.
