"""The MQTT 5 thread: tails the WAL, publishes batches, takes cloud commands."""
