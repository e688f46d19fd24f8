"""What the service tells about itself: Prometheus metrics, JSON-line logs, the request being served and
its queue and inference time."""
