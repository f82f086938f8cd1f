"""Which populate annotations CreateVolume honours: only those Cairn put on its own prime claims."""

from __future__ import annotations

import pytest
from kubernetes import client

from cairn.api.names import POPULATE_FOR_ANNOTATION, POPULATE_FROM_ANNOTATION
from cairn.controller.populator import (
    PopulateRefused,
    prime_claim,
    source_ref,
    trusted_populate_request,
)

POPULATOR = "cairn-system"


def claim(
    namespace: str,
    name: str,
    *,
    uid: str = "uid-1",
    annotations: dict[str, str] | None = None,
    source: tuple[str, str, str | None] | None = None,
) -> client.V1PersistentVolumeClaim:
    ref = None
    if source is not None:
        kind, source_name, source_namespace = source
        ref = client.V1TypedObjectReference(
            api_group="cairn.dev", kind=kind, name=source_name, namespace=source_namespace
        )
    return client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(namespace=namespace, name=name, uid=uid, annotations=annotations),
        spec=client.V1PersistentVolumeClaimSpec(
            storage_class_name="cairn-nvme",
            access_modes=["ReadWriteOnce"],
            data_source_ref=ref,
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
        ),
    )


def made_by_the_populator(target: client.V1PersistentVolumeClaim) -> client.V1PersistentVolumeClaim:
    source = source_ref(target)
    assert source is not None
    manifest = prime_claim(target, source, POPULATOR)
    return claim(POPULATOR, manifest["metadata"]["name"], annotations=manifest["metadata"]["annotations"])


def reader(*claims: client.V1PersistentVolumeClaim):
    by_key = {(c.metadata.namespace, c.metadata.name): c for c in claims}
    return lambda namespace, name: by_key.get((namespace, name))


def test_the_populators_own_prime_claim_is_honoured() -> None:
    target = claim("team-a", "resume", uid="u-42", source=("Checkpoint", "step-7", None))
    prime = made_by_the_populator(target)
    request = trusted_populate_request(prime, POPULATOR, reader(target))
    assert request is not None
    source, namespace, name = request
    assert (source.kind, source.namespace, source.name, namespace, name) == (
        "Checkpoint",
        "team-a",
        "step-7",
        "team-a",
        "resume",
    )


def test_a_claim_without_annotations_asks_for_nothing() -> None:
    assert trusted_populate_request(claim("team-b", "plain"), POPULATOR, reader()) is None


def test_an_ordinary_claim_annotated_with_another_teams_source_is_refused() -> None:
    hostile = claim(
        "team-b",
        "thief",
        annotations={
            POPULATE_FROM_ANNOTATION: "Dataset/team-a/corpus",
            POPULATE_FOR_ANNOTATION: "team-b/thief",
        },
    )
    with pytest.raises(PopulateRefused) as refused:
        trusted_populate_request(hostile, POPULATOR, reader(hostile))
    assert refused.value.reason == "PopulateAnnotationRefused"
    assert "team-b/thief" in str(refused.value) and "spec.dataSourceRef" in str(refused.value)


def test_a_claim_recording_its_checkpoints_into_another_namespace_is_refused() -> None:
    hostile = claim(
        "team-b",
        "writer",
        annotations={
            POPULATE_FROM_ANNOTATION: "Checkpoint/team-b/mine",
            POPULATE_FOR_ANNOTATION: "team-a/train",
        },
    )
    with pytest.raises(PopulateRefused, match="only on its own claims in namespace cairn-system"):
        trusted_populate_request(hostile, POPULATOR, reader())


def test_a_prime_claim_whose_target_was_replaced_under_the_same_name_is_refused() -> None:
    target = claim("team-a", "resume", uid="u-42", source=("Checkpoint", "step-7", None))
    prime = made_by_the_populator(target)
    replaced = claim("team-a", "resume", uid="u-43", source=("Checkpoint", "step-7", None))
    with pytest.raises(PopulateRefused) as refused:
        trusted_populate_request(prime, POPULATOR, reader(replaced))
    assert refused.value.reason == "PopulateTargetMismatch"
    with pytest.raises(PopulateRefused):
        trusted_populate_request(prime, POPULATOR, reader())


def test_a_prime_claim_whose_target_asks_for_something_else_is_refused() -> None:
    target = claim("team-a", "resume", uid="u-42", source=("Checkpoint", "step-7", None))
    prime = made_by_the_populator(target)
    changed = claim("team-a", "resume", uid="u-42", source=("Checkpoint", "step-9", None))
    with pytest.raises(PopulateRefused, match="not what team-a/resume asks for"):
        trusted_populate_request(prime, POPULATOR, reader(changed))


def test_a_target_naming_a_source_in_another_namespace_is_refused() -> None:
    target = claim("team-b", "resume", uid="u-42", source=("Dataset", "corpus", "team-a"))
    prime = made_by_the_populator(target)
    with pytest.raises(PopulateRefused) as refused:
        trusted_populate_request(prime, POPULATOR, reader(target))
    assert refused.value.reason == "CrossNamespaceSource"


def test_the_claim_cache_keeps_only_claims_asking_for_a_cairn_source_and_prime_claims() -> None:
    from cairn.api.names import PRIME_CLAIM_PREFIX
    from cairn.controller.populator import claims_of_interest

    def claim(namespace: str, name: str, ref: dict | None = None) -> dict:
        return {"metadata": {"namespace": namespace, "name": name}, "spec": {"dataSourceRef": ref}}

    keep = claims_of_interest(lambda raw: raw["metadata"]["name"], "cairn-system")
    assert keep(claim("team", "a", {"apiGroup": "cairn.dev", "kind": "Dataset", "name": "d"})) == "a"
    assert keep(claim("team", "b", {"apiGroup": "cairn.dev", "kind": "Checkpoint", "name": "c"})) == "b"
    assert keep(claim("cairn-system", f"{PRIME_CLAIM_PREFIX}x")) == f"{PRIME_CLAIM_PREFIX}x"
    # Everything else is never parsed or kept: a snapshot source, another group, a plain claim.
    assert keep(claim("team", "c", {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot"})) is None
    assert keep(claim("team", "d", {"apiGroup": "example.com", "kind": "Dataset"})) is None
    assert keep(claim("team", "e")) is None
    assert keep(claim("team", f"{PRIME_CLAIM_PREFIX}x")) is None
