"""The per-node agent: disks, LVM, CSI Node service, datasets and checkpoints."""
