"""Metrics on batched logits `[batch, seq, d_vocab]`, and wrappers that make sweep metrics."""

from ._logits import Bound as Bound
from ._logits import Normalized as Normalized
from ._logits import at_position as at_position
from ._logits import bind as bind
from ._logits import cross_entropy as cross_entropy
from ._logits import kl_to_clean as kl_to_clean
from ._logits import logit_diff as logit_diff
from ._logits import normalize as normalize
from ._logits import normalized as normalized
from ._logits import prob_diff as prob_diff
