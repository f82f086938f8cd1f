"""The gRPC plumbing: handler errors become statuses with messages; Identity answers as specified."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cairn import DRIVER_NAME
from cairn.csi.errors import ResourceExhausted
from cairn.csi.identity import IdentityService
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from cairn.csi.server import serve, socket_path


class _Controller(csi_pb2_grpc.ControllerServicer):
    def CreateVolume(self, request, context):
        raise ResourceExhausted("pool nvme on node n2 has 3.1Gi free, volume needs 10Gi")

    def DeleteVolume(self, request, context):
        raise ValueError("a bug")


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[tuple[grpc.Channel, list[bool]]]:
    ready = [False]
    endpoint = f"unix://{tmp_path / 'csi.sock'}"

    def register(server: grpc.Server) -> None:
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(lambda: ready[0]), server)
        csi_pb2_grpc.add_ControllerServicer_to_server(_Controller(), server)

    server = serve(endpoint, register)
    with grpc.insecure_channel(endpoint) as chan:
        yield chan, ready
    server.stop(grace=None)


def test_csi_error_becomes_its_status_code_and_message(channel) -> None:
    chan, _ = channel
    with pytest.raises(grpc.RpcError) as excinfo:
        csi_pb2_grpc.ControllerStub(chan).CreateVolume(csi_pb2.CreateVolumeRequest(name="v"), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert excinfo.value.details() == "pool nvme on node n2 has 3.1Gi free, volume needs 10Gi"


def test_unexpected_exception_is_internal_and_names_the_call(channel) -> None:
    chan, _ = channel
    with pytest.raises(grpc.RpcError) as excinfo:
        csi_pb2_grpc.ControllerStub(chan).DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="v"), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.INTERNAL
    assert "DeleteVolume" in excinfo.value.details() and "a bug" in excinfo.value.details()


def test_unimplemented_calls_stay_unimplemented(channel) -> None:
    chan, _ = channel
    with pytest.raises(grpc.RpcError) as excinfo:
        csi_pb2_grpc.ControllerStub(chan).CreateSnapshot(csi_pb2.CreateSnapshotRequest(name="s"), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_identity_reports_name_capabilities_and_readiness(channel) -> None:
    chan, ready = channel
    identity = csi_pb2_grpc.IdentityStub(chan)
    assert identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5).name == DRIVER_NAME
    capabilities = identity.GetPluginCapabilities(
        csi_pb2.GetPluginCapabilitiesRequest(), timeout=5
    ).capabilities
    services = {c.service.type for c in capabilities if c.HasField("service")}
    Service = csi_pb2.PluginCapability.Service
    assert services == {Service.CONTROLLER_SERVICE, Service.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    expansion = [c.volume_expansion.type for c in capabilities if c.HasField("volume_expansion")]
    assert expansion == [csi_pb2.PluginCapability.VolumeExpansion.ONLINE]
    assert identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value is False
    ready[0] = True
    assert identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value is True


def test_endpoint_must_be_a_unix_socket() -> None:
    assert socket_path("unix:///csi/csi.sock") == Path("/csi/csi.sock")
    with pytest.raises(ValueError, match="unix:///path"):
        socket_path("tcp://127.0.0.1:10000")
