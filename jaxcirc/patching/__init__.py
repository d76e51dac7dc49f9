"""Activation patching sweeps (TransformerLens `patching.get_act_patch_*` semantics)."""

from ._sweep import PER as PER
from ._sweep import sweep as sweep
