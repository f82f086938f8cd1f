"""`cairn`: the user CLI. Commands land with the features they drive.

cairn checkpoint list [-n NAMESPACE | -A]
cairn checkpoint restore NAME --to DIR [-n NAMESPACE] [--node NODE]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from cairn import __version__
from cairn.units import human_bytes

# Messages carry paths and S3 keys: never wrap them (logs get grepped) or read them as rich markup.
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
out = Console(soft_wrap=True, markup=False, highlight=False)


def _kubeconfig(given: str | None) -> str | None:
    """--kubeconfig, else $KUBECONFIG, else ~/.kube/config; None means in-cluster (a pod)."""
    if given:
        return given
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"].split(os.pathsep)[0]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def _fail(message: str) -> NoReturn:
    err.print(Text.assemble(("cairn: error: ", "bold red"), message))
    sys.exit(1)


# The kubernetes client and boto3 are imported inside commands: they take a second to load, and
# `cairn --help` should not wait for them.
def _api_client(kubeconfig: str | None):  # -> kubernetes.client.ApiClient
    from kubernetes.config import ConfigException

    from cairn.kube import load_api_client

    try:
        return load_api_client(_kubeconfig(kubeconfig))
    except (ConfigException, OSError) as error:
        _fail(f"cannot load a kubeconfig ({error}); pass --kubeconfig or set KUBECONFIG")


def restore_command(args: argparse.Namespace) -> None:
    from kubernetes.client.exceptions import ApiException

    from cairn.node_agent.checkpoints.restore.engine import RestoreError, RestoreProgress, restore
    from cairn.node_agent.checkpoints.restore.sources import SourcesError, sources_for
    from cairn.node_agent.p2p.identity import IdentityError, PeerIdentity

    identity = None
    if args.peer_identity is not None:
        if not args.node:
            _fail("--peer-identity speaks for a node: name it with --node")
        try:
            identity = PeerIdentity.load(args.node, args.peer_identity)
        except IdentityError as error:
            _fail(str(error))
    api_client = _api_client(args.kubeconfig)
    try:
        checkpoint, sources = sources_for(api_client, args.namespace, args.name, args.node, identity=identity)
    except SourcesError as error:
        _fail(str(error))
    except ApiException as error:
        _fail(f"the Kubernetes API refused: {error.status} {error.reason}")
    tried = ", ".join(source.name for source in sources)
    err.print(
        f"restoring {args.namespace}/{args.name} (step {checkpoint.spec.step}, {checkpoint.spec.size}, "
        f"{checkpoint.spec.file_count} files) into {args.to}; sources in order: {tried}",
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("manifest", total=checkpoint.spec.size_bytes or None)

        def show(progress: RestoreProgress) -> None:
            bar.update(
                task,
                completed=progress.done_bytes,
                total=progress.total_bytes or None,
                description=f"from {progress.source}",
            )

        try:
            report = restore(checkpoint.spec.manifest_digest, sources, args.to, show)
        except RestoreError as error:
            bar.stop()
            _fail(str(error))
    for rejection in report.rejected:
        err.print(Text.assemble(("passed over ", "yellow"), str(rejection)))
    for kind in report.tiers:
        tally = report.by_tier[kind]
        names = ", ".join(name for name, t in report.by_source.items() if t.files and name != kind.value)
        out.print(
            f"served by {kind.value}{f' ({names})' if names else ''}: {tally.files} files, "
            f"{human_bytes(tally.bytes)}B",
        )
    out.print(
        f"restored {args.namespace}/{args.name}: {report.files} files, {human_bytes(report.total_bytes)}B "
        f"verified into {args.to} in {report.seconds:.1f}s",
    )


def list_command(args: argparse.Namespace) -> None:
    from kubernetes.client.exceptions import ApiException

    from cairn.api.checkpoint import Checkpoint
    from cairn.kube import ResourceClient

    try:
        items = ResourceClient(_api_client(args.kubeconfig), Checkpoint).list(
            namespace=None if args.all_namespaces else args.namespace
        )
    except ApiException as error:
        _fail(f"the Kubernetes API refused: {error.status} {error.reason}")
    table = Table(box=None, header_style="bold")
    columns = ["NAMESPACE"] if args.all_namespaces else []
    for column in [*columns, "NAME", "PVC", "STEP", "SIZE", "PHASE", "TIERS", "REMOTE"]:
        table.add_column(column)
    for item in sorted(
        items, key=lambda i: (i.metadata.get("namespace", ""), i.model.spec.pvc_name, i.model.spec.step)
    ):
        checkpoint: Checkpoint = item.model
        remote = checkpoint.status.remote
        table.add_row(
            *([item.metadata.get("namespace", "")] if args.all_namespaces else []),
            item.name,
            checkpoint.spec.pvc_name,
            str(checkpoint.spec.step),
            checkpoint.spec.size,
            checkpoint.status.phase.value,
            checkpoint.status.tiers,
            remote.url if remote and remote.verified_at else "-",
        )
    # Piped output is read by scripts: never squeeze the columns to a guessed 80-character terminal.
    wide = out if out.is_terminal else Console(width=100_000, markup=False, highlight=False)
    wide.print(table)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cairn", description="Cairn user CLI")
    top.add_argument("--version", action="version", version=f"cairn {__version__}")
    commands = top.add_subparsers(dest="command")
    checkpoint = commands.add_parser("checkpoint", aliases=["ckpt"], help="training checkpoints")
    actions = checkpoint.add_subparsers(dest="action")

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument("-n", "--namespace", default="default")
        command.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, then ~/.kube/config")

    listing = actions.add_parser("list", help="checkpoints and where their copies are")
    common(listing)
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    listing.set_defaults(run=list_command)

    restoring = actions.add_parser(
        "restore",
        help="copy a checkpoint into a directory, every byte verified",
        description="Copy a checkpoint into an empty directory from the best tier: this node's copy "
        "in memory, then on its disks, then a peer's, then S3. Every file is checked against the "
        "checkpoint's manifest.",
    )
    common(restoring)
    restoring.add_argument("name", help="the Checkpoint's name (see `cairn checkpoint list`)")
    restoring.add_argument("--to", type=Path, required=True, help="a new or empty directory")
    restoring.add_argument(
        "--node",
        default=None,
        help="the node this runs on: its own copies (memory, then disk) are then tried first "
        "(streamed from its agent)",
    )
    restoring.add_argument(
        "--peer-identity",
        type=Path,
        default=None,
        metavar="DIR",
        help="the --node agent's peer identity (<agent state dir>/peer-identity, root only): agents "
        "serve copies only to Cairn agents, so without it peers are passed over",
    )
    restoring.set_defaults(run=restore_command)
    return top


def main(argv: list[str] | None = None) -> None:
    top = parser()
    args = top.parse_args(argv)
    if not hasattr(args, "run"):
        top.print_help()
        return
    args.run(args)


if __name__ == "__main__":
    main()
