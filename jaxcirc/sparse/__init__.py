"""Weight-sparse training (Gao et al. 2025, arXiv 2511.13653).

`keep_topk`: an optax transformation that, after every update, keeps the largest-magnitude
entries of each weight matrix (the same fraction for all, at least `floor` per row and column),
its masks in the optimizer state; `l0_schedule`: the fraction annealed from dense to a target;
`sparse_adamw`: the paper's optimizer (RMS-normalised gradients, AdamW eps 0.1, warm-up and
linear decay) chained with `keep_topk`.
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
