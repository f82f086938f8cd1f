"""Shared building blocks of every Cairn custom resource model."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class CairnModel(BaseModel):
    """Base for spec and status models: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def merge_patch(self) -> dict[str, Any]:
        """This model as a JSON merge patch: the fields it was given, and only those.

        A field given as None goes as null, which deletes it on the server, at any depth. A nested
        value otherwise goes as `to_wire` writes it, defaults included, so it replaces what it names.
        """
        wire = self._wire_with_nulls()
        fields = type(self).model_fields
        return {
            (fields[name].alias or name): wire.get(fields[name].alias or name)
            for name in self.model_fields_set
        }

    def _wire_with_nulls(self) -> dict[str, Any]:
        wire = self.to_wire()
        fields = type(self).model_fields
        for name in self.model_fields_set:
            value = getattr(self, name)
            key = fields[name].alias or name
            if value is None:
                wire[key] = None
            elif isinstance(value, CairnModel):
                wire[key] = value._wire_with_nulls()
        return wire


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(CairnModel):
    """The Kubernetes metav1.Condition shape, so kubectl and tooling read it natively."""

    type: str = Field(description="CamelCase condition type, e.g. Ready.")
    status: ConditionStatus
    reason: str = Field(description="CamelCase machine-readable reason for the last transition.")
    message: str = Field(default="", description="Human-readable details, saying what to do next.")
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


def condition(
    kind: str, holds: bool, reason: str, message: str, previous: list[Condition] | tuple[Condition, ...] = ()
) -> dict:
    """A condition in wire form; its lastTransitionTime moves only when its status does."""
    status = ConditionStatus.TRUE if holds else ConditionStatus.FALSE
    before = next((c for c in previous if c.type == kind), None)
    since = (
        before.last_transition_time
        if before and before.status == status and before.last_transition_time
        else datetime.now(UTC)
    )
    return {
        "type": kind,
        "status": status.value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class PrinterColumn(BaseModel):
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


class Resource(BaseModel):
    """A custom resource kind: its CRD names and its spec/status models.

    Subclasses set the ClassVars; the CRD YAML in deploy/ is generated from them.
    """

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[list[str]] = []
    NAMESPACED: ClassVar[bool]
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = []
    DESCRIPTION: ClassVar[str] = ""
    CATEGORIES: ClassVar[list[str]] = ["cairn"]


def age_column() -> PrinterColumn:
    return PrinterColumn(name="Age", json_path=".metadata.creationTimestamp", type="date")
