"""The server's Prometheus metrics (prometheus_client), in a registry of their own so that several servers in one
process (tests) never share counters. The engine thread and the HTTP handlers both update them; prometheus_client's
metrics are thread-safe."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
                   5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ascend_requests", "Requests answered, by endpoint and outcome "
                                "(stop, length, cancelled, error, rejected)", ["endpoint", "outcome"], registry=r)
        self.prompt_tokens = Counter("ascend_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("ascend_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("ascend_time_to_first_token_seconds", "Arrival of a request to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("ascend_inter_token_latency_seconds", "Time between two tokens of one request",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("ascend_batch_occupancy", "Requests in the running batch (prefilling or decoding)",
                             registry=r)
        self.batch_size = Histogram("ascend_decode_batch_size", "Requests decoded together per engine step",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.waiting = Gauge("ascend_queue_length", "Requests waiting for a slot in the batch", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
