"""Which node copies a Dataset shares with another of the same listing, and which it must keep: pure.

A copy belongs to the Dataset that made it (its LocalVolume carries that Dataset's label). Another
Dataset of the same namespace whose origin lists the same objects at the same versions (equal
`status.listing`) uses that copy on each node where it is Ready, instead of reading the origin
again. Sharing stays within a namespace: a listing proves what a tenant can name, not that it may
read another tenant's bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CopyOwner:
    """One Dataset of the namespace, as a possible lender."""

    name: str
    listing: str | None
    created: str
    """creationTimestamp: the oldest Dataset lends, so every round picks the same one."""
    ready_nodes: frozenset[str]
    """Nodes where its own copy (not one it borrows) is Ready."""
    lendable: bool
    """Neither Failed nor being deleted: a Dataset on its way out takes no new borrowers."""


def lenders(
    borrower: str,
    listing: str | None,
    nodes: Iterable[str],
    current: Mapping[str, str],
    owners: Iterable[CopyOwner],
) -> dict[str, str]:
    """Node to the Dataset whose copy `borrower` uses there.

    `nodes`: the borrower's targets that have no copy of its own. `current`: what it borrows now; a
    loan stands while its lender exists, since the borrower holds nothing else there.
    """
    candidates = sorted(
        (o for o in owners if o.name != borrower and o.listing is not None and o.listing == listing),
        key=lambda o: (o.created, o.name),
    )
    existing = {o.name for o in owners}
    chosen: dict[str, str] = {}
    for node in nodes:
        if current.get(node) in existing:
            chosen[node] = current[node]
            continue
        lender = next((o.name for o in candidates if o.lendable and node in o.ready_nodes), None)
        if lender is not None:
            chosen[node] = lender
    return chosen


def borrowed_from(
    lender: str, shared_copies: Iterable[tuple[str, Mapping[str, str]]]
) -> dict[str, list[str]]:
    """Node to the Datasets that use `lender`'s copy there: that copy is kept while the list is not empty.

    `shared_copies`: (Dataset name, its status.sharedCopies) for every Dataset of the namespace.
    """
    users: dict[str, list[str]] = {}
    for name, loans in shared_copies:
        for node, source in loans.items():
            if source == lender and name != lender:
                users.setdefault(node, []).append(name)
    return {node: sorted(names) for node, names in users.items()}
