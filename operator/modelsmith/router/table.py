"""The route table in effect, compiled for the hot path, and its atomic replacement.

A request picks its revision once, from the table it found on arrival, and keeps the
`Route` object it got: a weight change swaps one reference on the event loop, so new
requests see it at once and in-flight ones finish where they started.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from modelsmith.router.metrics import RevisionSeries, RouterMetrics
from modelsmith.routes import RouteTable

log = logging.getLogger(__name__)

FORGET_AFTER_S = 600.0
"""A removed revision's series stay this long, so its last requests are still scraped."""


class Route:
    """One revision: where it is and the metric children its requests record into."""

    __slots__ = ("base", "name", "shadow", "user", "weight")

    def __init__(
        self, name: str, url: str, weight: int, user: RevisionSeries, shadow: RevisionSeries
    ) -> None:
        self.name = name
        self.base = url.rstrip("/")
        self.weight = weight
        self.user = user
        self.shadow = shadow


class LiveTable:
    """A validated `RouteTable` in the shape a request needs: one draw, one lookup."""

    def __init__(self, table: RouteTable, metrics: RouterMetrics) -> None:
        ns, svc = table.namespace, table.service
        self.table = table
        self.rendered = table.render().encode()
        self.pin_header = table.pin_header
        mirror = table.mirror
        mirrored = mirror.revision if mirror else None
        self.routes = tuple(
            Route(
                r.name,
                r.url,
                r.weight,
                RevisionSeries(metrics, (ns, svc, r.name), shadow=False, warm=True),
                RevisionSeries(metrics, (ns, svc, r.name), shadow=True, warm=r.name == mirrored),
            )
            for r in table.revisions
        )
        self.by_name = {r.name: r for r in self.routes}
        ladder: list[tuple[float, Route]] = []
        total = 0
        for route in self.routes:
            if route.weight:
                total += route.weight
                ladder.append((float(total), route))
        self._ladder = tuple(ladder)
        self._last = ladder[-1][1]
        self.mirror = self.by_name[mirror.revision] if mirror else None
        self.mirror_share = mirror.percent / 100.0 if mirror else 0.0
        self.mirror_dropped = (
            metrics.mirror_dropped.labels(ns, svc, mirror.revision) if mirror else None
        )

    def pick(self, draw: float) -> Route:
        """The revision for a uniform ``draw`` in [0, 100): P(route) = weight / 100."""
        for upper, route in self._ladder:
            if draw < upper:
                return route
        return self._last

    def describe(self) -> str:
        split = " ".join(f"{r.name}={r.weight}" for r in self.routes)
        if self.mirror is None:
            return split
        return f"{split}, mirror {round(self.mirror_share * 100)}% to {self.mirror.name}"


class TableHolder:
    """The one table in effect; sources hand it text, requests read `live`."""

    def __init__(self, metrics: RouterMetrics, source: str) -> None:
        self.metrics = metrics
        self.source = source
        self.live: LiveTable | None = None
        self._text: str | bytes | None = None
        self._text_ok = False

    def apply(self, text: str | bytes) -> bool:
        """Validate and swap in ``text``; an invalid table is logged and the old one kept."""
        if text == self._text:
            return self._text_ok
        try:
            table = RouteTable.model_validate_json(text)
        except ValidationError as exc:
            self.metrics.table_updates.labels("invalid").inc()
            kept = "keeping the last good table" if self.live else "no table loaded yet"
            log.error("invalid route table from %s (%s): %s", self.source, kept, exc)
            self._text, self._text_ok = text, False
            return False
        previous, self.live = self.live, LiveTable(table, self.metrics)
        self._text, self._text_ok = text, True
        self.metrics.table_updates.labels("applied").inc()
        log.info("routes from %s: %s", self.source, self.live.describe())
        if previous is not None:
            self._schedule_forget(previous)
        return True

    def _schedule_forget(self, previous: LiveTable) -> None:
        gone = [
            (previous.table.namespace, previous.table.service, name)
            for name in previous.by_name
            if not self._serves(previous.table.namespace, previous.table.service, name)
        ]
        if not gone:
            return
        loop = asyncio.get_running_loop()
        for key in gone:
            loop.call_later(FORGET_AFTER_S, self._forget, key)

    def _serves(self, namespace: str, service: str, revision: str) -> bool:
        live = self.live
        return (
            live is not None
            and live.table.namespace == namespace
            and live.table.service == service
            and revision in live.by_name
        )

    def _forget(self, key: tuple[str, str, str]) -> None:
        if not self._serves(*key):
            self.metrics.forget(*key)
