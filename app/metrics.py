"""Prometheus metrics, in a registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("nsx_runs", "Runs by final status", ["status"], registry=r)
        self.run_seconds = Histogram("nsx_run_seconds", "Run latency", buckets=LATENCY_BUCKETS, registry=r)
        self.step_cache = Counter("nsx_step_cache", "Step cache lookups by module and outcome", ["module", "outcome"],
                                  registry=r)
        self.module_calls = Counter("nsx_module_calls", "Module calls computed (not served from cache)", ["module"],
                                    registry=r)
        self.module_errors = Counter("nsx_module_errors", "Module calls that failed", ["module"], registry=r)
        self.store_available = Gauge("nsx_store_available", "1 when the result store's backend is reachable",
                                     registry=r)
        self.store_errors = Counter("nsx_store_errors", "Result store backend errors", registry=r)
        self.runs_unpersisted = Counter("nsx_runs_unpersisted", "Runs whose record or steps could not be persisted",
                                        registry=r)
        self.program_errors = Counter("nsx_program_errors", "Programs rejected with diagnostics", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
