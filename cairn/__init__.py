"""Cairn: Kubernetes storage for AI clusters."""

from cairn.api.names import API_GROUP, API_VERSION, DRIVER_NAME, TOPOLOGY_KEY

__all__ = ["API_GROUP", "API_VERSION", "DRIVER_NAME", "TOPOLOGY_KEY", "__version__"]
__version__ = "0.1.0"
