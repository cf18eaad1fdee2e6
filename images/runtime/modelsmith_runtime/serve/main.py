"""`modelsmith-runtime serve`: serve a model until SIGTERM, then drain and stop.

Cheap checks first (task config, spec, the model artifact, the key file): bad input
exits 2 before anything heavy is imported. Then KServe's ModelServer opens the port
at once, while the engine thread loads the model; readiness turns true when it has.
On SIGTERM uvicorn stops accepting connections, waits up to GRACE_PERIOD_S for the
requests in flight (streams included) to finish, and returns; the engine then
finishes what it still holds and the process exits 0 with a Result that counts what
was served. A model that fails to load stops the server the same way and its error
decides the exit code (2 for a model that is not one, 1 otherwise).
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
import warnings
from pathlib import Path

from modelsmith.contract import Result
from modelsmith_runtime.serve.settings import Settings, load_settings

log = logging.getLogger(__name__)

GRACE_PERIOD_S = 25
"""Below the pod's default terminationGracePeriodSeconds (30), so the Result is written."""
ENGINE_STOP_S = 10.0


class KServeLogFilter(logging.Filter):
    """KServe logs every error answer as "Exception:" with exc_info, which the JSON
    log line leaves out: keep the answers that are expected while the model loads
    (503 not ready) out of the log, and put the traceback of the others in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kserve.errors import ModelNotReady, ServerNotReady

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ModelNotReady | ServerNotReady):
            return False
        if record.exc_info:
            trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.msg, record.args, record.exc_info = f"{record.getMessage()} {trace}", (), None
        return True


def _stop_self(_error: BaseException) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def run(task_config: Path) -> Result:
    settings = load_settings(task_config)
    return serve(settings)


def serve(settings: Settings) -> Result:
    # KServe configures logging its own way unless its logger already has a handler;
    # with one that does nothing, its records reach our JSON root handler instead.
    logging.getLogger("kserve").addHandler(logging.NullHandler())
    logging.getLogger("kserve").addFilter(KServeLogFilter())
    # Two lines of timings per request from KServe's TimingMiddleware: noise at INFO.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    # KServe 0.21 still uses ORJSONResponse, which FastAPI deprecates on every request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    import kserve.model_server
    from kserve import ModelServer

    from modelsmith_runtime.serve import openai
    from modelsmith_runtime.serve.engine import Engine
    from modelsmith_runtime.serve.guard import Guard
    from modelsmith_runtime.serve.metrics import ServeMetrics
    from modelsmith_runtime.serve.model import GenerativeModel, ReadinessDataPlane
    from modelsmith_runtime.serve.service import Service
    from modelsmith_runtime.serve.text import Blocklist

    metrics = ServeMetrics(settings.served_name, settings.revision)
    engine = Engine(
        settings.model_dir,
        metrics,
        max_batch_size=settings.batching.max_batch_size,
        max_wait_ms=settings.batching.max_wait_ms,
        blocklist=Blocklist.of(settings.blocklist),
        on_fatal=_stop_self,
    )
    service = Service(settings, engine, metrics)
    app = kserve.model_server.app  # the app KServe's REST server serves
    openai.register(app, service)
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    server = ModelServer(
        http_port=settings.port,
        enable_grpc=False,
        enable_latency_logging=False,
        grace_period=GRACE_PERIOD_S,
    )
    server.dataplane = ReadinessDataPlane(model_registry=server.registered_models)
    server.register_model(GenerativeModel(service))
    engine.start()
    log.info(
        "serving %s from %s on port %d (revision %s)",
        settings.served_name,
        settings.model_uri,
        settings.port,
        settings.revision,
    )
    server.start([])  # returns after SIGTERM, once in-flight requests are done
    engine.stop(ENGINE_STOP_S)
    if engine.load_error is not None:
        raise engine.load_error
    log.info("stopped after %s", engine.served)
    return Result(
        uri=settings.model_uri,
        metrics={name: float(value) for name, value in engine.served.items()},
    )
