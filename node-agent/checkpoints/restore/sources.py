"""From a Checkpoint and the cluster's StorageNodes to the concrete sources a restore tries, in order.

The order is `restore.plan.choose_sources`'s; this module only gives each chosen source its
transport: a directory when this process can read this node's copy itself, else the agent of the
node holding it over HTTP, and S3 with the credentials the policy's Secret holds. A source that is
chosen but cannot be used (no agent address, no credentials) still appears, failing with the
reason, so the restore's report says why each tier was passed over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kubernetes import client

from cairn.api.checkpoint import Checkpoint, CheckpointPolicy
from cairn.api.disk import StorageNode
from cairn.kube import ResourceClient, secret_reader
from cairn.node_agent.checkpoints.restore.engine import (
    FetchSource,
    LocalDirectorySource,
    PeerSource,
    S3Source,
    SourceError,
    UnavailableSource,
)
from cairn.node_agent.checkpoints.restore.plan import (
    CheckpointTiers,
    NodeCopy,
    SourceKind,
    choose_sources,
    no_source_reason,
)
from cairn.node_agent.host.files import Directory
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.peer_server import VOLUME_HEADER
from cairn.s3 import CredentialsError, S3Location, client_from_secret

LocalDirectory = Callable[[Checkpoint], Directory | None]
"""One of this node's copies as a readable directory, or None. For the volume's copy
(status.local, in memory or on disk) the agent passes `local_copy_directory`; for the tier store's
copy (status.disk), `disk_copy_directory`."""


class SourcesError(Exception):
    """The checkpoint cannot be restored from anywhere; the message says what to do."""


def checkpoint_tiers(checkpoint: Checkpoint, nodes: Iterable[StorageNode], this_node: str) -> CheckpointTiers:
    """What the Checkpoint's status and the StorageNodes say about its copies. Pure."""
    by_name = {node.spec.node_name: node for node in nodes}
    copies = []
    status = checkpoint.status
    for held_as, copy in (("local", status.local), ("disk", status.disk), ("peer", status.peer)):
        if copy is None or not copy.present:
            continue
        node = by_name.get(copy.node_name)
        reachable = (
            node is not None and node.status.ready and bool(node.status.endpoints.peer_restore_address)
        )
        tier = SourceKind.MEMORY if copy.in_memory else SourceKind.LOCAL
        copies.append(NodeCopy(copy.node_name, copy.path, reachable, tier, held_as))
    remote = checkpoint.status.remote
    return CheckpointTiers(
        this_node=this_node,
        node_copies=tuple(copies),
        status_node=checkpoint.spec.node_name,
        remote_url=remote.url if remote else None,
        remote_verified=bool(remote and remote.verified_at),
    )


def build_sources(
    namespace: str,
    name: str,
    checkpoint: Checkpoint,
    nodes: Iterable[StorageNode],
    this_node: str | None,
    *,
    s3_client: Callable[[], Any],
    local_directory: LocalDirectory | None = None,
    identity: PeerIdentity | None = None,
    volume: str | None = None,
    timeout: float = 30.0,
    disk_directory: LocalDirectory | None = None,
) -> list[FetchSource]:
    """The sources for `restore`, best first; SourcesError when none is reported anywhere.

    `this_node` is where the restore runs (None: on no node, so every copy is a peer's).
    `s3_client` is called only if S3 is reached. Without `local_directory`, this node's own copy is
    streamed from its own agent, which is how a CLI on the node reads it without the volume mounted;
    `disk_directory` does the same for the tier store's copy of a memory volume's checkpoint.
    Agents serve copies only over mutual TLS, so peers are sources only with this node's `identity`;
    `volume` names the LocalVolume a restore fills, which is what lets a node that neither wrote
    nor replicates the checkpoint read it.
    """
    nodes = list(nodes)
    tiers = checkpoint_tiers(checkpoint, nodes, this_node or "")
    chosen = choose_sources(tiers)
    if not chosen:
        raise SourcesError(f"checkpoint {namespace}/{name}: {no_source_reason(tiers)}")
    addresses = {node.spec.node_name: node.status.endpoints.peer_restore_address for node in nodes}
    certificates = {node.spec.node_name: node.status.endpoints.peer_certificate for node in nodes}
    headers = {VOLUME_HEADER: volume} if volume else {}
    sources: list[FetchSource] = []
    for source in chosen:
        if source.kind is SourceKind.S3:
            sources.append(S3Source(s3_client, S3Location.from_url(source.location)))
            continue
        node = source.node or ""
        own = source.kind in (SourceKind.MEMORY, SourceKind.LOCAL)
        label = source.kind.value if own else f"peer {node}"
        resolve = {"local": local_directory, "disk": disk_directory}.get(source.held_as or "")
        directory = resolve(checkpoint) if own and resolve is not None else None
        if directory is not None:
            sources.append(LocalDirectorySource(directory, source.kind, label))
        elif identity is None:
            sources.append(
                UnavailableSource(
                    source.kind,
                    label,
                    "agents serve copies only to Cairn agents over mutual TLS; run this on a node as "
                    "root with its agent's identity, or restore into a claim",
                )
            )
        elif (address := addresses.get(node)) and (certificate := certificates.get(node)):
            tls = identity.client_context(certificate)
            sources.append(
                PeerSource(
                    address,
                    namespace,
                    name,
                    tls,
                    kind=source.kind,
                    name=label,
                    timeout=timeout,
                    headers=headers,
                )
            )
        elif address:
            sources.append(
                UnavailableSource(
                    source.kind, label, f"node {node} publishes no peer certificate; is its agent up to date?"
                )
            )
        else:
            sources.append(
                UnavailableSource(
                    source.kind, label, f"node {node} publishes no peerRestoreAddress; is its agent running?"
                )
            )
    return sources


def policy_s3_client(api_client: client.ApiClient, namespace: str, policy: str) -> Callable[[], Any]:
    """A factory for an S3 client with the credentials of the policy's target; errors are SourceErrors."""

    def make() -> Any:
        item = ResourceClient(api_client, CheckpointPolicy).get(policy, namespace)
        if item is None:
            raise SourceError(
                f"CheckpointPolicy {namespace}/{policy} is gone, so its S3 credentials are unknown"
            )
        target = item.model.spec.target
        if target is None:
            raise SourceError(f"CheckpointPolicy {namespace}/{policy} has no S3 target")
        try:
            return client_from_secret(
                secret_reader(api_client),
                namespace,
                target.endpoint,
                target.region,
                target.credentials_secret_ref,
                f"CheckpointPolicy {namespace}/{policy}",
            )
        except CredentialsError as error:
            raise SourceError(str(error)) from None

    return make


def sources_for(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    this_node: str | None,
    *,
    local_directory: LocalDirectory | None = None,
    identity: PeerIdentity | None = None,
    volume: str | None = None,
    timeout: float = 30.0,
    disk_directory: LocalDirectory | None = None,
) -> tuple[Checkpoint, list[FetchSource]]:
    """Read the Checkpoint and the StorageNodes and build its sources; SourcesError if it is not there."""
    item = ResourceClient(api_client, Checkpoint).get(name, namespace)
    if item is None:
        raise SourcesError(
            f"checkpoint {namespace}/{name} does not exist; list them with `cairn checkpoint list`"
        )
    checkpoint: Checkpoint = item.model
    nodes = [node.model for node in ResourceClient(api_client, StorageNode).list()]
    sources = build_sources(
        namespace,
        name,
        checkpoint,
        nodes,
        this_node,
        s3_client=policy_s3_client(api_client, namespace, checkpoint.spec.policy),
        local_directory=local_directory,
        identity=identity,
        volume=volume,
        timeout=timeout,
        disk_directory=disk_directory,
    )
    return checkpoint, sources
