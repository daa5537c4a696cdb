"""Prometheus metrics of the service, under the names LiveKit's ingress uses.

Dashboards built for the reference service keep working; metrics of our own carry
the `ingress_relay_` prefix.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGRESS_REQUESTS = Counter(
    "livekit_ingress_requests", "Ingest sessions requested", ["type", "transcoding"]
)
PUBLISH_STATUS = Counter(
    "livekit_ingress_publish_status", "Ingest sessions by final status", ["type", "status"]
)
NODE_CPU_LOAD = Gauge("livekit_node_cpu_load", "Fraction of the node's CPU in use (0..1)")
AVAILABLE = Gauge("livekit_ingress_available", "1 while this node accepts new sessions")

API_REQUESTS = Counter(
    "ingress_relay_api_requests", "Twirp API calls by method and result code", ["method", "code"]
)
API_LATENCY = Histogram(
    "ingress_relay_api_latency_seconds", "Twirp API call latency", ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
LOOP_LAG = Histogram(
    "ingress_relay_event_loop_lag_seconds",
    "How late the service's event loop ran a 20 ms timer (a stall holds every connection)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOOP_LAG_WORST = Gauge(
    "ingress_relay_event_loop_lag_worst_seconds",
    "The worst event-loop lag of the last 10 s",
)
