"""Metrics written as a fresh closure each call keep their compiled program.

The engines hold `metric` static in `eqx.filter_jit`, so a new function object (a `lambda`
written at the call, a closure made per call, a fresh `functools.partial`) would compile the
whole program again. `stable(metric)` wraps such a function in a value equal to every other
wrapping of a function with the same code that captures the same values now: the same code
object and globals dictionary; closure cells, defaults, partial arguments and the module
globals the code names compared by value (numbers, strings, `None`, tuples and pytrees of
them, lists and dicts as they are now, NumPy arrays by their bytes) or by identity (JAX
arrays, which are immutable; modules, classes and module-level functions). The key is taken
at each call, so a program is reused only for values equal to those it was traced with: it
computes what the fresh function would. A function that captures anything else (an object
of another kind, whose attributes may change) is left as it is; when one with the same code
comes back as a new object, or with other captured values, a warning says once why it
compiles again and how to avoid it.

Values a module-level function reads from its own module at trace time are not part of the
key, as for any function held static.
"""

from __future__ import annotations

import functools
import os
import sys
import types
import warnings
import weakref

import jax
import numpy as np

_NO = object()  # a value that cannot be compared safely
_SIMPLE = (type(None), bool, int, str, bytes, complex)
_last: dict = {}  # code -> (weak reference to the last function, its key)
_warned: set = set()
_MAX_DEPTH = 4


class _Same:
    """Compares by identity and keeps the object alive (so its `id` is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


class Keyed:
    """A function that compares equal to another wrapping of the same code and values."""

    __slots__ = ("fn", "key", "__weakref__")

    def __init__(self, fn, key):
        self.fn, self.key = fn, key

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __getattr__(self, name):  # attributes a user set on the function
        if name in Keyed.__slots__:
            raise AttributeError(name)
        return getattr(self.fn, name)

    def __eq__(self, other):
        return isinstance(other, Keyed) and other.key == self.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"Keyed({self.fn!r})"


def _module_level(fn) -> bool:
    return "<locals>" not in getattr(fn, "__qualname__", "<locals>")


def _value_key(v, depth: int):
    """A hashable stand-in for `v` equal only for values that trace the same, or `_NO`."""
    if isinstance(v, float):
        return (float, v.hex())
    if isinstance(v, _SIMPLE):
        return (type(v), v)
    if isinstance(v, jax.Array):
        return _Same(v)
    if isinstance(v, np.ndarray):
        return (np.ndarray, v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.generic):
        return (type(v), v.tobytes())
    if isinstance(v, (types.ModuleType, type, types.BuiltinFunctionType)):
        return _Same(v)
    if isinstance(v, (types.FunctionType, functools.partial)):
        if isinstance(v, types.FunctionType) and _module_level(v):
            return _Same(v)
        return _key(v, depth + 1)
    leaves, treedef = jax.tree_util.tree_flatten(v)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:  # a leaf of another kind
        return _NO
    keys = tuple(_value_key(x, depth) for x in leaves)
    if any(k is _NO for k in keys):
        return _NO
    try:
        hash(treedef)
    except TypeError:
        return _NO
    return (treedef, keys)


def _names(code: types.CodeType):
    """The global names `code` and the code nested in it may read."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _key(fn, depth: int = 0):
    """The key of a function or `functools.partial`, or `_NO`."""
    if depth > _MAX_DEPTH:
        return _NO
    if isinstance(fn, functools.partial):
        head = ("partial",)
        values = {"func": fn.func, **dict(enumerate(fn.args)), **fn.keywords}
    else:
        head = (fn.__code__, _Same(fn.__globals__))
        try:
            cells = [cell.cell_contents for cell in fn.__closure__ or ()]
        except ValueError:  # a cell not yet filled
            return _NO
        values = {
            "cells": tuple(cells),
            "defaults": fn.__defaults__,
            "kwdefaults": fn.__kwdefaults__,
            **{
                ("global", name): fn.__globals__[name]
                for name in dict.fromkeys(_names(fn.__code__))
                if name in fn.__globals__
            },
        }
    keys = {k: _value_key(v, depth) for k, v in values.items()}
    if any(k is _NO for k in keys.values()):
        return _NO
    return (*head, *keys.items())


def stable(metric):
    """`metric`, wrapped (`Keyed`) when it is a function or partial whose captured values can
    be compared, so a fresh closure of the same code reuses the compiled program."""
    if not isinstance(metric, (types.FunctionType, functools.partial)):
        return metric
    key = _key(metric)
    fn = metric.func if isinstance(metric, functools.partial) else metric
    code = getattr(fn, "__code__", None)
    if code is not None:
        before = _last.get(code)
        _last[code] = (weakref.ref(metric), key)
        if before is not None and before[0]() is not metric and code not in _warned:
            if key is _NO or key != before[1]:
                _warned.add(code)
                _warn(fn, code, key is _NO)
        while len(_last) > 256:  # forget the oldest codes
            del _last[next(iter(_last))]
    return metric if key is _NO else Keyed(metric, key)


def _warn(fn, code, uncomparable: bool) -> None:
    where = f"{code.co_filename}:{code.co_firstlineno}"
    why = (
        "it captures a value that cannot be compared safely (a mutable object, say)"
        if uncomparable
        else "the values it captures differ from the last call's (new arrays, other numbers)"
    )
    warnings.warn(
        f"the metric {fn.__qualname__} ({where}) is a new function on each call and {why}, "
        "so each call compiles the engine again. Pass the values as arrays through "
        "jaxcirc.metrics.bind(fn, **arrays), or an eqx.Module with array fields, or define "
        "the metric once at module level: then one program serves every call",
        stacklevel=user_stacklevel(),
    )


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_stacklevel() -> int:
    """The `stacklevel` of `warnings.warn`, called here, that names the caller of jaxcirc."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
