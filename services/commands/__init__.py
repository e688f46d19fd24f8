"""The commands that start processes: serve (embedded mode), worker, topology, prepare, probe, ingest, and
the ``mmserve`` CLI over them."""
