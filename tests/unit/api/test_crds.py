"""The CRDs in deploy/ are generated from the pydantic models and must never drift from them."""

from __future__ import annotations

import pytest

from cairn.api.crd import crd_manifest, rendered_crds
from cairn.api.registry import RESOURCES
from tests.testbed.tools import REPO_ROOT

CRD_DIR = REPO_ROOT / "deploy" / "crds"


def test_committed_crds_match_the_models() -> None:
    wanted = rendered_crds()
    on_disk = {p.name: p.read_text() for p in CRD_DIR.glob("cairn.dev_*.yaml")}
    assert sorted(on_disk) == sorted(wanted), "run `make crds`: the set of CRD files differs"
    for name, text in wanted.items():
        assert on_disk[name] == text, f"{name} drifted from the models; run `make crds`"


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_schemas_are_structural(resource) -> None:
    """Kubernetes rejects $ref, anyOf with null and untyped nodes; the generator must remove them."""
    schema = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "properties" in node:
            assert "additionalProperties" not in node, path


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_printer_columns_point_at_real_fields(resource) -> None:
    schema = crd_manifest(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for column in resource.PRINTER_COLUMNS:
        if column.json_path.startswith(".metadata."):
            continue
        node = schema
        for part in column.json_path.strip(".").split("."):
            assert part in node.get("properties", {}), f"{resource.KIND} column {column.name}: no {part}"
            node = node["properties"][part]
