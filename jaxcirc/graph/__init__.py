"""The computational graph of a model, its result vocabulary (`Scores`, `Circuit`), edge and
node masks, and the masked forward pass every graph method runs."""

from ._circuit import Circuit as Circuit
from ._circuit import Scores as Scores
from ._features import FeatureGraph as FeatureGraph
from ._features import feature_node as feature_node
from ._graph import Graph as Graph
from ._graph import Node as Node
from ._graph import graph as graph
from ._masked import EdgeMask as EdgeMask
from ._masked import NodeMask as NodeMask
from ._masked import ablation_values as ablation_values
from ._masked import check_wiring as check_wiring
from ._masked import graph_states as graph_states
from ._masked import masked_logits as masked_logits
from ._masked import run_graph as run_graph
from ._masked import source_outputs as source_outputs
