"""Partition state: one core per assigned input partition (``tasks``), restoring and saving it
across restarts and rebalances (``recovery``), and the on-disk checkpoints of arrays and typed
metadata it is saved as (``checkpoints``). No Kafka client is used here; the runtime passes
positions and partitions in.
"""
