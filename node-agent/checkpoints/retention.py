"""Which checkpoint copies may go: a pure plan over what each tier holds.

The tiers, fastest first: memory (a memory volume's tmpfs, when the policy's tiers name memory),
local (the node's disks: the volume itself, or the agent's tier store for a memory volume's copy)
and remote (S3).

The policy (CheckpointPolicy retention):
- keep the newest `keep_memory` memory copies;
- keep the newest `keep_local` local copies;
- remotely keep the newest `keep_remote_last` verified copies, and every step divisible by
  `keep_remote_every` (0: none kept for that reason).

Guarantees that override the policy, because losing them loses training time:
- The newest complete checkpoint (a copy in memory or local, or a verified remote one) keeps every
  copy it has. Resuming needs it, and its fastest copy is the one to resume from. So `keep_local=0`
  still leaves one local copy.
- A memory copy goes only once a slower tier holds the checkpoint verified (a local copy, which is
  made verified against the manifest, or a verified remote one), unless memory is the policy's
  only tier: memory is lost with a reboot, so nothing leaves it for nowhere.
- A local copy goes only once its remote copy is verified, unless the policy is local-only, and only
  after its memory copy is gone. A memory copy kept by `keep_memory` whose local copy went first
  would, once it falls out of the memory window, wait for a slower copy that nothing makes again.
- A remote copy goes only after its memory and local copies are gone (a later plan than the one
  that deleted them). Otherwise a copy inside `keep_local` whose remote copy fell out of the remote
  window would later look never uploaded, and wait for a verification that cannot come. Deleting in
  separate plans needs no ordering from whoever carries the plan out, even across a crash.
- Only verified remote copies are ever deleted here. An unverified remote object is an upload in
  flight or the leftovers of a failed one; the uploader owns it, resumes it or aborts it. Retention
  deleting it could race a resume, and would hide a failed upload that status should show.
- A local-only policy deletes nothing remote: it names no remote target, so copies there are from
  an earlier policy, and someone should decide about them on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    has_local: bool
    """A copy on the node's disks: the volume's own, or the tier store's copy of a memory volume's."""
    remote_verified: bool
    """The remote copy was checked against the manifest."""
    remote_present: bool
    """Anything is stored remotely, verified or not."""
    has_memory: bool = False
    """A copy in a memory volume, with the policy's tiers naming memory (else it counts as local)."""

    @property
    def has_disk(self) -> bool:
        """The local tier's copy, under the name the memory tier's rules use for it."""
        return self.has_local

    @property
    def complete(self) -> bool:
        """Can this checkpoint be restored from some tier right now?"""
        return self.has_memory or self.has_local or self.remote_verified


@dataclass(frozen=True)
class RetentionPlan:
    delete_local: frozenset[int]
    delete_remote: frozenset[int]
    awaiting_upload: frozenset[int]
    """Local copies the policy lets go but that wait for their remote copy to be verified; when this
    keeps growing, uploads are not keeping up and the volume will fill."""
    delete_memory: frozenset[int] = frozenset()
    awaiting_slower_tier: frozenset[int] = frozenset()
    """Memory copies the policy lets go but that wait for a slower tier to hold them verified; when
    this keeps growing, the memory drain is not keeping up and the memory volume will fill."""


def plan_retention(
    checkpoints: Iterable[CheckpointRecord],
    keep_local: int,
    keep_remote_last: int,
    keep_remote_every: int,
    local_only: bool,
    keep_memory: int = 1,
    memory_only: bool = False,
) -> RetentionPlan:
    """`local_only`: the policy has no remote tier; `memory_only`: memory is its only tier."""
    records = list(checkpoints)
    for name, value in (
        ("keepMemory", keep_memory),
        ("keepLocal", keep_local),
        ("keepRemoteLast", keep_remote_last),
        ("keepRemoteEvery", keep_remote_every),
    ):
        if value < 0:
            raise ValueError(f"{name} is {value}; it must be 0 or more")
    steps = [r.step for r in records]
    if len(set(steps)) != len(steps):
        duplicates = sorted({s for s in steps if steps.count(s) > 1})
        raise ValueError(
            f"steps {duplicates} appear more than once; plan retention per checkpoint series "
            "(one PVC and directory), where a step names one checkpoint"
        )

    complete = [r.step for r in records if r.complete]
    protected = {max(complete)} if complete else set()

    memory = sorted((r for r in records if r.has_memory), key=lambda r: r.step, reverse=True)
    delete_memory: set[int] = set()
    awaiting_slower: set[int] = set()
    for record in memory[keep_memory:]:
        if record.step in protected:
            continue
        if memory_only or record.has_local or record.remote_verified:
            delete_memory.add(record.step)
        else:
            awaiting_slower.add(record.step)

    local = sorted((r for r in records if r.has_local), key=lambda r: r.step, reverse=True)
    delete_local: set[int] = set()
    awaiting: set[int] = set()
    for record in local[keep_local:]:
        if record.step in protected or record.has_memory:
            continue
        if local_only or record.remote_verified:
            delete_local.add(record.step)
        else:
            awaiting.add(record.step)

    delete_remote: set[int] = set()
    if not local_only:
        verified = sorted((r.step for r in records if r.remote_verified), reverse=True)
        keep = set(verified[:keep_remote_last]) | protected
        if keep_remote_every:
            keep |= {step for step in verified if step % keep_remote_every == 0}
        still_on_node = {r.step for r in records if r.has_local or r.has_memory}
        delete_remote = set(verified) - keep - still_on_node

    return RetentionPlan(
        frozenset(delete_local),
        frozenset(delete_remote),
        frozenset(awaiting),
        frozenset(delete_memory),
        frozenset(awaiting_slower),
    )
