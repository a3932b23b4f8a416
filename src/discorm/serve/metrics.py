"""The reward server's Prometheus series, kept in one ``CollectorRegistry`` per app (``GET /metrics``).

``discorm_requests_total{route,status}`` and ``discorm_request_seconds{route}`` (a summary) cover every response,
refusals and server errors included (:class:`RequestMetrics`); ``discorm_batches_total``,
``discorm_batch_retries_total``, ``discorm_items_scored_total`` and ``discorm_item_failures_total`` count the
micro-batcher's work; ``discorm_queue_depth`` is the items queued or being scored.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary


class ServerMetrics:
    """The series of one app, in a registry of its own (several apps in one process do not collide). Counters are
    thread-safe: the scoring thread updates them too."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("discorm_requests", "HTTP requests by route and status.", ["route", "status"],
                                registry=registry)
        self.seconds = Summary("discorm_request_seconds", "Time spent answering requests, by route.", ["route"],
                               registry=registry)
        self.batches = Counter("discorm_batches", "Micro-batches scored.", registry=registry)
        self.batch_retries = Counter("discorm_batch_retries", "Micro-batches that failed and were retried item by "
                                     "item.", registry=registry)
        self.items_scored = Counter("discorm_items_scored", "Items (sequences) scored successfully.",
                                    registry=registry)
        self.item_failures = Counter("discorm_item_failures", "Items that could not be scored, even alone.",
                                     registry=registry)
        self.queue_depth = Gauge("discorm_queue_depth", "Items queued or being scored.", registry=registry)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP response by route (the matched route's path, ``unmatched``
    for none) and status; a request whose handler raised is counted as the 500 it is answered."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.seconds.labels(route).observe(time.perf_counter() - start)
