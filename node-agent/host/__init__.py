"""The node itself: mounts, device copies, CPU and I/O priority, rate limits, safe file access.

Every feature stands on these; they import no feature."""
