"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jpegweights_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("jpegweights_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("jpegweights_batch_size", "samples per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.forward = Histogram("jpegweights_forward_seconds", "forward pass time", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.weights_bytes = Counter("jpegweights_weights_bytes_total", "bytes of packages served", ["model", "quality"], registry=r)
        self.decode_seconds = Gauge("jpegweights_model_decode_seconds", "time to decode a model's package at load", ["model"], registry=r)
        self.ready = Gauge("jpegweights_ready", "1 when every loadable model is loaded", registry=r)
