"""`Replacement` lives in `jaxcirc.models` (a model compiles it: `jaxcirc.models.narrow`); it is
re-exported here for the unit methods that produce it."""

from ..models._replacement import CONSTANT as CONSTANT
from ..models._replacement import FOLD as FOLD
from ..models._replacement import KEPT as KEPT
from ..models._replacement import KINDS as KINDS
from ..models._replacement import Replacement as Replacement
