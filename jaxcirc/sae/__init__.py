"""Sparse autoencoders: the architectures, the splice into a model, training and loading.

```python
sae = jc.sae.init("topk", d_in=576, d_sae=4608, k=32, key=key, site="blocks.3.hook_resid_post")
spliced = jc.sae.splice(model, sae)                # identical forward, features as data
ablated = jc.sae.splice(model, sae, feature_keep=keep)   # zero the features where keep == 0
```
"""

from ._buffer import ActivationBuffer as ActivationBuffer
from ._buffer import site_activations as site_activations
from ._checkpoint import load as load
from ._checkpoint import load_info as load_info
from ._checkpoint import save as save
from ._metrics import cross_entropy as cross_entropy
from ._metrics import reconstruction as reconstruction
from ._metrics import spliced_ce as spliced_ce
from ._sae import ARCHITECTURES as ARCHITECTURES
from ._sae import SAE as SAE
from ._sae import BatchTopKSAE as BatchTopKSAE
from ._sae import JumpReLUSAE as JumpReLUSAE
from ._sae import ReLUSAE as ReLUSAE
from ._sae import TopKSAE as TopKSAE
from ._sae import init as init
from ._splice import Splice as Splice
from ._splice import splice as splice
from ._train import TrainConfig as TrainConfig
from ._train import TrainResult as TrainResult
from ._train import train as train
