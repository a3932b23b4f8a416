"""Request and error counters of the reward server, exposed at ``GET /metrics`` in the Prometheus text format
(version 0.0.4: ``# HELP`` / ``# TYPE`` lines, then one ``name{labels} value`` line per series)."""

from __future__ import annotations

import threading
from collections import Counter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_COUNTERS = {
    "batches": "Micro-batches scored.",
    "batch_retries": "Micro-batches that failed and were retried item by item.",
    "items_scored": "Items (sequences) scored successfully.",
    "item_failures": "Items that could not be scored, even alone.",
}


class ServerMetrics:
    """Counters updated from the event loop and the scoring thread (hence the lock)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: Counter = Counter()
        self._requests: Counter = Counter()  # (route, status) -> count
        self._seconds: Counter = Counter()  # route -> total seconds

    def count(self, name: str, value: int = 1) -> None:
        with self._lock:
            self._counters[name] += value

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, status)] += 1
            self._seconds[route] += seconds

    def value(self, name: str) -> int:
        return self._counters[name]

    def requests(self, route: str, status: int) -> int:
        return self._requests[(route, status)]

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges`` maps name -> (help, current value)."""
        with self._lock:
            lines = ["# HELP discorm_requests_total HTTP requests by route and status.",
                     "# TYPE discorm_requests_total counter"]
            lines += [f'discorm_requests_total{{route="{route}",status="{status}"}} {n}'
                      for (route, status), n in sorted(self._requests.items())]
            lines += ["# HELP discorm_request_seconds Time spent answering requests, by route.",
                      "# TYPE discorm_request_seconds summary"]
            for route, total in sorted(self._seconds.items()):
                count = sum(n for (r, _), n in self._requests.items() if r == route)
                lines += [f'discorm_request_seconds_sum{{route="{route}"}} {total:.6f}',
                          f'discorm_request_seconds_count{{route="{route}"}} {count}']
            for name, help_text in _COUNTERS.items():
                lines += [f"# HELP discorm_{name}_total {help_text}", f"# TYPE discorm_{name}_total counter",
                          f"discorm_{name}_total {self._counters[name]}"]
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP discorm_{name} {help_text}", f"# TYPE discorm_{name} gauge", f"discorm_{name} {value}"]
        return "\n".join(lines) + "\n"
