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
# # Circuit discovery against ground truth: the tracr scorecard
#
# On a trained network nobody knows the true circuit, so discovery methods are usually judged
# by each other. tracr (Lindner et al. 2023) compiles a RASP program (Weiss et al. 2021) into
# transformer weights, and the compiler knows which head and MLP computes which variable:
# the true circuit is known exactly. Scoring discovery methods on such models is the idea of
# InterpBench (Gupta et al. 2024); `jaxcirc bench ground-truth` runs every method on 13
# programs. Here we run a few methods on two cheap programs, table their AUROC and structural
# Hamming distance against the truth, and draw what each one found.

# %%
import time
import warnings

import jax
import matplotlib.pyplot as plt
import numpy as np
import treescope
from IPython.display import Image, Markdown, display

import jaxcirc as jc

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## One problem
# `jc.bench.problem(name, n)` loads the compiled program `name` (converted to a jaxcirc
# `Transformer`), draws `n` clean inputs and their counterfactuals, and builds the scorecard's
# metric (1 on the clean run, 0 with every edge ablated) and the true `Circuit` on the model's
# edge graph. `hist` computes, at each position, how often that position's token occurs: one
# attention layer compares every token with every other, and one MLP turns the attention's
# average into a count. With zero ablation (the default) a removed edge carries nothing, so the
# truth holds every edge the program uses, including those carrying tracr's constant `one`
# direction. A real run uses `n=32` and all 13 programs.

# %%
p = jc.bench.problem("hist", n=16)
print(
    p.model.cfg.n_layers,
    "layer(s);",
    jc.graph.graph(p.model).n_edges,
    "edges in the graph;",
    len(p.truth),
    "of them true",
)
print("clean inputs (token ids, BOS first):\n", p.clean[:3])
for src, dst in p.truth.edges():
    print(f"   {src:>6} -> {dst}")
p.truth

# %% [markdown]
# A first independent check of the ground truth and the masked forward pass: the true circuit
# on its own, every other edge ablated, reproduces the compiled program (faithfulness 1), and
# the empty circuit does not.

# %%
truth_faith = float(
    jc.metrics.faithfulness(p.model, p.clean, p.corrupt, p.metric, p.truth, ablation=p.ablation)
)
print(f"faithfulness of the true circuit: {truth_faith:.3f}")
assert truth_faith > 0.95

# %% [markdown]
# ## The methods
# Every method is a value run by `jc.discover(method, model, problem)`, and every one returns a
# `Circuit` on the same graph whose `Scores` rank all edges, so one ROC compares them:
#
# - **EAP** (Syed et al. 2023): one forward and one backward pass, a first-order estimate;
# - **EAP-IG** (Hanna et al. 2024): the gradient averaged along the path from the ablated to the
#   clean input; tracr's MLPs are step functions with zero gradient almost everywhere, so it
#   needs many steps (the scorecard reports 5 and 50);
# - **edge patching**: the exact effect of ablating each edge alone, the slow reference the
#   attribution methods approximate;
# - **ACDC** (Conmy et al. 2023): greedy pruning from the logits backwards, an edge removed when
#   the divergence from the clean model grows by less than τ;
# - **CircuitLasso** (Yin et al. 2026): no interventions at all, a block-sparse regression of
#   each input on the earlier outputs, from forward passes only.
#
# The settings mirror `jaxcirc.bench`'s, except that CircuitLasso solves at one fixed λ (its
# edge scores are the fitted blocks' norms; the scorecard chooses λ on held-out examples, which
# costs a λ path and more compilation).


# %%
def methods_for(p):
    a = p.ablation  # every method ablates the way the truth was defined
    return {
        "EAP": jc.methods.EAP(ablation=a),
        "EAP-IG (50 steps)": jc.methods.EAPIG(steps=50, ablation=a),
        "edge patching": jc.methods.EdgePatching(ablation=a),
        "ACDC": jc.methods.ACDC(threshold=1e-4, divergence=p.divergence, ablation=a),
        "CircuitLasso": jc.methods.CircuitLasso(target="skeleton", alpha=0.01),
    }


# tracr keeps many residual dimensions constant (unused variables); CircuitLasso drops those
# columns, which cannot carry an edge, and says so in a warning each time
warnings.filterwarnings("ignore", message="CircuitLasso: dropped")


# %% [markdown]
# ## The scorecard
# For each case and method: edge **AUROC** of the scores against the true edges (the chance a
# true edge outscores a false one), and the **SHD** (structural Hamming distance: edges in one
# circuit and not the other) of the method's top-`k` edges, `k` the true edge count. Times
# include compilation (each case has its own shapes). A real run: `jc.bench.scorecard()` or
# `jaxcirc bench ground-truth --out DIR`, all 13 cases and 8 method settings.

# %%
CASES = ["hist", "detect_ab"]
records, found = [], {}
for case in CASES:
    q = p if case == p.name else jc.bench.problem(case, n=16)
    for name, method in methods_for(q).items():
        start = time.perf_counter()
        circuit = jc.discover(method, q.model, q)
        scores = jax.block_until_ready(circuit.scores)
        top_k = scores.top(len(q.truth))
        records.append(
            {
                "case": case,
                "method": name,
                "edge AUROC": jc.metrics.auroc(scores, q.truth),
                "SHD at k": jc.metrics.shd(top_k, q.truth),
                "true edges": len(q.truth),
                "seconds": time.perf_counter() - start,
            }
        )
        found.setdefault(case, (q.truth, {}))[1][name] = top_k
columns = ["case", "method", "edge AUROC", "SHD at k", "true edges", "seconds"]
rows = [
    " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns)
    for r in records
]
display(Markdown("\n".join([" | ".join(columns), " | ".join(["---"] * len(columns))] + rows)))

# %% [markdown]
# ACDC recovers both circuits exactly (SHD 0). Exact edge patching, EAP-IG and CircuitLasso
# recover `hist` and all but one edge of `detect_ab`: there the true edge `embed -> L1H0.q`
# changes nothing when it alone is ablated (edge patching scores it 0, tied with the false
# edges), while ACDC, which judges each edge after the removals before it, finds it needed.
# Plain EAP misses a true edge of `hist`: its MLP turns the attention's average into a count
# with a step function, whose gradient at the clean input says little about what ablating its
# inputs does. Averaging the gradient along the interpolation path (EAP-IG) is the remedy,
# given enough steps.

# %%
auroc = {(r["method"], r["case"]): r["edge AUROC"] for r in records}
assert all(auroc["edge patching", case] > 0.9 for case in CASES), auroc
assert all(r["SHD at k"] <= 2 for r in records if r["method"] == "ACDC")
# where the gradient is uninformative, the first-order estimate is worse than the exact effect
assert auroc["EAP", "hist"] < auroc["edge patching", "hist"]
found["hist"][1]["ACDC"]  # a found circuit: its mask, scores and info

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.2))
methods = list(methods_for(p))
width = 0.8 / len(CASES)
for i, case in enumerate(CASES):
    ax.bar(
        np.arange(len(methods)) + (i - (len(CASES) - 1) / 2) * width,
        [auroc[m, case] for m in methods],
        width,
        label=case,
    )
ax.axhline(0.5, color="grey", lw=0.5, ls="--", label="chance")
ax.set_xticks(np.arange(len(methods)), methods, rotation=20, ha="right")
ax.set(
    ylim=(0, 1.05),
    xlabel="method",
    ylabel="edge AUROC vs the true circuit",
    title="tracr ground truth: edge AUROC per method",
)
ax.legend(title="case", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What each method found
# `jc.viz.plot_circuit(found, truth, path)` draws each method's top-`k` circuit over the true
# one: true positives in green, false positives in red, true edges the method missed in grey
# and dashed.

# %%
truth, circuits = found["hist"]
Image(
    jc.viz.plot_circuit(
        circuits,
        truth,
        "tracr_hist.png",
        title="hist: each method's top-k edges (k = true edge count)",
    )
)

# %%
truth, circuits = found["detect_ab"]
Image(
    jc.viz.plot_circuit(
        circuits,
        truth,
        "tracr_detect_ab.png",
        title="detect_ab: each method's top-k edges (k = true edge count)",
    )
)

# %% [markdown]
# ## Next
# The whole scorecard, `jc.bench.scorecard()` (or `jaxcirc bench ground-truth`), adds
# node AUROC, the faithfulness of each top-`k` circuit, learned masks (`jc.methods.LearnedMask`)
# and EAP-IG variants, on all 13 programs; `ablation="corrupt"` scores against the edges that
# matter for the counterfactual rather than every edge the program uses. Its published means
# (README): CircuitLasso 0.98, ACDC 0.93, EAP-IG with 50 steps 0.91, exact edge patching 0.91,
# EAP 0.83.
