"""Generate CustomResourceDefinitions from the pydantic models.

pydantic emits JSON Schema with `$ref`s and `anyOf: [T, null]` for optionals; Kubernetes
requires a *structural* OpenAPI v3 schema with every type inlined. This module does that
translation, so the models stay the one source of truth and deploy/crds is derived.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from cairn import API_GROUP, API_VERSION

from .base import Resource
from .registry import RESOURCES

# JSON Schema keywords that structural schemas accept and that carry meaning for users.
_KEPT_KEYWORDS = {
    "type",
    "description",
    "enum",
    "format",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "x-kubernetes-validations",
}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        resolved = dict(defs[schema["$ref"].rsplit("/", 1)[-1]])
        resolved.update({k: v for k, v in schema.items() if k != "$ref"})
        return _structural(resolved, defs)
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            options = [o for o in schema[combinator] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express a union of {len(options)} types structurally: {schema}")
            merged = {k: v for k, v in schema.items() if k != combinator}
            merged.update(options[0])
            return _structural(merged, defs)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        merged.update(schema["allOf"][0])
        return _structural(merged, defs)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _KEPT_KEYWORDS:
            continue
        if key == "properties":
            required = set(schema.get("required", []))
            out[key] = {}
            for name, sub in value.items():
                child = _structural(sub, defs)
                # pydantic omits defaults made by a factory. An optional object whose fields all have
                # defaults gets `{}`, so the API server fills in its nested defaults for every reader.
                if (
                    name not in required
                    and child.get("type") == "object"
                    and "properties" in child
                    and not child.get("required")
                    and "default" not in child
                ):
                    child["default"] = {}
                out[key][name] = child
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _structural(value, defs)
        elif key == "default" and value is None:
            continue
        elif key == "additionalProperties" and value is False:
            # Structural schemas forbid it beside `properties`; pruning drops unknown fields anyway.
            continue
        else:
            out[key] = value
    if out.get("format") == "date-time":
        out["type"] = "string"
    if "type" not in out and "properties" not in out:
        # A free-form value: let the API server keep whatever it is given.
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif "properties" in out:
        out.setdefault("type", "object")
    return out


def openapi_schema(resource: type[Resource]) -> dict[str, Any]:
    """The structural schema of a resource's spec and status."""
    properties: dict[str, Any] = {}
    for part in ("spec", "status"):
        model = resource.model_fields[part].annotation
        raw = model.model_json_schema(by_alias=True, mode="serialization")  # type: ignore[union-attr]
        properties[part] = _structural(raw, raw.get("$defs", {}))
        properties[part].pop("default", None)
    return {
        "type": "object",
        "description": resource.DESCRIPTION,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            **properties,
        },
        "required": ["spec"],
    }


def crd_manifest(resource: type[Resource]) -> dict[str, Any]:
    singular = resource.KIND.lower()
    names: dict[str, Any] = {
        "kind": resource.KIND,
        "listKind": f"{resource.KIND}List",
        "plural": resource.PLURAL,
        "singular": singular,
        "categories": resource.CATEGORIES,
    }
    if resource.SHORT_NAMES:
        names["shortNames"] = resource.SHORT_NAMES
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in resource.PRINTER_COLUMNS
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": names,
            "scope": "Namespaced" if resource.NAMESPACED else "Cluster",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def render(resource: type[Resource]) -> str:
    header = "# Generated from the pydantic models in api/ by `make crds`; do not edit by hand.\n"
    return header + yaml.safe_dump(crd_manifest(resource), sort_keys=False, width=100)


def crd_filename(resource: type[Resource]) -> str:
    return f"{API_GROUP}_{resource.PLURAL}.yaml"


def rendered_crds() -> dict[str, str]:
    return {crd_filename(r): render(r) for r in RESOURCES}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the CRDs generated from Cairn's models.")
    parser.add_argument("--out", type=Path, default=Path("deploy/crds"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = rendered_crds()
    for stale in args.out.glob(f"{API_GROUP}_*.yaml"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(wanted)} CRDs to {args.out}")


if __name__ == "__main__":
    main()
