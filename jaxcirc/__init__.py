"""jaxcirc: causal, mechanistic interpretability in JAX.

Models are Equinox modules, interventions are values substituted at named sites, and every
sweep compiles once. See the README for a tour.
"""

from . import _xla_workaround as _xla_workaround  # first: XLA reads its flags at backend start
from . import interventions as interventions
from . import models as models
from . import patching as patching
from ._finite import NonFiniteError as NonFiniteError
from .interventions import Add as Add
from .interventions import Chain as Chain
from .interventions import Function as Function
from .interventions import Mean as Mean
from .interventions import Noise as Noise
from .interventions import Patch as Patch
from .interventions import Scale as Scale
from .interventions import Subspace as Subspace
from .interventions import Zero as Zero
from .interventions import clear as clear
from .interventions import intervene as intervene
from .interventions import sites as sites
from .models import Activations as Activations
from .models import SiteRef as SiteRef
from .models import Transformer as Transformer
from .models import TransformerConfig as TransformerConfig

__version__ = "0.1.0"

# imported on first use: they pull heavier dependencies
_LAZY = (
    "io", "zoo", "viz", "cli", "methods", "tasks", "metrics", "graph", "solvers", "bench", "sae",
    "sparse",
)  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'jaxcirc' has no attribute {name!r}")


def load(path, kind=None, **kwargs):
    """Load what `jaxcirc.save` wrote (a model, SAE, circuit or mask), a Hugging Face directory,
    a `.gguf` file, or `hf://org/name`; `kind` names what you expect. See `jaxcirc.io.load`."""
    from .io import load as _load

    return _load(path, kind, **kwargs)


def discover(method, model, task):
    """The circuit that discovery `method` (a value such as `jaxcirc.methods.EAP()`) finds in
    `model` for `task`; see `jaxcirc.methods.discover`."""
    from .methods import discover as _discover

    return _discover(method, model, task)


def save(path, obj):
    """Save a model, SAE, circuit or mask atomically as a self-describing folder; see
    `jaxcirc.io.save`."""
    from .io import save as _save

    return _save(path, obj)
