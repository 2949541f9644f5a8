"""Prometheus metrics, one registry per app (so tests and several apps in one process never clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "jpegweights_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "jpegweights_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "jpegweights_batch_size", "samples per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.forward = Histogram(
            "jpegweights_forward_seconds", "forward pass time", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.weights_bytes = Counter(
            "jpegweights_weights_bytes_total", "bytes of packages served", ["model", "quality"], registry=r
        )
        self.decode_seconds = Gauge(
            "jpegweights_model_decode_seconds", "time to decode a model's package at load", ["model"], registry=r
        )
        self.ready = Gauge("jpegweights_ready", "1 when every loadable model is loaded", registry=r)

    def summary(self) -> dict:
        """Cumulative figures as JSON (what ``GET /stats`` gives): per route, requests, errors
        (status 4xx and 5xx), seconds and the latency histogram's cumulative buckets; per model,
        forward passes, samples and seconds."""
        routes: dict[str, dict] = {}
        models: dict[str, dict] = {}

        def route(name: str) -> dict:
            return routes.setdefault(name, {"requests": 0, "errors": 0, "seconds": 0.0, "buckets": {}})

        def model(name: str) -> dict:
            return models.setdefault(name, {"passes": 0, "samples": 0, "seconds": 0.0})

        for family in (self.requests, self.latency, self.batch_size, self.forward):
            for metric in family.collect():
                for s in metric.samples:
                    if s.name == "jpegweights_requests_total":
                        r = route(s.labels["route"])
                        r["requests"] += int(s.value)
                        r["errors"] += int(s.value) if s.labels["status"] >= "400" else 0
                    elif s.name == "jpegweights_request_seconds_sum":
                        route(s.labels["route"])["seconds"] = s.value
                    elif s.name == "jpegweights_request_seconds_bucket":
                        route(s.labels["route"])["buckets"][s.labels["le"]] = int(s.value)
                    elif s.name == "jpegweights_batch_size_count":
                        model(s.labels["model"])["passes"] = int(s.value)
                    elif s.name == "jpegweights_batch_size_sum":
                        model(s.labels["model"])["samples"] = int(s.value)
                    elif s.name == "jpegweights_forward_seconds_sum":
                        model(s.labels["model"])["seconds"] = s.value
        return {"time": time.time(), "routes": routes, "models": models}
