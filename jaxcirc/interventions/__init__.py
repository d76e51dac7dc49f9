"""Interventions as values substituted at sites: `intervene(model, {site: intervention})`."""

from ..models._site import AbstractIntervention as AbstractIntervention
from ..models._site import Site as Site
from ..models._site import SiteRef as SiteRef
from ._apply import clear as clear
from ._apply import intervene as intervene
from ._apply import resolve as resolve
from ._apply import sites as sites
from ._library import AbstractSelectiveIntervention as AbstractSelectiveIntervention
from ._library import Add as Add
from ._library import Chain as Chain
from ._library import Function as Function
from ._library import Mean as Mean
from ._library import Noise as Noise
from ._library import Patch as Patch
from ._library import Scale as Scale
from ._library import Subspace as Subspace
from ._library import Zero as Zero
