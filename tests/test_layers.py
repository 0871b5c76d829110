"""The layers of docs/architecture.md, checked from the imports: the picture cannot drift from the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# layer -> the project packages it must not import (Prefect's engine counts as one)
FORBIDDEN = {
    "tasks/core": ("prefect", "tasks.steps", "tasks.report", "tasks.concurrency", "tasks.watch", "flows"),
    "tasks/aws": ("prefect", "tasks.steps", "tasks.report", "tasks.concurrency", "tasks.watch", "flows"),
    "tasks/steps": ("flows",),
}
ALLOWED = {"tasks/aws": ("prefect.blocks",)}  # reading an AwsCredentials block (by name) is AWS access


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    offending = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / layer).rglob("*.py"))
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[layer])
        and not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED.get(layer, ()))
    }
    assert not offending, sorted(offending)


def test_the_architecture_page_names_every_module_that_exists() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    modules = [p for p in (REPO / "tasks").rglob("*.py") if p.name != "__init__.py" and "families" not in p.parts]
    missing = sorted(str(p.relative_to(REPO)) for p in modules
                     if str(p.relative_to(REPO)) not in page and f"`{p.stem}`" not in page)
    assert not missing, missing
