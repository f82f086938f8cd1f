from __future__ import annotations

from cairn.api.names import OWNED_TAG
from cairn.node_agent.lvm.report import LvInfo, volume_tag
from cairn.node_agent.volumes.orphans import OrphanState, OrphanWatch

VG = "cairn-nvme"
GRACE = 60.0


def lv(name: str, *, uuid: str | None = None, tags: tuple[str, ...] | None = None) -> LvInfo:
    owned = (OWNED_TAG, volume_tag(name)) if tags is None else tags
    return LvInfo(VG, name, uuid or f"uuid-{name}", 1 << 30, 4 << 20, "-wi-a-----", "", True, owned, ())


def idle(_: LvInfo) -> str | None:
    return None


def states(watch: OrphanWatch, lvs: list[LvInfo], claimed: set[str], now: float, in_use=idle) -> dict:
    return {o.name: o.state for o in watch.judge(lvs, claimed, in_use, now)}


def test_an_unclaimed_lv_is_reported_at_once_and_removable_only_after_the_grace_period() -> None:
    watch = OrphanWatch(GRACE)
    lvs = [lv("lv-a"), lv("lv-b")]
    assert states(watch, lvs, {"lv-b"}, now=0.0) == {"lv-a": OrphanState.WAITING}
    assert states(watch, lvs, {"lv-b"}, now=GRACE - 1) == {"lv-a": OrphanState.WAITING}
    assert states(watch, lvs, {"lv-b"}, now=GRACE) == {"lv-a": OrphanState.REMOVABLE}


def test_a_local_volume_that_appears_late_ends_the_count_and_a_later_loss_starts_it_over() -> None:
    watch = OrphanWatch(GRACE)
    lvs = [lv("lv-late")]
    assert states(watch, lvs, set(), now=0.0) == {"lv-late": OrphanState.WAITING}
    assert states(watch, lvs, {"lv-late"}, now=GRACE - 1) == {}
    assert states(watch, lvs, set(), now=GRACE + 1) == {"lv-late": OrphanState.WAITING}
    assert states(watch, lvs, set(), now=2 * GRACE) == {"lv-late": OrphanState.WAITING}
    assert states(watch, lvs, set(), now=2 * GRACE + 1) == {"lv-late": OrphanState.REMOVABLE}


def test_an_lv_in_use_is_never_removable_and_its_count_starts_again_when_it_is_let_go() -> None:
    watch = OrphanWatch(GRACE)
    lvs = [lv("lv-held")]
    assert states(watch, lvs, set(), now=0.0) == {"lv-held": OrphanState.WAITING}
    held = states(watch, lvs, set(), now=GRACE + 5, in_use=lambda _: "mounted at /mnt/x")
    assert held == {"lv-held": OrphanState.IN_USE}
    assert states(watch, lvs, set(), now=GRACE + 10) == {"lv-held": OrphanState.WAITING}
    assert states(watch, lvs, set(), now=2 * GRACE + 5) == {"lv-held": OrphanState.REMOVABLE}


def test_an_lv_whose_tag_names_another_volume_or_none_is_only_ever_reported() -> None:
    watch = OrphanWatch(GRACE)
    lvs = [lv("lv-x", tags=(OWNED_TAG, volume_tag("lv-y"))), lv("lv-z", tags=(OWNED_TAG,))]
    for now in (0.0, GRACE * 10):
        found = states(watch, lvs, set(), now=now)
        assert found == {"lv-x": OrphanState.MISNAMED, "lv-z": OrphanState.MISNAMED}
    [orphan, _] = watch.judge(lvs, set(), idle, GRACE * 10)
    assert "names lv-y" in orphan.describe(GRACE) and "never removed" in orphan.describe(GRACE)


def test_lvs_without_cairns_tag_are_not_cairns_business() -> None:
    watch = OrphanWatch(GRACE)
    assert states(watch, [lv("root", tags=()), lv("home", tags=("cairn.dev/volume=home",))], set(), 0.0) == {}


def test_an_lv_made_again_under_the_same_name_starts_a_fresh_grace_period() -> None:
    watch = OrphanWatch(GRACE)
    assert states(watch, [lv("lv-r", uuid="one")], set(), now=0.0) == {"lv-r": OrphanState.WAITING}
    assert states(watch, [lv("lv-r", uuid="two")], set(), now=GRACE) == {"lv-r": OrphanState.WAITING}
