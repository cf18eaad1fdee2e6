"""What this process remembers about objects between events, in one place.

The handlers skip work whose outcome they already know: children applied with the same
digest, a Job event that changes nothing the status shows, a pod stuck for the same
reason as last time. Each of those was a module-level dict with its own cleanup on a
DELETED event, and a missed cleanup is a leak that grows with every run ever seen. Here
every memo belongs to one ``Memory``, and one call forgets an object in all of them.
Threads share it (kopf's handler pool, the analysis clock, ``later``'s timers), so
every read-and-write is one locked step.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """One thing remembered per object, keyed by the object's uid."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._values: dict[str, V] = {}

    def get(self, uid: str) -> V | None:
        with self._lock:
            return self._values.get(uid)

    def put(self, uid: str, value: V) -> None:
        with self._lock:
            self._values[uid] = value

    def changed(self, uid: str, value: V) -> bool:
        """Remember ``value``; True unless it is what was remembered already."""
        with self._lock:
            if uid in self._values and self._values[uid] == value:
                return False
            self._values[uid] = value
            return True

    def forget(self, uid: str) -> None:
        with self._lock:
            self._values.pop(uid, None)

    def __contains__(self, uid: object) -> bool:
        with self._lock:
            return uid in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


class Memory:
    """Every memo of the process: made here, so none is left out of ``forget``."""

    def __init__(self) -> None:
        self._memos: list[Memo[Any]] = []

    def memo(self, name: str, _type: type[V]) -> Memo[V]:
        made: Memo[V] = Memo(name)
        self._memos.append(made)
        return made

    def forget(self, uid: str) -> None:
        """An object is gone: nothing about it stays in any memo."""
        for memo in self._memos:
            memo.forget(uid)

    def sizes(self) -> dict[str, int]:
        return {memo.name: len(memo) for memo in self._memos}


MEMORY = Memory()
