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
# # CircuitLasso: circuits from observational activations
#
# CircuitLasso (Yin et al. 2026) reads a network as a linear structural causal model over its
# components: every component's input is regressed, by the Lasso, on the outputs of the
# components before it (block upper-triangular by layer order), so the nonzero coefficients are
# the edges of a dependency skeleton. It needs forward passes only, no gradients and no
# patching. With a behaviour, the task circuit is the part of the skeleton that the behaviour's
# readout depends on.
#
# This notebook: the solver against scikit-learn, the λ path, CircuitLasso on a tracr-compiled
# program whose true circuit is known, and the task circuit of the induction model against
# EAP-IG.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import treescope
from IPython.display import Image

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The solver: FISTA with scikit-learn's objective
# `jc.solvers.lasso` minimises `(1/2n)‖Y − XW − b‖² + α‖W‖₁` (scikit-learn's `Lasso`) with
# FISTA (Beck & Teboulle 2009) as one `lax.while_loop`, stopping on the duality gap. Here on
# correlated float32 columns with an intercept, checked against scikit-learn.

# %%
key = jax.random.key(0)
k1, k2, k3 = jax.random.split(key, 3)
n, d = 400, 60
base = jax.random.normal(k1, (n, 8))
X = base @ jax.random.normal(k2, (8, d)) + 0.3 * jax.random.normal(k3, (n, d))  # correlated
w_true = jnp.zeros(d).at[jnp.array([3, 17, 40])].set(jnp.array([1.5, -2.0, 1.0]))
y = X @ w_true + 2.0 + 0.1 * jax.random.normal(key, (n,))
sol = jc.solvers.lasso(X, y, 0.05)
print("converged:", bool(sol.converged), " duality gap:", float(sol.stats["duality_gap"]))
print("nonzero coefficients:", np.flatnonzero(np.abs(np.asarray(sol.value)) > 1e-6))
sol

# %%
try:
    from sklearn.linear_model import Lasso
except ImportError:  # scikit-learn is only needed for this check
    Lasso = None
if Lasso is not None:
    ref = Lasso(alpha=0.05, tol=1e-10, max_iter=100_000).fit(
        np.asarray(X, np.float64), np.asarray(y, np.float64)
    )

    def objective(w, b):
        r = np.asarray(y, np.float64) - np.asarray(X, np.float64) @ w - b
        return r @ r / (2 * n) + 0.05 * np.abs(w).sum()

    ours = objective(np.asarray(sol.value, np.float64), float(sol.intercept))
    theirs = objective(ref.coef_, ref.intercept_)
    print(f"objective: jaxcirc {ours:.8f}  scikit-learn {theirs:.8f}")
    assert abs(ours - theirs) <= 1e-5 * abs(theirs)

# %% [markdown]
# The λ path is one compiled `lax.scan` with warm starts: from the smallest α that zeroes
# every coefficient down to `eps·α_max`.

# %%
path = jc.solvers.lasso_path(X, y, n_alphas=30)
alphas, coefs = np.asarray(path.stats["alpha"]), np.asarray(path.value)
true_columns = np.flatnonzero(np.asarray(w_true))
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(alphas, coefs[:, np.setdiff1d(np.arange(d), true_columns)], color="0.75", lw=0.7)
for j in true_columns:
    ax.plot(alphas, coefs[:, j], lw=2, label=f"column {j} (true {float(w_true[j]):+.1f})")
ax.set(
    xscale="log",
    xlabel="α (penalty)",
    ylabel="coefficient",
    title="Lasso path on correlated columns (others in grey)",
)
ax.invert_xaxis()
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## A compiled program with a known circuit
# tracr (Lindner et al. 2023) compiles a RASP program into transformer weights, so the true
# circuit is known. `jc.bench.problem` gives the model, inputs, metric and the truth as a
# `Circuit` on the same edge graph every method uses. CircuitLasso here fits the skeleton and
# chooses λ on held-out samples.

# %%
p = jc.bench.problem("frac_prevs", n=16)
start = time.perf_counter()
result = jc.methods.circuit_lasso(p.model, p.clean, p.corrupt, select="heldout")
print(
    f"CircuitLasso: {time.perf_counter() - start:.1f} s, {len(result.circuit)} edges; "
    f"truth {len(p.truth)} edges"
)
auroc = float(jc.metrics.auroc(result.scores, p.truth))
eap = jc.methods.eap(p.model, p.clean, p.corrupt, p.metric, ablation=p.ablation)
print(
    f"edge AUROC against the truth: CircuitLasso {auroc:.3f}, "
    f"EAP {float(jc.metrics.auroc(eap, p.truth)):.3f}"
)
print("structural Hamming distance:", int(jc.metrics.shd(result.circuit, p.truth)))
assert auroc > 0.9

# %%
Image(
    jc.viz.plot_circuit(
        {"CircuitLasso": result.circuit},
        p.truth,
        "lasso_tracr.png",
        title="CircuitLasso on tracr frac_prevs vs the compiled circuit",
    )
)

# %% [markdown]
# ## The task circuit of a trained model
# On a trained model the skeleton holds every linear dependency, including many that do not
# matter for the behaviour. Given a task, CircuitLasso passes a relevance back from the
# behaviour's readout through the fitted coefficients and keeps the edges it reaches. On the
# induction model, compare with EAP-IG by faithfulness (the circuit alone, every other edge
# set to its corrupted value).

# %%
model, task = jc.zoo.induction_model(), jc.zoo.induction_task(16, 6, seed=0)
lasso_circuit = jc.discover(jc.methods.CircuitLasso(), model, task)
eapig = jc.discover(jc.methods.EAPIG(steps=5), model, task)
sizes = [8, 16, 24, 32, 48]
curves = {
    name: np.asarray(
        jc.metrics.faithfulness_curve(
            model, task.clean, task.corrupt, task.metric, found.scores, sizes
        )
    )
    for name, found in (("CircuitLasso", lasso_circuit), ("EAP-IG", eapig))
}
for name, curve in curves.items():
    print(f"{name:>12}:", {k: round(float(v), 2) for k, v in zip(sizes, curve)})
# the previous-token head feeds an induction head's key in the lasso's circuit too
assert any(
    s.startswith("L0H") and t.startswith("L1H") and t.endswith(".k")
    for s, t in lasso_circuit.scores.top(24).edges()
)
Image(
    jc.viz.plot_curves(
        {name: (sizes, curve) for name, curve in curves.items()},
        "task_circuits.png",
        title="Induction model: task circuits by size",
        x_label="edges kept (top by score)",
        y_label="faithfulness",
    )
)

# %% [markdown]
# On trained models the task circuit from observational data is less faithful at a given size
# than EAP-IG's, which measures each edge's effect on the behaviour directly; on compiled
# programs, where every dependency is the mechanism, CircuitLasso is the most accurate method
# of the scorecard (see `jaxcirc bench ground-truth`).
