"""Five YAML tables → a validated, immutable Snapshot; lint, diff and the edge-cfg CLI."""
