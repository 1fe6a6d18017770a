"""Operations: metrics (Prometheus), structured logs, fsck of the object store against the index,
backup and restore. Nothing here is on the data's way; it watches and repairs it."""
