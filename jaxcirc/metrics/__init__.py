"""Metrics on batched logits `[batch, seq, d_vocab]`, wrappers that make sweep metrics, and
circuit scores (faithfulness, completeness, ROC/AUROC, SHD)."""

from ._circuit import above as above
from ._circuit import auroc as auroc
from ._circuit import completeness as completeness
from ._circuit import faithfulness as faithfulness
from ._circuit import faithfulness_curve as faithfulness_curve
from ._circuit import node_scores as node_scores
from ._circuit import roc as roc
from ._circuit import shd as shd
from ._circuit import top_n as top_n
from ._logits import Bound as Bound
from ._logits import Normalized as Normalized
from ._logits import at_position as at_position
from ._logits import bind as bind
from ._logits import cross_entropy as cross_entropy
from ._logits import is_example_mean as is_example_mean
from ._logits import kl_to_clean as kl_to_clean
from ._logits import logit_diff as logit_diff
from ._logits import normalize as normalize
from ._logits import normalized as normalized
from ._logits import prob_diff as prob_diff
from ._logits import read_positions as read_positions
