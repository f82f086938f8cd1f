"""The gate on pods that wait for their data: when it opens, and where the pod may then run."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cairn.api.dataset import DatasetNodeStatus, DatasetSpec, DatasetStatus, NodePhase
from cairn.controller.datasets.gating import (
    DatasetReadiness,
    GateInputError,
    claim_names,
    consumed_datasets,
    gate_decision,
    narrowed_affinity,
    required_ready,
    verified_copies,
    without_gate,
)

DIGEST = "b3:" + "a" * 64


def status(ready: list[str], targets: list[str], *, digest: str | None = DIGEST, wrong: tuple[str, ...] = ()):
    nodes = {n: DatasetNodeStatus(phase=NodePhase.READY, digest=DIGEST) for n in ready}
    nodes |= {n: DatasetNodeStatus(phase=NodePhase.READY, digest="b3:" + "0" * 64) for n in wrong}
    return DatasetStatus(target_nodes=targets, nodes=nodes, digest=digest)


@pytest.mark.parametrize(
    ("ready_when", "wanted", "needed"),
    [("All", 5, 5), ("3", 5, 3), ("9", 5, 5), ("50%", 3, 2), ("100%", 4, 4), ("1%", 200, 2), ("All", 0, 1)],
)
def test_ready_when_counts_nodes_rounding_up_and_never_beyond_the_targets(ready_when, wanted, needed):
    assert required_ready(ready_when, wanted) == needed


@pytest.mark.parametrize("good", ["All", "1", "250", "1%", "50%", "100%"])
def test_the_schema_takes_every_ready_when_the_decision_understands(good):
    spec = DatasetSpec.model_validate(
        {"source": {"http": {"urls": ["https://example.org/a"]}}, "readyWhen": good}
    )
    assert spec.ready_when == good
    required_ready(good, 3)


@pytest.mark.parametrize("bad", ["all", "0", "-1", "101%", "0%", "50 %", "", "3,4"])
def test_a_malformed_ready_when_is_refused_by_the_schema_and_by_the_decision(bad):
    with pytest.raises(ValidationError):
        DatasetSpec.model_validate(
            {"source": {"http": {"urls": ["https://example.org/a"]}}, "readyWhen": bad}
        )
    with pytest.raises(GateInputError, match="readyWhen"):
        required_ready(bad, 3)


def test_only_ready_copies_hashed_to_the_seeders_digest_on_target_nodes_count():
    found = status(["a", "b", "stray"], ["a", "b", "c", "d"], wrong=("c",))
    found.nodes["d"] = DatasetNodeStatus(phase=NodePhase.DOWNLOADING, digest=DIGEST)
    assert verified_copies(found) == ["a", "b"]
    assert verified_copies(status(["a"], ["a"], digest=None)) == []


def test_the_gate_stays_shut_with_progress_until_enough_copies_then_opens_on_them():
    shut = gate_decision("ml", [DatasetReadiness("imagenet", status(["a"], ["a", "b", "c"]), "2")])
    assert not shut.open and shut.reason == "WaitingForData"
    assert (
        "ml/imagenet has 1 of 2 verified copies" in shut.message and "imagenet 1/3 (needs 2)" in shut.message
    )
    opened = gate_decision("ml", [DatasetReadiness("imagenet", status(["a", "c"], ["a", "b", "c"]), "2")])
    assert opened.open and opened.nodes == ("a", "c") and opened.reason == "DataReady"


def test_a_dataset_without_targets_yet_says_so():
    shut = gate_decision("ml", [DatasetReadiness("imagenet", status([], []), "All")])
    assert not shut.open and shut.reason == "WaitingForData"
    assert shut.message == "Dataset ml/imagenet has no target nodes yet"


def test_a_pod_of_two_datasets_goes_only_where_both_are_and_waits_if_nowhere_holds_both():
    both = gate_decision(
        "ml",
        [
            DatasetReadiness("text", status(["a", "b"], ["a", "b", "c"]), "1"),
            DatasetReadiness("vision", status(["b", "c"], ["a", "b", "c"]), "1"),
        ],
    )
    assert both.open and both.nodes == ("b",)
    apart = gate_decision(
        "ml",
        [
            DatasetReadiness("text", status(["a"], ["a", "c"]), "1"),
            DatasetReadiness("vision", status(["c"], ["a", "c"]), "1"),
        ],
    )
    assert not apart.open and apart.reason == "NoNodeHoldsAll"


def test_a_missing_dataset_keeps_the_gate_shut_and_says_so():
    decision = gate_decision("ml", [DatasetReadiness("nope", None)])
    assert not decision.open and "Dataset ml/nope does not exist" in decision.message


def test_consumed_datasets_come_from_the_annotation_and_from_mounted_claims_populated_from_a_dataset():
    claims = {
        "train": {
            "spec": {"dataSourceRef": {"apiGroup": "cairn.dev", "kind": "Dataset", "name": "imagenet"}}
        },
        "ckpt": {"spec": {"dataSourceRef": {"apiGroup": "cairn.dev", "kind": "Checkpoint", "name": "c1"}}},
        "elsewhere": {
            "spec": {
                "dataSourceRef": {
                    "apiGroup": "cairn.dev",
                    "kind": "Dataset",
                    "name": "x",
                    "namespace": "other",
                }
            }
        },
        "unmounted": {
            "spec": {"dataSourceRef": {"apiGroup": "cairn.dev", "kind": "Dataset", "name": "unused"}}
        },
    }
    spec = {
        "volumes": [
            {"name": "t", "persistentVolumeClaim": {"claimName": "train"}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "ckpt"}},
            {"name": "e", "persistentVolumeClaim": {"claimName": "elsewhere"}},
            {"name": "m", "persistentVolumeClaim": {"claimName": "missing"}},
            {"name": "s", "emptyDir": {}},
        ]
    }
    mounted = claim_names(spec)
    assert mounted == ["train", "ckpt", "elsewhere", "missing"]
    assert consumed_datasets({"cairn.dev/dataset": "text, vision"}, mounted, claims) == {
        "imagenet",
        "text",
        "vision",
    }
    assert consumed_datasets(None, [], claims) == set()


@pytest.mark.parametrize("hostile", ["../etc", "a b", "UPPER", "x" * 64, "a,,b", ";rm -rf /"])
def test_an_annotation_that_is_not_a_list_of_names_is_refused_with_the_reason(hostile):
    with pytest.raises(GateInputError, match=r"cairn\.dev/dataset"):
        consumed_datasets({"cairn.dev/dataset": hostile}, [], {})


def test_a_pod_may_not_wait_for_an_unbounded_number_of_datasets():
    with pytest.raises(GateInputError, match="at most 8"):
        consumed_datasets({"cairn.dev/dataset": ",".join(f"d{i}" for i in range(9))}, [], {})


def test_narrowing_makes_a_first_term_when_the_pod_has_none():
    assert narrowed_affinity(None, ["b", "a"]) == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "topology.cairn.dev/node", "operator": "In", "values": ["a", "b"]}
                        ]
                    }
                ]
            }
        }
    }


def test_narrowing_only_adds_to_each_existing_term_and_keeps_everything_else():
    zone = {"key": "zone", "operator": "In", "values": ["z1"]}
    gpu = {"key": "gpu", "operator": "Exists"}
    given = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [gpu]}]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [gpu]}}
            ],
        },
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []},
    }
    result = narrowed_affinity(given, ["n1"])
    terms = result["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    names = {"key": "topology.cairn.dev/node", "operator": "In", "values": ["n1"]}
    assert terms == [{"matchExpressions": [zone, names]}, {"matchExpressions": [gpu, names]}]
    assert (
        result["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        == given["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    )
    assert result["podAntiAffinity"] == given["podAntiAffinity"]
    assert given["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
        0
    ] == {"matchExpressions": [zone]}, "the pod's own object is not changed"
    assert narrowed_affinity(result, ["n1"]) == result, "narrowing twice to the same nodes changes nothing"
    with pytest.raises(ValueError, match="unschedulable"):
        narrowed_affinity(given, [])


def test_only_cairns_gate_is_lifted():
    assert without_gate([{"name": "cairn.dev/dataset"}, {"name": "other.io/quota"}], "cairn.dev/dataset") == [
        {"name": "other.io/quota"}
    ]
