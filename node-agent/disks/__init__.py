"""Disk discovery: what each block device is, whether it is safe to claim, and the LocalDisks."""
