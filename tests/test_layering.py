"""The package's layering: imports point down the layer order, and no method branches on the
model family (a model provides what differs through `jaxcirc.models`)."""

import ast
from pathlib import Path

import pytest

import jaxcirc

ROOT = Path(jaxcirc.__file__).parent
# a module may import from its own subpackage or from subpackages earlier in this list; the
# top-level private helpers (`jaxcirc/_atomic.py`, ...) sit below all of them, and
# `jaxcirc/__init__.py` may import anything
LAYERS = (
    "models",
    "interventions",
    "graph",
    "solvers",
    "sae",
    "sparse",
    "metrics",
    "tasks",
    "patching",
    "methods",
    "io",
    "zoo",
    "viz",
    "bench",
    "cli",
)
HELPERS = "the top-level helpers"
FAMILY_CLASSES = {
    "MLPClassifier",
    "Transformer",
    "SequentialBlock",
    "ParallelBlock",
    "AttnOnlyBlock",
}
ISINSTANCE_EXEMPT: set[str] = set()


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py")


def _rel(path: Path) -> str:
    return f"jaxcirc/{path.relative_to(ROOT).as_posix()}"


def _layer(path: Path) -> str:
    """The subpackage of a module of `jaxcirc/`, or `HELPERS` for a top-level module."""
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else HELPERS


def _rank(layer: str) -> int:
    return -1 if layer == HELPERS else LAYERS.index(layer)


def _package(path: Path) -> list[str]:
    """`["jaxcirc", ...]`: the package a module's relative imports start from."""
    return ["jaxcirc", *path.relative_to(ROOT).parts[:-1]]


def _resolve(package: list[str], level: int, module: str | None) -> str:
    """The absolute name of `from {'.' * level}{module} import ...` inside `package`."""
    base = package[: len(package) - level + 1]
    return ".".join(base + ([module] if module else []))


def imports(source: str, path: Path) -> list[tuple[int, str]]:
    """`(line, absolute module name)` of every import in `source`, nested ones included, and
    of every relative module named by a lazy-export table (`_EXPORTS = {name: ".module"}`)."""
    package, found = _package(path), []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                found.append((node.lineno, node.module))
            elif node.module:
                found.append((node.lineno, _resolve(package, node.level, node.module)))
            else:  # from .. import x: x may be a subpackage
                base = _resolve(package, node.level, None)
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            for value in node.value.values:
                if isinstance(value, ast.Constant) and str(value.value).startswith("."):
                    name = str(value.value)
                    level = len(name) - len(name.lstrip("."))
                    found.append((value.lineno, _resolve(package, level, name.lstrip("."))))
    return sorted(found)


def upward_imports(source: str, path: Path) -> list[str]:
    """One message per import of `source` (the module at `path`) that points up the layers."""
    here, bad = _layer(path), []
    for line, name in imports(source, path):
        parts = name.split(".")
        if parts[0] != "jaxcirc" or len(parts) < 2 or parts[1] not in LAYERS:
            continue  # a third-party module, jaxcirc itself, or a top-level helper
        if _rank(parts[1]) > _rank(here):
            bad.append(
                f"{_rel(path)}:{line} imports {'.'.join(parts[:3])} "
                f"(layer {parts[1]} is above {here})"
            )
    return bad


def test_imports_point_down_the_layers():
    bad = [msg for path in _modules() for msg in upward_imports(path.read_text(), path)]
    assert not bad, "imports that point up the layer order:\n" + "\n".join(bad)


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert subpackages == set(LAYERS), f"unlisted: {subpackages - set(LAYERS)}"


def test_the_scan_sees_nested_relative_and_lazy_imports():
    # the checker itself: a module of `methods` that imports upward in every form
    path = ROOT / "methods" / "_example.py"
    source = (
        "from ..models import Transformer\n"  # down: fine
        "from ..zoo._digits import x\n"  # relative, up
        "def f():\n"
        "    import jaxcirc.viz._plot\n"  # nested, absolute, up
        "    from .. import cli\n"  # from .. import a subpackage, up
        "_EXPORTS = {'a': '..bench'}\n"  # a lazy export, up
        "from . import _units\n"  # own subpackage: fine
    )
    assert upward_imports(source, path) == [
        "jaxcirc/methods/_example.py:2 imports jaxcirc.zoo._digits (layer zoo is above methods)",
        "jaxcirc/methods/_example.py:4 imports jaxcirc.viz._plot (layer viz is above methods)",
        "jaxcirc/methods/_example.py:5 imports jaxcirc.cli (layer cli is above methods)",
        "jaxcirc/methods/_example.py:6 imports jaxcirc.bench (layer bench is above methods)",
    ]
    helper = ROOT / "_atomic.py"
    assert upward_imports("from .models import x\n", helper) == [
        "jaxcirc/_atomic.py:1 imports jaxcirc.models (layer models is above the top-level helpers)"
    ]


def _names(node: ast.AST) -> set[str]:
    """Class names in an `isinstance` second argument: a name, `a.B`, a tuple or `A | B`."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Tuple):
        return set().union(*map(_names, node.elts))
    if isinstance(node, ast.BinOp):
        return _names(node.left) | _names(node.right)
    return set()


def family_checks(source: str, filename: str) -> list[str]:
    """`isinstance`/`issubclass` calls on a model-family class in `source`."""
    bad = []
    for node in ast.walk(ast.parse(source, filename)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            hit = _names(node.args[1]) & FAMILY_CLASSES
            if hit:
                bad.append(
                    (
                        node.lineno,
                        f"{filename}:{node.lineno} {node.func.id}(..., {', '.join(sorted(hit))}): "
                        "let the model provide the behaviour (jaxcirc.models)",
                    )
                )
    return [msg for _, msg in sorted(bad)]


def test_no_method_branches_on_the_model_family():
    bad = [
        msg
        for path in sorted((ROOT / "methods").glob("*.py"))
        if path.name not in ISINSTANCE_EXEMPT
        for msg in family_checks(path.read_text(), _rel(path))
    ]
    assert not bad, "methods that branch on the model family:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source",
    [
        "isinstance(m, MLPClassifier)",
        "isinstance(m, (int, models.Transformer))",
        "isinstance(b, SequentialBlock | ParallelBlock)",
        "def f(b):\n    return isinstance(b, AttnOnlyBlock)",
    ],
)
def test_the_family_check_sees_every_form(source):
    assert family_checks(source, "x.py")


def test_moved_names_stay_importable():
    from jaxcirc import methods, models, zoo
    from jaxcirc.methods import _replacement

    assert _replacement.Replacement is models.Replacement
    assert zoo.MLPClassifier is models.MLPClassifier
    assert zoo.induction_task is jaxcirc.tasks._induction.induction_task
    assert zoo.InductionMetric is jaxcirc.tasks._induction.InductionMetric
    assert methods.Replacement is models.Replacement
