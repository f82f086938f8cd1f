"""Datasets: reading the origin once, seeding, joining the swarm, and the per-node copies."""
