"""The cluster-wide controller: CSI Controller service and reconcilers."""
