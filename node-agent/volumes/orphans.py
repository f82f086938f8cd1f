"""Which of Cairn's LVs no LocalVolume claims, and when one of them may go.

An LV is Cairn's when it carries the `cairn.dev/owned` tag. The agent carves one only for a
LocalVolume it has seen, names it after that object and tags it `cairn.dev/volume=<name>`, and
removes it before it lets the object's finalizer go. So an owned LV without its object is left
over: a node the controller released as lost came back, an lvcreate was made by hand, or a
backup of the cluster's objects is still being restored. The last is why nothing is removed
on first sight: an orphan is reported at once and may only go after it has stayed unclaimed,
unused and correctly tagged for the whole grace period, on this agent's own monotonic clock.

Pure: the sweeper (orphan_sweeper.py) supplies what LVM and the apiserver say.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from cairn.node_agent.lvm.report import LvInfo
from cairn.units import human_bytes


class OrphanState(StrEnum):
    WAITING = "Waiting"
    """Unclaimed for less than the grace period: its LocalVolume may yet appear."""
    IN_USE = "InUse"
    """Mounted, open or held: never removed while so, and the grace period starts again after."""
    MISNAMED = "Misnamed"
    """Its volume tag does not name it: Cairn did not carve it under this name; only reported."""
    REMOVABLE = "Removable"
    """Unclaimed, unused and tagged as its own name for the whole grace period."""


@dataclass(frozen=True, slots=True)
class Orphan:
    vg: str
    name: str
    uuid: str
    size_bytes: int
    state: OrphanState
    unclaimed_seconds: float
    detail: str

    @property
    def where(self) -> str:
        return f"{self.vg}/{self.name}"

    def describe(self, grace_seconds: float) -> str:
        what = (
            f"LV {self.where} ({human_bytes(self.size_bytes)}) is tagged as Cairn's "
            "but no LocalVolume claims it"
        )
        match self.state:
            case OrphanState.WAITING:
                left = max(0.0, grace_seconds - self.unclaimed_seconds)
                return f"{what}; it is removed in {left:.0f}s if it stays unclaimed and unused"
            case OrphanState.IN_USE:
                return f"{what}; it is in use ({self.detail}), so it is kept"
            case OrphanState.MISNAMED:
                return f"{what}; {self.detail}, so it is never removed automatically"
            case OrphanState.REMOVABLE:
                return f"{what}; unclaimed and unused for {self.unclaimed_seconds:.0f}s"


class OrphanWatch:
    """Remembers since when each unclaimed LV (by uuid: a re-made LV starts over) has been seen so."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._unclaimed_since: dict[str, float] = {}

    def judge(
        self,
        lvs: Iterable[LvInfo],
        claimed: Collection[str],
        in_use: Callable[[LvInfo], str | None],
        now: float,
    ) -> list[Orphan]:
        """The orphans among `lvs`, given the LocalVolume names that exist (`claimed`).

        `lvs` must be listed before `claimed`: the agent makes an LV only after its object exists,
        so an object listed later is never missed, and one deleted in between still holds its
        finalizer (the agent removes the LV first), so it is still listed.
        """
        orphans: list[Orphan] = []
        seen: set[str] = set()
        for lv in lvs:
            if not lv.owned_by_cairn or lv.name in claimed:
                continue
            seen.add(lv.uuid)
            since = self._unclaimed_since.setdefault(lv.uuid, now)
            held = in_use(lv)
            if lv.volume_id != lv.name:
                state, detail = OrphanState.MISNAMED, f"its volume tag names {lv.volume_id or 'nothing'}"
            elif held is not None:
                state, detail = OrphanState.IN_USE, held
                self._unclaimed_since[lv.uuid] = since = now
            elif now - since >= self.grace_seconds:
                state, detail = OrphanState.REMOVABLE, ""
            else:
                state, detail = OrphanState.WAITING, ""
            orphans.append(Orphan(lv.vg, lv.name, lv.uuid, lv.size_bytes, state, now - since, detail))
        # Claimed again, or gone: a later sighting starts a fresh grace period.
        for uuid in set(self._unclaimed_since) - seen:
            del self._unclaimed_since[uuid]
        return orphans
