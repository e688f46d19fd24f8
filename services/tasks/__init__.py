"""The per-task services that both ways of running share: each answers for one modality in-process, and the
gRPC servicers in services/rpc serve the very same objects from a worker."""
