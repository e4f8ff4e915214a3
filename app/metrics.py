"""Prometheus metrics, in a registry per app so several apps (tests) never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modules.batching import BatchStats
from modules.pool import MemoryRow

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
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
        self.batch_calls = Counter("nsx_module_batched_calls", "Calls that went through a module's forward",
                                   ["module"], registry=r)
        self.batches = Counter("nsx_module_batches", "Forward passes (batches) per module", ["module"], registry=r)
        self.batch_size = Histogram("nsx_module_batch_size", "Calls per forward pass", ["module"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_wait = Histogram("nsx_module_queue_wait_seconds", "Time a call waited for its batch", ["module"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("nsx_module_compute_seconds", "Forward pass time", ["module"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_cap = Gauge("nsx_module_batch_cap", "Where the module's queue is cut into batches now "
                               "(NSX_BATCH_ADAPT moves it to the size measured cheapest per item)", ["module"],
                               registry=r)
        self.program_errors = Counter("nsx_program_errors", "Programs rejected with diagnostics", registry=r)
        self.step_failures = Counter("nsx_step_failures", "Failed steps by module and reason: timeout, "
                                     "run_timeout, module, wrong_type, internal, unavailable", ["module", "reason"],
                                     registry=r)
        self.http_errors = Counter("nsx_http_errors", "Error answers by status and kind (the error model's class)",
                                   ["status", "kind"], registry=r)
        self.loop_lag = Histogram("nsx_event_loop_lag_seconds", "How late the event loop woke a 20 ms timer: "
                                  "time it was kept from answering requests", buckets=LAG_BUCKETS, registry=r)
        self._step_counters: dict[tuple[str, str], tuple[Counter, ...]] = {}

    def observe_batch(self, stats: BatchStats) -> None:
        """Average batch size is nsx_module_batched_calls_total ÷ nsx_module_batches_total."""
        self.batch_calls.labels(stats.module).inc(stats.size)
        self.batches.labels(stats.module).inc()
        self.batch_size.labels(stats.module).observe(stats.size)
        for wait in stats.queue_wait_s:
            self.queue_wait.labels(stats.module).observe(wait)
        self.compute.labels(stats.module).observe(stats.compute_s)
        self.batch_cap.labels(stats.module).set(stats.cap)

    def watch_memory(self, report: Callable[[], list[MemoryRow]]) -> None:
        """Module memory read from ``report`` (``Pool.memory``) at every scrape: loads and unloads happen
        between scrapes, and a gauge set at those moments could be left stale by a missed event."""
        self.registry.register(_ModuleMemory(report))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def on_store_event(self, event: str) -> None:
        if event == "error":
            self.store_errors.inc()

    def on_cache(self, module: str, outcome: str) -> None:
        """A step's cache outcome (hit, miss, off) or "error" when it failed."""
        counters = self._step_counters.get((module, outcome))
        if counters is None:
            # Looking a labelled child up costs more than counting: once per module and outcome.
            if outcome == "error":
                counters = (self.module_errors.labels(module),)
            elif outcome == "miss":
                counters = (self.step_cache.labels(module, outcome), self.module_calls.labels(module))
            else:
                counters = (self.step_cache.labels(module, outcome),)
            self._step_counters[(module, outcome)] = counters
        for counter in counters:
            counter.inc()


class _ModuleMemory(Collector):
    def __init__(self, report: Callable[[], list[MemoryRow]]) -> None:
        self.report = report

    def describe(self) -> Iterator[Metric]:
        # Names up front, so the registry refuses a clash with another metric at registration.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.report())

    @staticmethod
    def _families(rows: list[MemoryRow] | None = None) -> Iterator[Metric]:
        memory = GaugeMetricFamily("nsx_module_memory_bytes", "Bytes a module's weights take on its device now "
                                   "(0 when unloaded); modules sharing one model each show all of it",
                                   labels=["module", "device"])
        unloads = CounterMetricFamily("nsx_module_unloads", "Times a module was unloaded to fit a device's "
                                      "memory budget", labels=["module", "device"])
        for row in rows or []:
            memory.add_metric([row.module, row.device], row.bytes)
            unloads.add_metric([row.module, row.device], row.unloads)
        yield memory
        yield unloads
