"""Sparse autoencoders: the architectures, the splice into a model, training and loading.

```python
sae = jc.sae.init("topk", d_in=576, d_sae=4608, k=32, key=key, site="blocks.3.hook_resid_post")
spliced = jc.sae.splice(model, sae)                # identical forward, features as data
ablated = jc.sae.splice(model, sae, feature_keep=keep)   # zero the features where keep == 0
```
"""

from ._sae import ARCHITECTURES as ARCHITECTURES
from ._sae import SAE as SAE
from ._sae import BatchTopKSAE as BatchTopKSAE
from ._sae import JumpReLUSAE as JumpReLUSAE
from ._sae import ReLUSAE as ReLUSAE
from ._sae import TopKSAE as TopKSAE
from ._sae import init as init
from ._splice import Splice as Splice
from ._splice import splice as splice
