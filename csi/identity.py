"""The CSI Identity service, served by both the controller and the node agent."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from cairn import DRIVER_NAME, __version__

from .proto import csi_pb2, csi_pb2_grpc

_Service = csi_pb2.PluginCapability.Service
_Expansion = csi_pb2.PluginCapability.VolumeExpansion


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def GetPluginInfo(self, request, context: grpc.ServicerContext):
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    def GetPluginCapabilities(self, request, context: grpc.ServicerContext):
        # These describe the plugin as a whole, so the node agent's endpoint reports the controller
        # service too, even though a separate process serves it.
        capabilities = [
            csi_pb2.PluginCapability(service=_Service(type=_Service.CONTROLLER_SERVICE)),
            csi_pb2.PluginCapability(service=_Service(type=_Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            csi_pb2.PluginCapability(volume_expansion=_Expansion(type=_Expansion.ONLINE)),
        ]
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=capabilities)

    def Probe(self, request, context: grpc.ServicerContext):
        # Not ready is an answer, not an error: the CO keeps probing until we can serve.
        return csi_pb2.ProbeResponse(ready={"value": self._ready()})
