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
# # Interventional-risk pruning: a smaller model that is a causal abstraction
#
# Asiaee (2026) prunes a network by asking what an *intervention* on each unit costs. Replacing
# unit $j$'s activation $a_j$ by a constant $c_j$ (a hard intervention $do(a_j = c_j)$), or by an
# affine function of kept units of the same layer (a *fold*, a soft intervention), changes the
# loss by, to second order,
#
# $$\Delta R_j \approx \mathbb{E}\big[g_j\,(c_j - a_j) + \tfrac12\,h_j\,(c_j - a_j)^2\big],$$
#
# with $g$ and $h$ the per-example gradient and diagonal curvature of the loss with respect to the
# unit. The units with the smallest predicted risk go; the replacements are then compiled into a
# genuinely smaller model, and interchange interventions check that the small model is a causal
# abstraction of the big one (Geiger et al. 2021).
#
# Here: the shipped digits MLP (64-128-128-10 on scikit-learn's 8×8 digits), four ways of
# choosing and replacing units, the compiled abstraction, its interchange-intervention accuracy
# (IIA), the curvature pieces the method is built from, and the heads of the induction model.

# %%
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import treescope

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The model and its data
# An `MLPClassifier` is a pytree like the transformers: its two hidden layers are sites
# `hidden.0` and `hidden.1`, and `jax.vmap(mlp)(x)` gives logits for a batch. The data is a
# fixed 1297 / 500 split.

# %%
mlp, data = jc.zoo.digits_mlp(), jc.zoo.digits_data()


@eqx.filter_jit
def predict(model, x):
    return jax.vmap(model)(x).argmax(-1)


def accuracy(model, x=data.x_test, y=data.y_test):
    return float((predict(model, x) == y).mean())


print("test accuracy of the full model:", accuracy(mlp))
mlp

# %% [markdown]
# ## One pruning: keep a quarter of the last hidden layer
# `prune_model` reads the site's activations on calibration inputs (the training set), measures
# $g$ and $h$, keeps the 32 units of 128 with the largest predicted risk and replaces the other 96.
# Without `labels` the loss is the KL divergence from the full model's own predictions, so
# $g = 0$ and only the curvature term remains (the paper's choice of loss is open; on this model
# the KL keeps more accuracy than the task cross-entropy). With `method="fold"` each pruned unit
# becomes an affine function of a few kept units, fitted by curvature-weighted ridge regression.

# %%
res = jc.methods.prune_model(
    mlp, data.x_train, sites=["hidden.1"], keep_fraction=0.25, method="fold"
)
print(res.summary())
print("test accuracy of the abstraction:", accuracy(res.abstraction))
res.abstraction

# %% [markdown]
# The abstraction is an `MLPClassifier` whose second hidden layer has 32 units: the kept rows of
# `weights[1]`, with the folds absorbed into the kept columns of `weights[2]` and the constants
# into `biases[2]`. `res.masked` is the full-size model with the replacement applied as an
# intervention at the site; the two must compute the same logits. We check that, and check both
# against a NumPy forward pass of the full model with `Replacement.apply` written out by hand
# (pruned unit $j$ = `offset[j] + mix[j] @ kept activations`).

# %%
rep = res.replacements[0]
W, b = [np.asarray(w) for w in mlp.weights], [np.asarray(v) for v in mlp.biases]
keep, offset, mix = np.asarray(rep.keep), np.asarray(rep.offset)[:, 0], np.asarray(rep.mix)
x = np.asarray(data.x_test)
h0 = np.maximum(x @ W[0].T + b[0], 0)
h1 = np.maximum(h0 @ W[1].T + b[1], 0)
h1_replaced = np.where(keep, h1, offset + (h1 * keep) @ mix.T)
by_hand = h1_replaced @ W[2].T + b[2]

small, masked = jax.vmap(res.abstraction)(data.x_test), jax.vmap(res.masked)(data.x_test)
print(
    "max |abstraction - masked|:",
    float(jnp.abs(small - masked).max()),
    " max |abstraction - by hand|:",
    float(np.abs(np.asarray(small) - by_hand).max()),
)
assert np.allclose(small, masked, atol=1e-4)
assert np.allclose(small, by_hand, atol=1e-4)

# the parameter count of a 64-128-32-10 MLP, counted independently
n_small = 64 * 128 + 128 + 128 * 32 + 32 + 32 * 10 + 10
assert (
    res.n_params_after
    == n_small
    == sum(w.size for w in res.abstraction.weights) + sum(v.size for v in res.abstraction.biases)
)
print(
    f"parameters: {res.n_params_before} -> {res.n_params_after}",
    f"({res.n_params_after / res.n_params_before:.0%}); weight shapes",
    [tuple(w.shape) for w in res.abstraction.weights],
)

# %% [markdown]
# ## Four ways to choose and replace units
# - `constant`: the units with the smallest predicted risk of a damped closed-form constant
#   $c_j^*$ (the minimiser of the quadratic model, shrunk towards the mean) are set to it;
# - `fold`: the same ranking, but each pruned unit is folded onto kept units;
# - `variance`: the classical baseline, the lowest-variance units replaced by their means;
# - `random`: random units replaced by their means.
#
# Every run compiles a smaller model; we measure test accuracy at several keep fractions (on
# `.masked`, whose logits equal the abstraction's, as checked above: one compiled program for
# every fraction instead of one per width).

# %%
methods = ["constant", "fold", "variance", "random"]
fractions = [0.05, 0.1, 0.25, 0.5, 0.75]
runs = {(m, f): jc.methods.prune_model(mlp, data.x_train, sites=["hidden.1"], keep_fraction=f,
                                       method=m, key=jax.random.key(0))
        for m in methods for f in fractions}  # fmt: skip
acc = {m: [accuracy(runs[m, f].masked) for f in fractions] for m in methods}
for m in methods:
    print(f"{m:>9}:", "  ".join(f"{f:.0%} {a:.3f}" for f, a in zip(fractions, acc[m])))

full = accuracy(mlp)
fig, ax = plt.subplots(figsize=(6, 3.6))
for m in methods:
    ax.plot(fractions, acc[m], marker="o", label=m)
ax.axhline(full, color="grey", ls="--", lw=1, label="full model")
ax.set_xscale("log")
ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
ax.minorticks_off()
ax.set(
    xlabel="units of hidden.1 kept (of 128)",
    ylabel="test accuracy",
    title="Digits MLP: accuracy of the pruned model",
)
ax.legend()
plt.show()

# %% [markdown]
# Folding is what makes aggressive pruning work: at a quarter of the units the folded model
# keeps nearly all of the full model's accuracy while random or variance pruning lose a large
# part of it. (The damped constants rank units by the same risk but replace them by constants
# only; on this layer that is not better than the variance ranking.)

# %%
at = fractions.index(0.25)
assert acc["fold"][at] > acc["random"][at] + 0.1
assert acc["fold"][at] > acc["variance"][at]
assert acc["fold"][at] > full - 0.05

# %% [markdown]
# ## Is the small model a causal abstraction? Interchange interventions
# Accuracy alone does not say the abstraction computes *the same way*. `abstraction_iia` runs
# interchange interventions (Geiger et al. 2021): a trial takes a base digit and a source digit
# and swaps each kept unit to its value on the source with probability $p$. The full model runs
# with the swapped kept units (pruned units keep their base values); the abstraction runs with
# the swapped kept units and recomputes the pruned ones by their mechanism. IIA is the fraction
# of trials in which both predict the same class. At $p = 0$ it is the plain agreement between
# the two models, which we check against the result's own `accuracy` field (computed on every
# test input rather than on sampled trials).

# %%
ps = (0.0, 0.1, 0.2, 0.5)
iia = {}
for m in ("fold", "variance", "random"):
    iia[m] = jc.methods.abstraction_iia(
        mlp,
        runs[m, 0.25].replacements[0],
        data.x_test,
        p=ps,
        n_trials=2000,
        key=jax.random.key(1),
        labels=data.y_test,
    )
    print(m, "-", iia[m].table(), "\n")
    assert abs(float(iia[m].iia[0]) - iia[m].accuracy) < 0.03

fig, ax = plt.subplots(figsize=(6, 3.6))
for m, r in iia.items():
    ax.plot(ps, r.iia, marker="o", label=f"{m} (25 % kept)")
ax.set(
    xlabel="swap probability p of each kept unit",
    ylabel="IIA (agreement with the full model)",
    ylim=(0, 1.02),
    title="Interchange-intervention accuracy of the abstractions",
)
ax.legend()
plt.show()
assert iia["fold"].iia[1] > iia["random"].iia[1]
iia["fold"]

# %% [markdown]
# The folded abstraction tracks the full model under small interventions (most swaps of a few
# kept units change both models' predictions in the same way); with half of the kept units
# swapped, the fitted folds are evaluated far from the activations they were fitted on and the
# agreement drops. The `variance` and `random` abstractions already disagree without any swap.
# The author's protocol uses 10,000 trials per $p$ (the default `n_trials`); 2,000 keep this
# notebook fast.

# %% [markdown]
# ## The pieces: downstream function, activations, curvature
# `prune_model` is a composition of small functions, usable on their own:
#
# - `downstream(model, site)` is $f(a, x)$, the logits computed from the site's units;
# - `unit_activations(model, x, site)` reads the units, `[n, n_units, d_unit]`;
# - `jaxcirc.solvers.unit_curvature(fn, acts, labels=...)` gives per-example $g$ and the
#   diagonal curvature $h$: `"exact"` Hessian diagonal, `"ggn"` Gauss–Newton, `"fisher"` or
#   `"hutchinson"` (stochastic, `probes` random vectors);
# - `jaxcirc.methods.prune(a, g, h, keep_fraction, site=..., method=...)` picks and fits the
#   replacement.
#
# For the last hidden layer the readout is linear, $z = W_2 a + b_2$, so both the gradient and the
# Gauss–Newton diagonal of the cross-entropy have closed forms,
# $g_j = \sum_c (p_c - y_c) W_{2,cj}$ and $h_j = \sum_c p_c W_{2,cj}^2 - (\sum_c p_c W_{2,cj})^2$,
# which we compute with NumPy and compare.

# %%
fn = jc.methods.downstream(mlp, "hidden.1")
acts = jc.methods.unit_activations(mlp, data.x_test, "hidden.1")  # [500, 128, 1]
assert np.allclose(fn(acts[0], data.x_test[0]), mlp(data.x_test[0]), atol=1e-5)

ggn = jc.solvers.unit_curvature(fn, acts, labels=data.y_test, method="ggn")
hutch = jc.solvers.unit_curvature(
    fn, acts, labels=data.y_test, method="hutchinson", probes=8, key=jax.random.key(0)
)

logits = np.asarray(acts[..., 0]) @ W[2].T + b[2]
p = np.exp(logits - logits.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
onehot = np.eye(10)[np.asarray(data.y_test)]
g_np = (p - onehot) @ W[2]
h_np = p @ W[2] ** 2 - (p @ W[2]) ** 2
assert np.allclose(ggn.grad[..., 0], g_np, atol=1e-4)
assert np.allclose(ggn.curv[..., 0], h_np, atol=1e-4)
per_unit = np.asarray(ggn.curv).mean((0, 2)), np.asarray(hutch.curv).mean((0, 2))
corr = float(np.corrcoef(*per_unit)[0, 1])
print(f"GGN matches the closed form; Hutchinson (8 probes) vs GGN, per-unit mean: r = {corr:.2f}")
assert corr > 0.3

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.scatter(per_unit[0], per_unit[1], s=10, label="one unit of hidden.1")
lim = [0, float(max(per_unit[0].max(), per_unit[1].max()))]
ax.plot(lim, lim, color="grey", lw=1, label="y = x")
ax.set(
    xlabel="exact Gauss–Newton diagonal (mean over digits)",
    ylabel="Hutchinson estimate, 8 probes",
    title="Curvature per unit",
)
ax.legend()
plt.show()

# %% [markdown]
# Feeding these pieces to `prune` reproduces `prune_model` with the same calibration data, loss
# and curvature (here the test set with its labels, the cross-entropy and the GGN).

# %%
piece = jc.methods.prune(acts, ggn.grad, ggn.curv, 0.25, site="hidden.1", method="constant")
whole = jc.methods.prune_model(
    mlp,
    data.x_test,
    labels=data.y_test,
    sites=["hidden.1"],
    keep_fraction=0.25,
    method="constant",
    curvature="ggn",
)
assert np.array_equal(piece.keep, whole.replacements[0].keep)
print(piece.summary())

# %% [markdown]
# ## Heads of a transformer
# The same code prunes attention heads (units of `blocks.{l}.attn.hook_z`, with `d_unit = d_head`)
# or MLP neurons of a `Transformer`. On the embedded induction model (Olsson et al. 2022) we keep
# two of the four layer-0 heads, folding the other two onto them; the curvature of a transformer
# defaults to the Monte-Carlo Fisher (the exact GGN needs one backward pass per position and
# vocabulary entry). `jaxcirc.models.narrow` compiles the replacements into a model whose layer 0
# has two heads.

# %%
ind = jc.zoo.induction_model()
task = jc.zoo.induction_task(8, 6, seed=0)
heads = jc.methods.prune_model(
    ind, task.clean, sites=["blocks.0.attn.hook_z"], keep_fraction=0.5, method="fold"
)
narrow = jc.models.narrow(ind, heads.replacements)
print(heads.summary())
print("heads per layer:", narrow.cfg.layer_n_heads)
same = jax.vmap(narrow)(task.clean), jax.vmap(heads.masked)(task.clean)
assert narrow.cfg.layer_n_heads == (2, 4)
assert np.allclose(*same, atol=1e-4)
print(
    "induction metric (mean log-prob of the repeated token): full",
    f"{float(task.metric(jax.vmap(ind)(task.clean))):.2f}, two layer-0 heads",
    f"{float(task.metric(same[0])):.2f}",
)
narrow

# %% [markdown]
# ## Real runs
# `jaxcirc prune` runs this on the digits MLP, the MLP induction model or a checkpoint and
# writes the abstraction, an IIA / accuracy / KL JSON and an IIA-vs-sparsity plot. The
# settings here are small for speed: a real run uses the default 10,000 IIA trials per $p$,
# all sites at once (`sites=["hidden.0", "hidden.1"]`) and, on a transformer, larger
# calibration sets and `schedule="iterative"` (re-measuring the curvature between blocks of
# removals).
