"""Type hints of a config target's constructor, read from its source file without importing it.

Importing a target to read its hints costs seconds (torch, Lightning) on the path of every config error.
Its source says the same: the constructor's annotations are followed, name by name, through plain imports,
assignments (aliases such as Lightning's _PATH) and class definitions of the source files, none executed.
A class stands in as an empty class of its name (a class hint accepts only a nested config either way);
the standard library's typing modules are imported for real. A name the source alone cannot settle (made
at run time, bound twice, an __init__ a decorator makes or several bases bring, a module without a .py
file) gives None and the target is imported. tests/test_messages.py checks that both ways agree on every
shipped target.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.machinery
import importlib.util
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REAL_MODULES = frozenset({"typing", "typing_extensions", "collections", "collections.abc", "types", "datetime",
                           "pathlib", "os", "numbers", "enum", "abc", "builtins", "decimal", "fractions"})
_MAX_DEPTH = 40


class _Unsettled(Exception):
    """The source alone does not settle a hint: import the target instead."""


class _TypeCheckingOnly(_Unsettled):
    """A name bound only under ``if TYPE_CHECKING:``: ``typing.get_type_hints`` fails on it too."""


@dataclass(frozen=True)
class _ModuleRef:
    name: str


@dataclass
class _Source:
    name: str
    package: str
    future_annotations: bool
    bindings: dict[str, list[tuple[ast.stmt, ast.alias | None, bool]]] = field(default_factory=dict)
    stars: list[str] = field(default_factory=list)

    def binding(self, name: str) -> tuple[ast.stmt, ast.alias | None] | None:
        entries = self.bindings.get(name)
        if not entries:
            return None
        runtime = [(stmt, alias) for stmt, alias, typing_only in entries if not typing_only]
        if not runtime:
            raise _TypeCheckingOnly(self.name)
        if len(runtime) > 1 and len({(ast.dump(stmt), alias.name if alias else None) for stmt, alias in runtime}) > 1:
            raise _Unsettled(f"{self.name}.{name} is bound in more than one place")
        return runtime[0]


def source_hints(target: str) -> dict[str, Any] | None:
    """The hints ``typing.get_type_hints`` gives the target's constructor, read from its source; None when
    the source alone does not settle them."""
    module_name, _, name = target.rpartition(".")
    try:
        source, function = _definition(module_name, name, 0)
        return {} if function is None else _function_hints(source, function)
    except (_Unsettled, RecursionError, SyntaxError, ValueError, OSError, ImportError, AttributeError, TypeError):
        return None


def _function_hints(source: _Source, function: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, Any]:
    arguments = function.args
    parameters = [*arguments.posonlyargs, *arguments.args, *([arguments.vararg] if arguments.vararg else []),
                  *arguments.kwonlyargs, *([arguments.kwarg] if arguments.kwarg else [])]
    resolver = _Resolver(source.name)
    try:
        hints = {p.arg: resolver.evaluate(p.annotation, source.name, 0) for p in parameters if p.annotation}
        if function.returns is not None:
            resolver.evaluate(function.returns, source.name, 0)  # get_type_hints reads it too (and may fail on it)
    except _TypeCheckingOnly as error:
        if source.future_annotations and error.args == (source.name,):
            return {}  # all annotations are strings there and get_type_hints fails: none can be checked
        raise
    return hints


def _definition(module_name: str, name: str, depth: int) -> tuple[_Source, ast.FunctionDef | None]:
    """The function, or the class's ``__init__``, that ``module_name.name`` is bound to (None: object's)."""
    if depth > _MAX_DEPTH:
        raise _Unsettled("too deep")
    source = _source(module_name)
    bound = source.binding(name)
    if bound is None:
        for star in source.stars:
            try:
                return _definition(star, name, depth + 1)
            except _Unsettled:
                continue
        raise _Unsettled(f"{module_name}.{name} not found")
    stmt, alias = bound
    if isinstance(stmt, ast.ImportFrom) and alias is not None:
        origin = _absolute(source, stmt)
        if origin in _REAL_MODULES:
            raise _Unsettled(origin)
        return _definition(origin, alias.name, depth + 1)
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
        return source, stmt
    if isinstance(stmt, ast.ClassDef):
        return _class_init(source, stmt, depth)
    raise _Unsettled(f"{module_name}.{name} is not a class or function definition")


_NO_INIT_BASES = frozenset({"object", "ABC", "Generic", "Protocol"})  # bases that bring no __init__ of their own


def _class_init(source: _Source, stmt: ast.ClassDef, depth: int) -> tuple[_Source, ast.FunctionDef | None]:
    """The class's own ``__init__``, else its one base's; None: ``object.__init__`` (no hints)."""
    if any(_binds(s, "__init__") for s in stmt.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)):
        raise _Unsettled(f"{stmt.name}.__init__ is assigned")
    inits = [s for s in stmt.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name == "__init__"]
    if inits:
        return source, inits[-1]
    if stmt.decorator_list or stmt.keywords:  # a dataclass, a metaclass ...: its __init__ is made at run time
        raise _Unsettled(f"{stmt.name} is decorated or has a metaclass")
    bases = [b.value if isinstance(b, ast.Subscript) else b for b in stmt.bases]
    bases = [b for b in bases if not (isinstance(b, ast.Name) and b.id in _NO_INIT_BASES
                                      or isinstance(b, ast.Attribute) and b.attr in _NO_INIT_BASES)]
    if not bases:
        return source, None
    if len(bases) > 1:
        raise _Unsettled(f"{stmt.name} has several bases")
    base = bases[0]
    if isinstance(base, ast.Name):
        return _definition(source.name, base.id, depth + 1)
    if isinstance(base, ast.Attribute):
        owner = _Resolver(source.name).evaluate(base.value, source.name, depth + 1)
        if isinstance(owner, _ModuleRef) and owner.name not in _REAL_MODULES:
            return _definition(owner.name, base.attr, depth + 1)
    raise _Unsettled(f"base of {stmt.name}")


def _binds(stmt: ast.stmt, name: str) -> bool:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


class _Resolver:
    def __init__(self, home: str) -> None:
        self.home = home  # the constructor's module: string annotations are evaluated there

    def evaluate(self, node: ast.expr, module: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Unsettled("too deep")
        depth += 1
        if isinstance(node, ast.Constant):
            if node.value is None or node.value is Ellipsis:
                return node.value
            if isinstance(node.value, str) and module == self.home:  # a forward reference
                return self.evaluate(ast.parse(node.value.strip(), mode="eval").body, module, depth)
            raise _Unsettled(f"constant {node.value!r}")
        if isinstance(node, ast.Name):
            return self.name(module, node.id, depth)
        if isinstance(node, ast.Attribute):
            base = self.evaluate(node.value, module, depth)
            if not isinstance(base, _ModuleRef):
                raise _Unsettled(f"attribute {node.attr} of {base!r}")
            if base.name in _REAL_MODULES:
                return getattr(importlib.import_module(base.name), node.attr)
            return self.name(base.name, node.attr, depth)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, module, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = (self.evaluate(side, module, depth) for side in (node.left, node.right))
            left, right = (type(None) if side is None else side for side in (left, right))
            return left | right
        if isinstance(node, ast.List):
            return [self.evaluate(element, module, depth) for element in node.elts]
        if isinstance(node, ast.Call):
            function = self.evaluate(node.func, module, depth)
            if getattr(function, "__name__", None) in ("TypeVar", "NewType", "ParamSpec", "TypeVarTuple") and \
                    getattr(function, "__module__", None) in ("typing", "typing_extensions"):
                return Any  # checked like Any: nothing a config value can be held to
        raise _Unsettled(ast.dump(node))

    def subscript(self, node: ast.Subscript, module: str, depth: int) -> Any:
        base = self.evaluate(node.value, module, depth)
        elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base is typing.Literal:
            return typing.Literal[tuple(ast.literal_eval(element) for element in elements)]
        if base is typing.Annotated:
            return self.evaluate(elements[0], module, depth)  # get_type_hints drops the metadata
        if isinstance(base, type) and getattr(base, "_stnbench_stand_in", False):
            return Any  # a generic class of some library: only its origin, a class, would be checked
        args = tuple(self.evaluate(element, module, depth) for element in elements)
        return base[args if len(args) > 1 or isinstance(node.slice, ast.Tuple) else args[0]]

    def name(self, module: str, name: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Unsettled("too deep")
        source = _source(module)
        bound = source.binding(name)
        if bound is None:
            for star in source.stars:
                try:
                    return self.name(star, name, depth + 1)
                except _Unsettled:
                    continue
            if _spec(f"{module}.{name}") is not None:
                return _ModuleRef(f"{module}.{name}")
            if hasattr(builtins, name):
                return getattr(builtins, name)
            raise _Unsettled(f"{module}.{name} not found")
        stmt, alias = bound
        if isinstance(stmt, ast.Import) and alias is not None:
            return _ModuleRef(alias.name if alias.asname else alias.name.partition(".")[0])
        if isinstance(stmt, ast.ImportFrom) and alias is not None:
            origin = _absolute(source, stmt)
            if origin in _REAL_MODULES:
                return getattr(importlib.import_module(origin), alias.name)
            return self.name(origin, alias.name, depth + 1)
        if isinstance(stmt, ast.ClassDef):
            return _stand_in(module, name)
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            return self.evaluate(stmt.value, module, depth + 1)
        raise _Unsettled(f"{module}.{name} is bound by {type(stmt).__name__}")


@functools.cache
def _stand_in(module: str, name: str) -> type:
    return type(name, (), {"__module__": module, "__qualname__": name, "_stnbench_stand_in": True})


def _spec(module_name: str) -> importlib.machinery.ModuleSpec | None:
    """The module's spec, found without importing it or its parent packages."""
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], "__spec__", None)
    parent = module_name.rpartition(".")[0]
    if not parent:
        return importlib.util.find_spec(module_name)
    parent_spec = _spec(parent)
    locations = parent_spec.submodule_search_locations if parent_spec is not None else None
    if locations is None:
        return None
    return importlib.machinery.PathFinder.find_spec(module_name, list(locations))


@functools.cache
def _source(module_name: str) -> _Source:
    spec = _spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise _Unsettled(f"no source for {module_name}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    package = module_name if spec.submodule_search_locations is not None else module_name.rpartition(".")[0]
    future = any(isinstance(s, ast.ImportFrom) and s.module == "__future__" and any(a.name == "annotations"
                                                                                     for a in s.names)
                 for s in tree.body)
    source = _Source(module_name, package, future)
    _collect(source, tree.body, typing_only=False)
    return source


def _collect(source: _Source, body: list[ast.stmt], typing_only: bool) -> None:
    """The names a module's top level binds, and whether only under ``if TYPE_CHECKING:``."""
    def bind(name: str, stmt: ast.stmt, alias: ast.alias | None = None) -> None:
        source.bindings.setdefault(name, []).append((stmt, alias, typing_only))

    for stmt in body:
        if isinstance(stmt, ast.If):
            _collect(source, stmt.body, typing_only or _is_type_checking(stmt.test))
            _collect(source, stmt.orelse, typing_only)
        elif isinstance(stmt, ast.Try | getattr(ast, "TryStar", ast.Try)):
            for block in (stmt.body, *(handler.body for handler in stmt.handlers), stmt.orelse, stmt.finalbody):
                _collect(source, block, typing_only)
        elif isinstance(stmt, ast.With):
            _collect(source, stmt.body, typing_only)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                bind(alias.asname or alias.name.partition(".")[0], stmt, alias)
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if alias.name == "*":
                    if not typing_only:
                        source.stars.append(_absolute(source, stmt))
                else:
                    bind(alias.asname or alias.name, stmt, alias)
        elif isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            bind(stmt.name, stmt)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                if isinstance(target, ast.Name):
                    bind(target.id, stmt)
                else:  # a, b = ...: bound, but to nothing the source settles
                    _bind_stores(target, bind)
        elif not isinstance(stmt, ast.AnnAssign):  # loops, augmented assignments, match ...: settled by nothing
            _bind_stores(stmt, bind)


def _bind_stores(node: ast.AST, bind: Callable[[str, ast.stmt], None]) -> None:
    for name_node in ast.walk(node):
        if isinstance(name_node, ast.Name) and isinstance(name_node.ctx, ast.Store):
            bind(name_node.id, ast.Pass())


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(source: _Source, stmt: ast.ImportFrom) -> str:
    if not stmt.level:
        return stmt.module or ""
    base = source.package.rsplit(".", stmt.level - 1)[0] if stmt.level > 1 else source.package
    return f"{base}.{stmt.module}" if stmt.module else base


def clear_cache() -> None:
    """Forget the parsed source files (megabytes for torch's): kept only while one config is checked."""
    _source.cache_clear()
