"""Run a reconcile again after a delay, in this process, once per resource.

kopf's own retry (TemporaryError) only re-runs the handler that raised, and the paths
that wake a waiting resource (its upstream finishing, its Job changing) are other
resources' handlers; kopf's timers would put a finalizer on every object. A claim or
Secret the user has yet to create sends no event the operator may watch, so the
resource asks again itself. A restart loses the timers, and kopf's resume handler
reconciles every resource anyway.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable


class Later:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}

    def call(self, key: str, delay: float, fn: Callable[[], object]) -> None:
        """Run ``fn`` in ``delay`` seconds; a later call for the same key replaces it.

        The caller's context goes along: kopf's per-handler context (its logging) is there.
        """
        context = contextvars.copy_context()
        timer = threading.Timer(delay, context.run, (self._fire, key, fn))
        timer.daemon = True
        with self._lock:
            previous = self._timers.pop(key, None)
            self._timers[key] = timer
        if previous is not None:
            previous.cancel()
        timer.start()

    def _fire(self, key: str, fn: Callable[[], object]) -> None:
        with self._lock:
            if self._timers.get(key) is threading.current_thread():
                del self._timers[key]
        fn()

    def cancel(self, key: str) -> None:
        with self._lock:
            timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._timers)


LATER = Later()
