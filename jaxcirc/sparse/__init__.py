"""Weight-sparse training (Gao et al. 2025, arXiv 2511.13653).

`keep_topk`: an optax transformation that, after every update, keeps the largest-magnitude
entries of each weight matrix (the same fraction for all, at least `floor` per row and column),
its masks in the optimizer state; `l0_schedule`: the fraction annealed from dense to a target;
`sparse_adamw`: the paper's optimizer (RMS-normalised gradients, AdamW eps 0.1, warm-up and
linear decay) chained with `keep_topk`; `train_lm`: next-token pretraining with it (dense, or
annealed to a nonzero fraction), resumable from a checkpoint; `prune`: the smallest node circuit
of a model on a binary task (Heaviside masks with a sigmoid straight-through gradient, mean
ablation, bisection over the circuit size), counted in edges and validated both ways by
`evaluate`; `calibrate` and `task_scores(..., calibration=)`: a task's fitted logit scale and
bias between its two tokens, and the scores they give.
"""

from ._masked import KeepTopKState as KeepTopKState
from ._masked import default_include as default_include
from ._masked import default_row_axis as default_row_axis
from ._masked import keep_topk as keep_topk
from ._masked import l0_schedule as l0_schedule
from ._masked import masks as masks
from ._masked import nonzero_count as nonzero_count
from ._masked import nonzeros as nonzeros
from ._masked import topk_mask as topk_mask
from ._optimizer import normalize_rms as normalize_rms
from ._optimizer import sparse_adamw as sparse_adamw
from ._optimizer import warmup_linear_decay as warmup_linear_decay
from ._prune import TaskCircuit as TaskCircuit
from ._prune import circuit_edges as circuit_edges
from ._prune import edges as edges
from ._prune import evaluate as evaluate
from ._prune import heaviside_ste as heaviside_ste
from ._prune import locations as locations
from ._prune import masked_model as masked_model
from ._prune import node_means as node_means
from ._prune import plot_circuit as plot_circuit
from ._prune import prune as prune
from ._train import calibrate as calibrate
from ._train import evaluate_lm as evaluate_lm
from ._train import lm_loss as lm_loss
from ._train import next_token_loss as next_token_loss
from ._train import task_scores as task_scores
from ._train import train_lm as train_lm
