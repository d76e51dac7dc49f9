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
# # Weight-sparse transformers and their task circuits
#
# Gao et al. (2025) train language models in which almost every weight is exactly zero: after
# every optimizer step, each weight matrix keeps only its largest-magnitude entries (here 1 in
# 16), with a minimum per row and column, and the kept fraction is annealed from dense to the
# target during training. The circuits such models use for simple tasks are far smaller and
# easier to read than a dense model's. jaxcirc has the optimizer (an optax transformation), the
# training loop, two shipped 2-layer models trained on the Python standard library, and the
# paper's circuit pruning: a learned mask over residual, q/k/v and MLP-neuron channels with
# everything outside the circuit mean-ablated.

# %%
import equinox as eqx
import jax
import matplotlib.pyplot as plt
import numpy as np
import treescope
from matplotlib.lines import Line2D

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The L0 schedule
# `l0_schedule(target, total_steps)` is an optax schedule of the nonzero fraction: dense until
# 1 % of training, annealed to the target by 50 % (Gao et al. 2025), then constant. The linear form
# is the default; the exponential one (`target ** progress`) is their bridges configuration.

# %%
total = 10_000
steps = np.arange(0, total + 1, 20)
linear = jc.sparse.l0_schedule(1 / 16, total)
exponential = jc.sparse.l0_schedule(1 / 16, total, kind="exponential")
lin, exp_ = np.asarray(jax.vmap(linear)(steps)), np.asarray(jax.vmap(exponential)(steps))
assert lin[0] == exp_[0] == 1.0 and lin[-1] == exp_[-1] == np.float32(1 / 16)
assert np.all(np.diff(lin) <= 0) and np.all(np.diff(exp_) <= 0)
assert float(linear(total // 2)) == np.float32(1 / 16)  # the target is reached at 50 %

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(steps, lin, label="linear (default)")
ax.plot(steps, exp_, label="exponential")
ax.axhline(1 / 16, color="grey", ls="--", lw=1, label="target 1/16")
ax.set(
    xlabel="training step",
    ylabel="nonzero fraction of each matrix",
    yscale="log",
    title="L0 schedule: dense → 1/16 over 1 %..50 % of training",
)
ax.legend()
plt.show()

# %% [markdown]
# ## The optimizer on a tiny model
# `sparse_adamw` is the paper's optimizer as one optax chain: RMS-normalised gradients, AdamW,
# then `keep_topk(schedule, floor=4)`, which rewrites each update so that the new weights keep
# exactly `nonzero_count(fraction, size)` entries of every matrix (at least 4 per row and
# column; the rest land on exactly 0). `keep_topk` can follow any optax optimizer, e.g.
# `optax.chain(optax.adamw(3e-3), jc.sparse.keep_topk(1 / 16))`.
#
# We take the shipped *dense* 2-layer model of this architecture (`python_model("dense_matched")`,
# a `jc.models.weight_sparse` transformer trained without the projection: RMSNorm, AbsTopK
# activation sparsity, an attention sink, `d_model` 128) and run 8 steps on Python source with
# a schedule that reaches 1/16 after 4 steps. Such an abrupt anneal costs most of what the model
# had learned (watch the loss), which is why a real run anneals over half of training (1,500
# steps or more, from a random initialisation: `jc.sparse.train_lm`).

# %%
bpe = jc.io.python_bpe()
train_rows, held, _ = jc.tasks.python_rows(bpe, 128, 64, 32)  # pretraining rows, held-out rows
dense_matched = jc.zoo.python_model("dense_matched")
params, static = eqx.partition(dense_matched, eqx.is_inexact_array)
n_steps = 8
opt = jc.sparse.sparse_adamw(n_steps, target=1 / 16, warmup=0.0, anneal=(0.0, 0.5))
state = opt.init(params)


@eqx.filter_jit
def step(params, state, tokens):
    loss, grads = jax.value_and_grad(
        lambda p: jc.sparse.next_token_loss(eqx.combine(p, static), tokens)
    )(params)
    updates, state = opt.update(grads, state, params)
    return eqx.apply_updates(params, updates), state, loss


def matrices(params):
    """The arrays keep_topk sparsifies, as NumPy: {path: array}."""
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(params)
            if jc.sparse.default_include(p, x)}  # fmt: skip


for i in range(n_steps):
    params, state, loss = step(params, state, train_rows[8 * i : 8 * i + 8, :64])
    nz = sum(np.count_nonzero(w) for w in matrices(params).values())
    size = sum(w.size for w in matrices(params).values())
    print(f"step {i + 1}: loss {float(loss):.2f}, nonzero fraction {nz / size:.4f}")

# %% [markdown]
# After the last step every matrix (embedding, per-head Q/K/V/O, MLP in/out, unembedding) keeps
# exactly 1/16 of its entries, counted with NumPy. (The floor of 4 per row and column could keep
# more in a very thin matrix; at these sizes it never needs to.)

# %%
for name, w in matrices(params).items():
    assert np.count_nonzero(w) == w.size // 16, (name, np.count_nonzero(w), w.size)
    print(f"{name:<22} {str(w.shape):<16} {np.count_nonzero(w):>6} of {w.size:>7} nonzero")
sparsified = eqx.combine(params, static)
sparsified.blocks[0].attn.W_Q  # a matrix with 15/16 of its entries exactly zero

# %% [markdown]
# ## The shipped models
# `benchmarks/train_sparse_python.py` trained two models of that shape for 1,500 steps on the
# standard library's source: one at 1/16 nonzeros (`python_model("sparse")`) and a dense one. The
# dense checkpoint whose held-out loss matches the sparse model's final loss ships as
# `python_model("dense_matched")` (a weight-sparse model needs more training to reach the same
# loss; comparing circuits at matched loss is the paper's protocol). `python_models_record()`
# holds the training curves and evaluations.

# %%
sparse_model = jc.zoo.python_model("sparse")
record = jc.zoo.python_models_record()

for name, w in matrices(eqx.filter(sparse_model, eqx.is_inexact_array)).items():
    assert np.count_nonzero(w) == w.size // 16, name
dense_w = matrices(eqx.filter(dense_matched, eqx.is_inexact_array))
dense_frac = sum(map(np.count_nonzero, dense_w.values())) / sum(w.size for w in dense_w.values())
print(f"shipped sparse model: every matrix exactly 1/16 nonzero; dense_matched: {dense_frac:.3f}")
assert dense_frac > 0.99
print(
    "held-out loss: sparse",
    round(record["sparse"]["final"]["loss"], 2),
    " dense_matched",
    round(record["matched"]["loss"], 2),
    f"(dense step {record['matched']['step']})",
)
sparse_model

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
for kind, color in (("sparse", "tab:red"), ("dense", "tab:blue")):
    curve, evals = record[kind]["curve"], record[kind]["eval"]
    ax0.plot(
        curve["step"],
        curve["loss"],
        color=color,
        alpha=0.35,
        lw=0.8,
        label=f"{kind}: training batches",
    )
    ax0.plot(
        [e["step"] for e in evals],
        [e["loss"] for e in evals],
        "o-",
        color=color,
        label=f"{kind}: held-out",
    )
    ax1.plot([e["step"] for e in evals], [e["quote"] for e in evals], "o-", color=color, label=kind)
ax0.plot(
    [record["matched"]["step"]], [record["matched"]["loss"]], "k*", ms=12, label="dense_matched"
)
ax0.set(
    xlabel="step",
    ylabel="next-token loss (nats)",
    ylim=(2.5, 6),
    title="Pretraining on the standard library",
)
ax1.set(xlabel="step", ylabel="accuracy", ylim=(0.3, 1.02), title="Quote task during training")
ax0.legend(fontsize=7)
ax1.legend()
plt.show()

# %% [markdown]
# ## The quote circuit
# The task (Gao et al.'s `single_double_quote`): close a string with the quote that opened it,
# `x = "hello world` → `"` against `'`. `node_means` averages every node location (residual
# channels at each attention/MLP input and output, q/k/v channels, MLP neurons) over held-out
# rows. `prune` learns a binary mask per node (Heaviside forward, sigmoid straight-through
# gradient), with every node outside the mask replaced by its mean, then bisects for the
# smallest circuit whose task loss stays under `target_loss`. Here 200 mask steps (the paper and
# the default: 2,000).

# %%
means = jc.sparse.node_means(sparse_model, held)
quote = jc.tasks.quote_task(bpe, 64)
circuit = jc.sparse.prune(
    sparse_model, quote, means, target_loss=0.3, steps=200, batch=32, lr=2e-2, progress=False
)
print(
    f"{circuit.n_nodes} nodes, {circuit.n_edges} edges; task loss {circuit.loss:.3f}, "
    f"accuracy {circuit.accuracy:.2f} on the pruning prompts"
)
circuit

# %% [markdown]
# Evaluated on fresh prompts both ways: with everything *outside* the circuit mean-ablated (is
# the circuit sufficient?) and with the circuit's own nodes mean-ablated (is it necessary?).
# Sufficient: it solves the task; necessary: without it the model is at chance (50 %).

# %%
fresh = jc.tasks.quote_task(bpe, 128, seed=1)
alone = jc.sparse.evaluate(sparse_model, fresh, circuit, means, ablate="complement")
without = jc.sparse.evaluate(sparse_model, fresh, circuit, means, ablate="circuit")
print("circuit alone:   ", alone)
print("circuit ablated: ", without)
total_nodes = sum(int(np.asarray(m).size) for m in circuit.masks.values())
assert circuit.n_nodes < 0.05 * total_nodes
assert alone["accuracy"] > 0.8 and without["accuracy"] < 0.7
assert alone["loss"] < without["loss"]

# %% [markdown]
# The edges are the nonzero weights between kept nodes (red positive, blue negative, width by
# magnitude); q and k nodes meet in the attention scores, which no single weight draws. Gao et
# al.'s point: at matched pretraining loss the dense model's quote circuit needs thousands of
# edges (4,524 in `benchmarks/RESULTS.md`, against 64 for the sparse model with the default
# 2,000 mask steps); here the sparse model's circuit fits on one page. We pass only the
# locations that keep a node, so that empty columns are not drawn.

# %%
used = {loc: m for loc, m in circuit.masks.items() if np.asarray(m).any()}
assert len(jc.sparse.edges(sparse_model, used)) == circuit.n_edges
fig = jc.sparse.plot_circuit(sparse_model, used)
ax = fig.axes[0]
ax.set_title(
    f"Quote circuit of the weight-sparse model: {circuit.n_nodes} nodes, {circuit.n_edges} edges"
)
ax.set_xlabel("node location (layer.location), in computation order")
ax.set_ylabel("kept channels")
ax.legend(
    handles=[
        Line2D([], [], color="tab:red", label="positive weight"),
        Line2D([], [], color="tab:blue", label="negative weight"),
        Line2D([], [], color="black", marker="o", ls="", ms=3, label="kept node"),
    ],
    fontsize=7,
    loc="lower right",
)
plt.show()

# %% [markdown]
# ## Real runs
# `jaxcirc sparse train --fraction 0.0625` pretrains such a model (~40 minutes on 2 cores) and
# `jaxcirc sparse prune --task quote` writes the shipped model's circuit as JSON and a figure,
# with the paper's 2,000 mask steps. `jc.sparse.train_lm` is the training loop used here by hand:
# one compiled step, evaluations, and checkpoints that a killed run resumes from bit for bit.
