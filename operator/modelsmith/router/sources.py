"""Where the route table comes from: a file (tests, local runs) or one ConfigMap.

The ConfigMap is watched through the API rather than mounted, because a mounted volume
is refreshed by the kubelet's sync loop (up to a minute or more) while a watch event
arrives in well under a second. The watch runs on the official sync client in a daemon
thread; every table it reads is handed to the event loop, which alone swaps tables.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from modelsmith.router.table import TableHolder
from modelsmith.routes import ROUTES_KEY

log = logging.getLogger(__name__)

FILE_POLL_S = 0.15
WATCH_TIMEOUT_S = 60
"""Server-side end of each watch; it resumes from the last resourceVersion, so a
silently dead connection costs at most this long (plus the read timeout's margin)."""
BACKOFF_MAX_S = 30.0
HTTP_GONE = 410


async def watch_file(path: Path, holder: TableHolder, interval: float = FILE_POLL_S) -> None:
    """Re-read ``path`` every ``interval``; the holder ignores unchanged contents.

    Reading (not only stat-ing) every time means a table caught half-written is
    retried on the next poll even when the rewrite kept the same mtime and size.
    """
    missing = False
    while True:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if not missing:
                log.warning("routes file %s does not exist (yet)", path)
            missing = True
        except OSError as exc:
            log.warning("routes file %s unreadable: %s", path, exc)
        else:
            missing = False
            holder.apply(data)
        await asyncio.sleep(interval)


class ConfigMapSource:
    """List, then watch one ConfigMap (fieldSelector on its name); relist on 410 Gone."""

    def __init__(
        self, namespace: str, name: str, holder: TableHolder, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.namespace = namespace
        self.name = name
        self._holder = holder
        self._loop = loop
        self._stopping = threading.Event()
        self._listed = False
        self._thread = threading.Thread(
            target=self._run, name=f"configmap-{namespace}-{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; being a daemon, it never delays the process's exit."""
        self._stopping.set()

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        from modelsmith.kubeconfig import load_config

        backoff = 1.0
        while not self._stopping.is_set():
            try:
                load_config()
                self._list_and_watch()
            except ApiException as exc:
                if exc.status == HTTP_GONE:
                    log.info("watch of configmap %s/%s expired; relisting", *self._ref())
                    continue
                log.error("configmap %s/%s: API error %s %s", *self._ref(), exc.status, exc.reason)
            except Exception:
                log.exception("configmap %s/%s: watch failed", *self._ref())
            if self._listed:  # it had worked: this is a new failure, not a run of them
                backoff, self._listed = 1.0, False
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _ref(self) -> tuple[str, str]:
        return self.namespace, self.name

    def _list_and_watch(self) -> None:
        from kubernetes import client, watch

        api = client.CoreV1Api()
        selector = f"metadata.name={self.name}"
        listing = api.list_namespaced_config_map(
            self.namespace, field_selector=selector, _request_timeout=30
        )
        items = listing.items or []
        if items:
            self._deliver(items[0].data or {})
        else:
            log.warning("configmap %s/%s does not exist (yet)", *self._ref())
        version = listing.metadata.resource_version if listing.metadata else None
        self._listed = True
        while not self._stopping.is_set():
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                api.list_namespaced_config_map,
                self.namespace,
                field_selector=selector,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_S,
                _request_timeout=(10, WATCH_TIMEOUT_S + 15),
            )
            for event in stream:
                raw: dict[str, Any] = event["raw_object"]
                version = raw.get("metadata", {}).get("resourceVersion", version)
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._deliver(raw.get("data") or {})
                elif event["type"] == "DELETED":
                    log.warning("configmap %s/%s deleted; keeping the table", *self._ref())
                if self._stopping.is_set():
                    return

    def _deliver(self, data: dict[str, str]) -> None:
        text = data.get(ROUTES_KEY)
        if text is None:
            log.error("configmap %s/%s has no key %r", *self._ref(), ROUTES_KEY)
            return
        self._loop.call_soon_threadsafe(self._holder.apply, text)
