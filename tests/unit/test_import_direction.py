"""The direction of imports between our packages, read from the source with ``ast``.

``schemas`` imports nothing of ours; ``models`` and ``sinks`` import only ``schemas``;
``streams.ops`` does not import ``streams.runtime``; nothing in the shipped packages imports
``benchmarks`` (``gridstream bench`` runs ``python -m benchmarks.harness``) or ``tests``.
Every import counts: ``import x`` and ``from x import y``, at module level, inside functions,
under ``if TYPE_CHECKING:`` and in ``try`` blocks, relative ones resolved, and
``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = frozenset({"schemas", "models", "sinks", "streams", "benchmarks", "tests"})
SHIPPED = ("schemas", "models", "sinks", "streams")
# Of our packages, what each top-level package may import (itself included).
ALLOWED = {
    "schemas": frozenset({"schemas"}),
    "models": frozenset({"models", "schemas"}),
    "sinks": frozenset({"sinks", "schemas"}),
    "streams": frozenset({"streams", "models", "sinks", "schemas"}),
}
# Within a package: (importer prefix, forbidden prefix).
FORBIDDEN_WITHIN = (("streams.ops", "streams.runtime"),)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module name ``source`` (the text of ``module``) imports, with its line number.

    ``from x import y`` yields ``x`` and ``x.y`` (``y`` may be a submodule); relative imports are
    resolved against ``module``; the whole tree is walked, so nested imports count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level > len(parts):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top")
                base_parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                found.append((node.lineno, arg.value))
    return found


def broken_rules(importer: str, imported: str) -> list[str]:
    """The rules that ``importer`` importing ``imported`` breaks (empty when the edge is fine)."""
    top, target = importer.split(".")[0], imported.split(".")[0]
    if target not in OURS:
        return []
    broken = []
    allowed = ALLOWED.get(top)
    if allowed is not None and target not in allowed:
        broken.append(f"{top} may import only {', '.join(sorted(allowed))} of ours")
    for source, forbidden in FORBIDDEN_WITHIN:
        if _within(importer, source) and _within(imported, forbidden):
            broken.append(f"{source} must not import {forbidden}")
    return broken


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for package in SHIPPED:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


# -- the helpers, on small sources: the repository test below can fail -------------------------
def test_every_kind_of_import_is_seen() -> None:
    source = """
import numpy, models.processor as mp
from schemas.batch import ReadingBatch
from streams import runtime
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from streams.runtime.runner import BatchReport
def late():
    import benchmarks.harness
    try:
        from sinks import topics
    except ImportError:
        pass
    return importlib.import_module("tests.helpers"), __import__("streams.tools")
"""
    names = {name for _, name in imports_of(source, "streams.ops.monitor")}
    assert {
        "numpy",
        "models.processor",
        "schemas.batch",
        "streams.runtime",
        "streams.runtime.runner",
        "benchmarks.harness",
        "sinks.topics",
        "tests.helpers",
        "streams.tools",
    } <= names
    assert (7, "streams.runtime.runner") in imports_of(source, "streams.ops.monitor")


def test_relative_imports_resolve_against_the_module() -> None:
    source = "from . import health\nfrom ..runtime.runner import StreamRunner\nfrom .. import x\n"
    names = {name for _, name in imports_of(source, "streams.ops.monitor")}
    assert {"streams.ops.health", "streams.runtime.runner", "streams.x"} <= names
    in_init = {name for _, name in imports_of("from .report import A\n", "streams.ops", True)}
    assert "streams.ops.report" in in_init
    with pytest.raises(ValueError, match="beyond the top"):
        imports_of("from ... import x\n", "streams.ops.monitor")


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("schemas.batch", "models.processor"),
        ("schemas.decode", "streams.config"),
        ("models.processor", "sinks.topics"),
        ("models.processor", "streams.config"),
        ("sinks.topics", "models.events"),
        ("sinks.topics", "streams.config"),
        ("streams.ops.monitor", "streams.runtime.runner"),
        ("streams.ops", "streams.runtime"),
        ("streams.cli", "benchmarks.harness"),
        ("models.training", "benchmarks"),
        ("streams.tools.demo", "tests.helpers"),
    ],
)
def test_a_wrong_edge_breaks_a_rule(importer: str, imported: str) -> None:
    assert broken_rules(importer, imported)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("schemas.batch", "numpy"),
        ("schemas.decode", "schemas.bounds"),
        ("models.processor", "schemas.batch"),
        ("sinks.topics", "schemas.outputs"),
        ("streams.runtime.runner", "streams.ops.monitor"),
        ("streams.runtime.runner", "models.processor"),
        ("streams.ops.monitor", "streams.ops.report"),
        ("streams.ops.monitor", "models.processor"),
        ("streams.opsx", "streams.runtime"),  # a prefix is a package, not a string prefix
        ("benchmarks.harness", "streams.runtime.runner"),
    ],
)
def test_a_right_edge_breaks_none(importer: str, imported: str) -> None:
    assert broken_rules(importer, imported) == []


# -- the repository -----------------------------------------------------------------------------
def test_the_scan_reads_every_shipped_package() -> None:
    modules = _modules()
    for name in ("schemas.batch", "models.processor", "sinks.topics", "streams.cli"):
        assert name in modules
    assert "streams.ops" in modules and modules["streams.ops"][1]
    path, is_package = modules["streams.ops.monitor"]
    seen = {n for _, n in imports_of(path.read_text(), "streams.ops.monitor", is_package)}
    assert "streams.ops.report.BatchReport" in seen  # imported under TYPE_CHECKING


def test_imports_go_in_the_documented_direction() -> None:
    broken = [
        f"{path.relative_to(REPO)}:{line}: {module} imports {imported}: {rule}"
        for module, (path, is_package) in _modules().items()
        for line, imported in imports_of(path.read_text(), module, is_package)
        for rule in broken_rules(module, imported)
    ]
    assert broken == [], "\n".join(broken)
