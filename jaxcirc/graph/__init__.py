"""The computational graph of a model, edge and node masks, and the masked forward pass."""

from ._graph import Graph as Graph
from ._graph import graph as graph
from ._masked import EdgeMask as EdgeMask
from ._masked import NodeMask as NodeMask
from ._masked import ablation_values as ablation_values
from ._masked import masked_logits as masked_logits
from ._masked import run_graph as run_graph
from ._masked import source_outputs as source_outputs
