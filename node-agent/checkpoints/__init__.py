"""Checkpoints: commit detection, records, S3 tiering, retention, replicas and restore."""
