"""Dataset orchestration: targets, the seeder, per-copy volumes and the summary."""
