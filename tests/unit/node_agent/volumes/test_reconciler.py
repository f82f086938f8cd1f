"""The volume reconciler against small fakes of LVM and the LocalVolume API: what it carves, reports
and removes for each event, without root or a control plane."""

from __future__ import annotations

from typing import Any

from cairn.api.names import VOLUME_FINALIZER, pool_vg
from cairn.api.volume import (
    LocalVolume,
    LocalVolumeSpec,
    LocalVolumeStatus,
    PoolClass,
    PopulateSource,
    VolumeAccess,
    VolumePhase,
)
from cairn.kube import Typed
from cairn.node_agent.lvm.errors import InsufficientSpace, LvNotFound
from cairn.node_agent.lvm.report import LvInfo, volume_tag
from cairn.node_agent.volumes.index import VolumeIndex
from cairn.node_agent.volumes.reconciler import VolumeReconciler
from cairn.units import GiB
from tests.testbed.waiting import wait_until

NODE = "gpu-1"
VG = pool_vg("nvme")


class FakeLvm:
    """LVs in a dict; `free_bytes` bounds what lvcreate may carve."""

    def __init__(self, free_bytes: int = 100 * GiB) -> None:
        self.free_bytes = free_bytes
        self.lvs: dict[str, LvInfo] = {}
        self.active: set[str] = set()
        self.calls: list[str] = []

    def _info(self, lv: str, size: int, tags: tuple[str, ...]) -> LvInfo:
        return LvInfo(VG, lv, f"uuid-{lv}", size, 4 << 20, "-wi-a-----", f"/dev/{VG}/{lv}", True, tags, ())

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Any = ()) -> LvInfo:
        self.calls.append(f"lvcreate {lv}")
        if size_bytes > self.free_bytes:
            raise InsufficientSpace(
                f"pool VG {vg} has too little", vg=vg, free_bytes=self.free_bytes, needed_bytes=size_bytes
            )
        self.free_bytes -= size_bytes
        self.lvs[lv] = self._info(lv, size_bytes, tuple(tags))
        return self.lvs[lv]

    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo:
        self.calls.append(f"lvextend {lv}")
        self.lvs[lv] = self._info(lv, new_size_bytes, self.lvs[lv].tags)
        return self.lvs[lv]

    def lvremove(self, vg: str, lv: str) -> None:
        self.calls.append(f"lvremove {lv}")
        if lv not in self.lvs:
            raise LvNotFound(f"volume {vg}/{lv} does not exist")
        self.free_bytes += self.lvs.pop(lv).size_bytes
        self.active.discard(lv)

    def get_lv(self, vg: str, lv: str) -> LvInfo:
        return self.lvs[lv]

    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str:
        self.calls.append(f"activate {lv}")
        self.active.add(lv)
        return f"/dev/{vg}/{lv}"

    def device_path(self, vg: str, lv: str) -> str | None:
        return f"/dev/{vg}/{lv}" if lv in self.active else None


class FakeVolumes:
    """LocalVolume objects by name; records the status and metadata patches it is sent."""

    def __init__(self) -> None:
        self.objects: dict[str, Typed] = {}
        self.status_patches: list[tuple[str, dict[str, Any]]] = []

    def add(
        self, name: str, spec: LocalVolumeSpec, phase: VolumePhase = VolumePhase.PENDING, **meta: Any
    ) -> Typed:
        item = Typed(LocalVolume(spec=spec, status=LocalVolumeStatus(phase=phase)), {"name": name, **meta})
        self.objects[name] = item
        return item

    def get(self, name: str, namespace: str | None = None) -> Typed | None:
        return self.objects.get(name)

    def patch_status(self, name: str, status: LocalVolumeStatus, namespace: str | None = None) -> Typed:
        self.status_patches.append((name, status.merge_patch()))
        return self.objects[name]

    def patch_metadata(self, name: str, metadata: dict[str, Any], **_: Any) -> Typed:
        item = self.objects[name]
        item.metadata.update(metadata)
        return item


def spec(size: int = 10 * GiB, node: str = NODE) -> LocalVolumeSpec:
    return LocalVolumeSpec(
        csi_name="pvc-1", node_name=node, pool=PoolClass.NVME, size_bytes=size, access=VolumeAccess.MOUNT
    )


def reconciler(lvm: FakeLvm, volumes: FakeVolumes, **hooks: Any) -> tuple[VolumeReconciler, VolumeIndex]:
    index = VolumeIndex()
    return VolumeReconciler(NODE, lvm, volumes, index, **hooks), index  # type: ignore[arg-type]


def test_a_new_volume_is_carved_tagged_activated_indexed_and_reported_ready() -> None:
    lvm, volumes, changes = FakeLvm(), FakeVolumes(), []
    subject, index = reconciler(lvm, volumes, on_change=lambda: changes.append(1))
    item = volumes.add("lvol-a", spec())
    subject.handle("ADDED", item)
    assert lvm.calls == ["lvcreate lvol-a", "activate lvol-a"]
    assert volume_tag("lvol-a") in lvm.lvs["lvol-a"].tags
    assert VOLUME_FINALIZER in item.metadata["finalizers"]
    name, patch = volumes.status_patches[-1]
    assert name == "lvol-a" and patch["phase"] == "Ready" and patch["capacityBytes"] == 10 * GiB
    assert patch["volumeGroup"] == VG and patch["reason"] is None
    staged = index.lookup("lvol-a")
    assert staged is not None and staged.device == f"/dev/{VG}/lvol-a"
    assert changes == [1]
    # The same event again (a re-list) costs nothing: the index says it is carved.
    subject.handle("MODIFIED", item)
    assert lvm.calls == ["lvcreate lvol-a", "activate lvol-a"]


def test_a_volume_that_does_not_fit_fails_with_the_reason_and_keeps_no_finalizer() -> None:
    lvm, volumes = FakeLvm(free_bytes=1 * GiB), FakeVolumes()
    subject, index = reconciler(lvm, volumes)
    item = volumes.add("lvol-b", spec(size=10 * GiB))
    subject.handle("ADDED", item)
    _, patch = volumes.status_patches[-1]
    assert patch["phase"] == "Failed" and patch["reason"] == "InsufficientSpace"
    assert item.metadata["finalizers"] is None
    assert index.lookup("lvol-b") is None and not lvm.lvs


def test_another_nodes_volume_is_never_touched() -> None:
    lvm, volumes = FakeLvm(), FakeVolumes()
    subject, _ = reconciler(lvm, volumes)
    subject.handle("ADDED", volumes.add("lvol-c", spec(node="gpu-9")))
    assert lvm.calls == [] and volumes.status_patches == []


def test_after_a_restart_a_ready_volume_is_activated_again_not_carved() -> None:
    lvm, volumes = FakeLvm(), FakeVolumes()
    lvm.lvcreate(VG, "lvol-d", 10 * GiB, tags=[volume_tag("lvol-d")])
    lvm.calls.clear()
    subject, index = reconciler(lvm, volumes)
    item = volumes.add("lvol-d", spec(), phase=VolumePhase.READY)
    item.model.status.capacity_bytes = 10 * GiB
    subject.handle("ADDED", item)
    assert lvm.calls == ["activate lvol-d"] and index.lookup("lvol-d") is not None


def test_a_deleted_volume_lets_go_removes_its_lv_publishes_then_drops_the_finalizer() -> None:
    lvm, volumes, order = FakeLvm(), FakeVolumes(), []
    subject, index = reconciler(
        lvm,
        volumes,
        before_remove=lambda name: order.append(f"release {name}"),
        publish_now=lambda: order.append("publish"),
    )
    item = volumes.add("lvol-e", spec())
    subject.handle("ADDED", item)
    item.metadata["deletionTimestamp"] = "2026-12-02T05:00:00Z"
    subject.handle("MODIFIED", item)
    assert order == ["release lvol-e", "publish"]
    assert "lvremove lvol-e" in lvm.calls and "lvol-e" not in lvm.lvs
    assert item.metadata["finalizers"] is None and index.lookup("lvol-e") is None


def test_a_volume_whose_source_is_in_another_namespace_than_its_claim_is_never_filled() -> None:
    lvm, volumes, asked = FakeLvm(), FakeVolumes(), []
    subject, index = reconciler(
        lvm, volumes, populate=lambda name, spec, device: asked.append(name) or "filled"
    )
    foreign = spec().model_copy(
        update={
            "pvc_namespace": "team-b",
            "pvc_name": "thief",
            "populate_from": PopulateSource(kind="Checkpoint", namespace="team-a", name="step-7"),
        }
    )
    subject.handle("ADDED", volumes.add("lvol-c", foreign))
    wait_until(lambda: volumes.status_patches, 5, "the fill thread to report")
    _, patch = volumes.status_patches[-1]
    assert patch["phase"] == "Failed" and patch["reason"] == "CrossNamespaceSource"
    assert "team-a/step-7" in patch["message"] and "team-b" in patch["message"]
    assert asked == [] and not lvm.lvs and index.lookup("lvol-c") is None
