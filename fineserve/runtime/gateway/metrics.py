"""Prometheus series of the gateway, one private registry per gateway.

Per model: TTFT, TPOT and end-to-end histograms, SLO attainment, queue length, requests in
flight, admitted / rejected / expired counts by reason, upstream errors. Per engine: in-flight
limit, in flight, queued, healthy. Gauges that mirror scheduler state are read when scraped
(``set_function``), so the request path only pays for histograms and counters, and label
children are resolved once, at start-up, never per request.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "fineserve_gateway"
# log-spaced from 1 ms to 60 s: TTFT spans prefill of short and long prompts under load
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                0.2, 0.3, 0.5, 1.0, 2.0)
E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
               60.0, 120.0, 300.0)


class ModelSeries:
    """Label children of one model, resolved once (``labels()`` is too slow per request)."""

    __slots__ = ("name", "ttft", "tpot", "e2e", "admitted", "_finished", "_slo_met",
                 "n_finished", "n_met", "_rejected", "_expired", "_errors", "_parent")

    def __init__(self, parent: GatewayMetrics, model: str) -> None:
        self.name = model
        self._parent = parent
        self.ttft = parent.ttft.labels(model)
        self.tpot = parent.tpot.labels(model)
        self.e2e = parent.e2e.labels(model)
        self.admitted = parent.admitted.labels(model)
        self._finished = parent.finished.labels(model)
        self._slo_met = parent.slo_met.labels(model)
        self.n_finished = 0
        self.n_met = 0
        self._rejected: dict[str, Counter] = {}
        self._expired: dict[str, Counter] = {}
        self._errors: dict[tuple[str, str], Counter] = {}
        parent.attainment.labels(model).set_function(
            lambda: self.n_met / self.n_finished if self.n_finished else 1.0)

    def finish(self, met_slo: bool) -> None:
        """A dispatched request got its whole answer (status 200)."""
        self.n_finished += 1
        self._finished.inc()
        if met_slo:
            self.n_met += 1
            self._slo_met.inc()

    def rejected(self, reason: str) -> Counter:
        c = self._rejected.get(reason)
        if c is None:
            c = self._rejected[reason] = self._parent.rejected.labels(self.name, reason)
        return c

    def expired(self, reason: str) -> Counter:
        c = self._expired.get(reason)
        if c is None:
            c = self._expired[reason] = self._parent.expired.labels(self.name, reason)
        return c

    def upstream_error(self, engine: str, kind: str) -> Counter:
        c = self._errors.get((engine, kind))
        if c is None:
            c = self._errors[engine, kind] = self._parent.upstream_errors.labels(
                self.name, engine, kind)
        return c


class GatewayMetrics:
    """All series; ``model(name)`` gives the per-model children."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        p = PREFIX
        self.ttft = Histogram(f"{p}_ttft_seconds", "Time to first token (streamed requests)",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram(f"{p}_tpot_seconds", "Mean time per output token after the first",
                              ["model"], buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram(f"{p}_e2e_seconds", "Arrival to last byte", ["model"],
                             buckets=E2E_BUCKETS, registry=r)
        self.admitted = Counter(f"{p}_admitted", "Requests dispatched to an engine",
                                ["model"], registry=r)
        self.rejected = Counter(f"{p}_rejected", "Requests answered 429/503 at arrival",
                                ["model", "reason"], registry=r)
        self.expired = Counter(f"{p}_expired", "Queued requests rejected at their deadline",
                               ["model", "reason"], registry=r)
        self.finished = Counter(f"{p}_finished", "Dispatched requests answered with 200",
                                ["model"], registry=r)
        self.slo_met = Counter(f"{p}_slo_met", "Finished requests meeting TTFT and TPOT SLOs",
                               ["model"], registry=r)
        self.attainment = Gauge(f"{p}_slo_attainment", "slo_met / finished (1 before traffic)",
                                ["model"], registry=r)
        self.upstream_errors = Counter(f"{p}_upstream_errors", "Failed engine requests",
                                       ["model", "engine", "kind"], registry=r)
        self.queue = Gauge(f"{p}_queue_length", "Requests waiting in the local schedulers",
                           ["model"], registry=r)
        self.in_flight = Gauge(f"{p}_in_flight", "Requests dispatched and not finished",
                               ["model"], registry=r)
        self.engine_limit = Gauge(f"{p}_engine_inflight_limit", "Scheduler in-flight limit",
                                  ["engine", "model"], registry=r)
        self.engine_in_flight = Gauge(f"{p}_engine_in_flight", "Requests on the engine",
                                      ["engine", "model"], registry=r)
        self.engine_queue = Gauge(f"{p}_engine_queue_length", "Requests queued for the engine",
                                  ["engine", "model"], registry=r)
        self.engine_healthy = Gauge(f"{p}_engine_healthy", "1 when the engine answers",
                                    ["engine", "model"], registry=r)
        self._models: dict[str, ModelSeries] = {}

    def model(self, name: str) -> ModelSeries:
        s = self._models.get(name)
        if s is None:
            s = self._models[name] = ModelSeries(self, name)
        return s

    def watch_model(self, model: str, queued: Callable[[], float],
                    in_flight: Callable[[], float]) -> None:
        self.queue.labels(model).set_function(queued)
        self.in_flight.labels(model).set_function(in_flight)

    def watch_engine(self, engine: str, model: str, limit: Callable[[], float],
                     in_flight: Callable[[], float], queued: Callable[[], float],
                     healthy: Callable[[], float]) -> None:
        self.engine_limit.labels(engine, model).set_function(limit)
        self.engine_in_flight.labels(engine, model).set_function(in_flight)
        self.engine_queue.labels(engine, model).set_function(queued)
        self.engine_healthy.labels(engine, model).set_function(healthy)

    def render(self) -> bytes:
        return generate_latest(self.registry)
