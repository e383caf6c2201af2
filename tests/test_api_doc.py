"""docs/api.md and /openapi.json list the same operations, parameters and status codes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dlaas.assemble import build_app
from dlaas.queue import open_queue
from dlaas.settings import load_settings
from dlaas.storage import open_storage

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
HEADING = re.compile(r"^### `(GET|POST|PUT|PATCH|DELETE) (/[^`]*)`\s*$")
# Codes that any route can answer, documented once under "Conventions".
COMMON = {"401", "403", "422", "429", "503"}


def doc_sections() -> dict[tuple[str, str], str]:
    sections: dict[tuple[str, str], str] = {}
    current: tuple[str, str] | None = None
    for line in DOC.read_text().splitlines():
        match = HEADING.match(line)
        if match:
            current = (match.group(1), match.group(2))
            assert current not in sections, f"{current} is documented twice"
            sections[current] = ""
        elif line.startswith("#"):
            current = None
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def schema() -> dict[str, Any]:
    settings = load_settings()
    app = build_app(settings, open_storage("memory://api-doc"), open_queue("memory://api-doc"))
    spec: dict[str, Any] = app.openapi()
    return spec


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, ops in schema()["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    }


def test_the_doc_and_the_schema_list_the_same_operations() -> None:
    documented, served = set(doc_sections()), set(operations())
    assert sorted(served - documented) == [], "served but not in docs/api.md"
    assert sorted(documented - served) == [], "in docs/api.md but not served"


@pytest.mark.parametrize("key", sorted(operations()), ids=lambda k: f"{k[0]} {k[1]}")
def test_each_operation_documents_its_parameters_and_status_codes(key: tuple[str, str]) -> None:
    op = operations()[key]
    text = doc_sections()[key]
    conventions = DOC.read_text().split("## Conventions", 1)[1].split("\n## ", 1)[0]
    for parameter in op.get("parameters", []):
        if parameter["in"] in ("query", "header"):
            assert f"`{parameter['name']}`" in text, f"{key}: parameter {parameter['name']}"
    for code in op.get("responses", {}):
        if code == "default":
            continue
        in_section = re.search(rf"\b{code}\b", text) is not None
        assert in_section or (code in COMMON and code in conventions), f"{key}: status {code}"
