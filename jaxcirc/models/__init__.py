"""Models: `TransformerConfig`, `Transformer`, its layers, family builders, weight processing."""

from ._attention import Attention as Attention
from ._block import AttnOnlyBlock as AttnOnlyBlock
from ._block import ParallelBlock as ParallelBlock
from ._block import SequentialBlock as SequentialBlock
from ._builders import attn_only as attn_only
from ._builders import build as build
from ._builders import from_state_dict as from_state_dict
from ._builders import gpt2 as gpt2
from ._builders import llama as llama
from ._builders import neox as neox
from ._builders import state_dict as state_dict
from ._config import TransformerConfig as TransformerConfig
from ._layers import Embed as Embed
from ._layers import Identity as Identity
from ._layers import LayerNorm as LayerNorm
from ._layers import PosEmbed as PosEmbed
from ._layers import RMSNorm as RMSNorm
from ._layers import Unembed as Unembed
from ._mlp import MLP as MLP
from ._mlp import GatedMLP as GatedMLP
from ._site import SITE_KINDS as SITE_KINDS
from ._site import AbstractIntervention as AbstractIntervention
from ._site import Site as Site
from ._site import SiteRef as SiteRef
from ._transformer import Activations as Activations
from ._transformer import Transformer as Transformer
