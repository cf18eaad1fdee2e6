"""The server's Prometheus metrics, named as vLLM names them.

Dashboards, HPAs (on `vllm:num_requests_waiting`) and canary queries written for vLLM
then read the built-in runtime unchanged: the same names, the same `model_name` label,
the same bucket edges. They live in prometheus-client's default registry because that
is the one KServe's ModelServer serves on its own port at /metrics, next to KServe's
request_*_seconds histograms. A few series vLLM has no name for carry a `modelsmith:`
prefix (batch size, server info with the revision), and the HTTP counter takes the
name prometheus-fastapi-instrumentator gives it in vLLM, with the full status code
(vLLM's groups them as 2xx/4xx/5xx; `status=~"5.."` matches both).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
HTTP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_M = ("model_name",)


class ServeMetrics:
    """Every series of one served model; created once per process (one registry)."""

    def __init__(self, model_name: str, revision: str) -> None:
        self.model_name = model_name
        name = {"model_name": model_name}
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token of a request.",
            _M,
            buckets=E2E_BUCKETS,
        ).labels(**name)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first generated token.",
            _M,
            buckets=TTFT_BUCKETS,
        ).labels(**name)
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Time between consecutive output tokens of a request.",
            _M,
            buckets=TPOT_BUCKETS,
        ).labels(**name)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens prefilled.", _M).labels(
            **name
        )
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", _M).labels(
            **name
        )
        self.running = Gauge(
            "vllm:num_requests_running", "Requests in the running batch.", _M
        ).labels(**name)
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Requests queued for the engine (queue depth).", _M
        ).labels(**name)
        self.in_flight = Gauge(
            "modelsmith:requests_in_flight",
            "Generation requests admitted by the HTTP layer and not yet answered "
            "(what limits.maxConcurrentRequests bounds and autoscaling.targetConcurrency aims at).",
            _M,
        ).labels(**name)
        self.iteration_tokens = Histogram(
            "vllm:iteration_tokens_total",
            "Tokens processed per engine step (prefill and decode).",
            _M,
            buckets=TOKEN_BUCKETS,
        ).labels(**name)
        self.batch_size = Histogram(
            "modelsmith:batch_size",
            "Sequences decoded together per engine step.",
            _M,
            buckets=BATCH_BUCKETS,
        ).labels(**name)
        self._success = Counter(
            "vllm:request_success",
            "Requests finished, by finish reason (stop, length, content_filter, abort).",
            (*_M, "finished_reason"),
        )
        self._errors = Counter(
            "modelsmith:request_errors",
            "Requests the engine failed, by reason (non_finite_logits, engine_error).",
            (*_M, "reason"),
        )
        self._http = Counter(
            "http_requests",
            "HTTP requests by handler, method and status code.",
            (*_M, "handler", "method", "status"),
        )
        self._http_seconds = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration (to the end of a streamed body).",
            (*_M, "handler", "method"),
            buckets=HTTP_BUCKETS,
        )
        Gauge(
            "modelsmith:server_info",
            "1, labelled with what this process serves.",
            (*_M, "revision", "runtime"),
        ).labels(model_name=model_name, revision=revision, runtime="builtin").set(1)

    def finished(self, reason: str) -> None:
        self._success.labels(model_name=self.model_name, finished_reason=reason).inc()

    def failed(self, reason: str) -> None:
        self._errors.labels(model_name=self.model_name, reason=reason).inc()

    def http(self, handler: str, method: str, status: int, seconds: float) -> None:
        labels = {"model_name": self.model_name, "handler": handler, "method": method}
        self._http.labels(**labels, status=str(status)).inc()
        self._http_seconds.labels(**labels).observe(seconds)
