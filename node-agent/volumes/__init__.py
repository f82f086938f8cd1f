"""Local volumes: carving LocalVolumes into LVs, filling them, the CSI Node service, StorageNode."""
