"""Cairn: Kubernetes storage for AI clusters."""

DRIVER_NAME = "lvm.cairn.dev"
TOPOLOGY_KEY = "topology.cairn.dev/node"
API_GROUP = "cairn.dev"
API_VERSION = "v1alpha1"
__version__ = "0.1.0"
