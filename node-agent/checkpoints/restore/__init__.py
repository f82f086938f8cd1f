"""Restoring a checkpoint: the order of sources (plan), the sources, and the verified fetch."""
