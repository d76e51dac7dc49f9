"""Tasks: clean/corrupt prompt pairs with answers, per-example positions and a default metric.

`ioi` (Wang et al. 2023), `induction` (Olsson et al. 2022), `greater_than` (Hanna et al. 2023),
`factual` (Meng et al. 2022), and `from_strings` for your own; each returns a `Task`.
`agreement`: subject–verb agreement (Marks et al. 2025's styles).
`quote_task`, `bracket_task`, `set_or_string_task`, `square_bracket_task`: Gao et al. 2025's
Python next-token tasks (`python_source`: the standard library's code).
`bios`: templated biographies with a spurious gender cue (for SHIFT), a `Bios`.
`TRACR_CASES`: RASP programs with known circuits, compiled and cached by `jaxcirc.io.tracr_case`.
"""

from ._agreement import AGREEMENT_STYLES as AGREEMENT_STYLES
from ._agreement import agreement as agreement
from ._bios import Bios as Bios
from ._bios import bios as bios
from ._factual import FACTS as FACTS
from ._factual import factual as factual
from ._greater_than import NOUNS as NOUNS
from ._greater_than import greater_than as greater_than
from ._induction import induction as induction
from ._ioi import ABBA_TEMPLATES as ABBA_TEMPLATES
from ._ioi import BABA_TEMPLATES as BABA_TEMPLATES
from ._ioi import NAMES as NAMES
from ._ioi import OBJECTS as OBJECTS
from ._ioi import PLACES as PLACES
from ._ioi import ioi as ioi
from ._ioi import ioi_names as ioi_names
from ._python_tasks import PYTHON_TASKS as PYTHON_TASKS
from ._python_tasks import bracket_task as bracket_task
from ._python_tasks import python_rows as python_rows
from ._python_tasks import python_source as python_source
from ._python_tasks import python_tasks as python_tasks
from ._python_tasks import quote_task as quote_task
from ._python_tasks import set_or_string_task as set_or_string_task
from ._python_tasks import square_bracket_task as square_bracket_task
from ._task import Task as Task
from ._task import from_strings as from_strings
from ._task import single_token as single_token
from ._tracr_cases import TRACR_CASE_NAMES as TRACR_CASE_NAMES
from ._tracr_cases import TRACR_CASES as TRACR_CASES
from ._tracr_cases import TracrCase as TracrCase
