"""Which Dataset lends its node copies to another of the same listing, and which copies must stay."""

from __future__ import annotations

from cairn.controller.datasets.sharing import CopyOwner, borrowed_from, lenders

LISTING = "a" * 64


def owner(
    name: str, ready: set[str], *, listing: str | None = LISTING, created: str = "1", lendable: bool = True
):
    return CopyOwner(name, listing, created, frozenset(ready), lendable)


def test_a_node_borrows_from_the_oldest_dataset_with_a_ready_copy_of_the_same_listing() -> None:
    owners = [
        owner("newer", {"n1", "n2"}, created="2"),
        owner("older", {"n1"}, created="1"),
        owner("other-objects", {"n3"}, listing="b" * 64),
        owner("me", set()),
    ]
    assert lenders("me", LISTING, ["n1", "n2", "n3", "n4"], {}, owners) == {"n1": "older", "n2": "newer"}


def test_nothing_is_shared_without_a_listing_or_from_a_dataset_on_its_way_out() -> None:
    owners = [owner("deleted", {"n1"}, lendable=False), owner("untagged", {"n1"}, listing=None)]
    assert lenders("me", LISTING, ["n1"], {}, owners) == {}
    assert lenders("me", None, ["n1"], {}, [owner("untagged", {"n1"}, listing=None)]) == {}


def test_a_loan_stands_while_its_lender_exists_even_deleted_or_not_ready() -> None:
    owners = [owner("lender", set(), lendable=False), owner("me", set())]
    assert lenders("me", LISTING, ["n1"], {"n1": "lender"}, owners) == {"n1": "lender"}
    # Gone (its finalizer forced off): the node needs a copy of its own again.
    assert lenders("me", LISTING, ["n1"], {"n1": "vanished"}, [owner("me", set())]) == {}
    # A node no longer among the targets ends its loan.
    assert lenders("me", LISTING, [], {"n1": "lender"}, owners) == {}


def test_a_lenders_copy_is_kept_per_node_while_any_dataset_borrows_it() -> None:
    loans = [("b", {"n1": "a", "n2": "a"}), ("c", {"n1": "a", "n3": "z"}), ("a", {})]
    assert borrowed_from("a", loans) == {"n1": ["b", "c"], "n2": ["b"]}
    assert borrowed_from("b", loans) == {}
