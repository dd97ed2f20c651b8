"""Request metrics in the Prometheus text exposition format (``GET /metrics``).

Owns in-process counters and a latency histogram, labelled by route kind, method and status
class; each ``--workers`` process counts its own requests (scrape them as one job).  No I/O.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters of requests, bytes and latencies since the process started."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)
        self.bytes_received: defaultdict[str, int] = defaultdict(int)
        self.buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(_BUCKETS) + 1))
        self.durations: defaultdict[str, float] = defaultdict(float)
        self.in_flight = 0

    def observe(self, *, route: str, method: str, status: int, seconds: float,
                sent: int, received: int) -> None:
        """Count one finished request."""
        self.requests[(route, method, str(status))] += 1
        self.bytes_sent[route] += sent
        self.bytes_received[route] += received
        self.buckets[route][bisect.bisect_left(_BUCKETS, seconds)] += 1
        self.durations[route] += seconds

    def render(self) -> str:
        """The metrics as Prometheus text (version 0.0.4)."""
        out = [
            "# HELP strata_registry_http_requests_total Requests answered, by route, method and status.",
            "# TYPE strata_registry_http_requests_total counter",
        ]
        for (route, method, status), count in sorted(self.requests.items()):
            out.append(
                f'strata_registry_http_requests_total{{route="{route}",method="{method}",'
                f'code="{status}"}} {count}'
            )
        out += [
            "# HELP strata_registry_http_response_bytes_total Body bytes sent, by route.",
            "# TYPE strata_registry_http_response_bytes_total counter",
        ]
        out += [f'strata_registry_http_response_bytes_total{{route="{r}"}} {n}'
                for r, n in sorted(self.bytes_sent.items())]
        out += [
            "# HELP strata_registry_http_request_bytes_total Body bytes received, by route.",
            "# TYPE strata_registry_http_request_bytes_total counter",
        ]
        out += [f'strata_registry_http_request_bytes_total{{route="{r}"}} {n}'
                for r, n in sorted(self.bytes_received.items())]
        out += [
            "# HELP strata_registry_http_request_duration_seconds Time to answer, by route.",
            "# TYPE strata_registry_http_request_duration_seconds histogram",
        ]
        for route, counts in sorted(self.buckets.items()):
            cumulative = 0
            for bound, count in zip((*_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(
                    f'strata_registry_http_request_duration_seconds_bucket{{route="{route}",le="{le}"}} '
                    f"{cumulative}"
                )
            out.append(f'strata_registry_http_request_duration_seconds_sum{{route="{route}"}} '
                       f"{self.durations[route]:.6f}")
            out.append(f'strata_registry_http_request_duration_seconds_count{{route="{route}"}} {cumulative}')
        out += [
            "# HELP strata_registry_http_requests_in_flight Requests being answered now.",
            "# TYPE strata_registry_http_requests_in_flight gauge",
            f"strata_registry_http_requests_in_flight {self.in_flight}",
            "# HELP strata_registry_start_time_seconds When this process started.",
            "# TYPE strata_registry_start_time_seconds gauge",
            f"strata_registry_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(out) + "\n"
