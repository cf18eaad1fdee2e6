"""Tell the operator how far the run is, so `kubectl get` shows step, total and ETA.

Posts to the operator's status endpoint (MODELSMITH_STATUS_URL) with the pod's
projected token (MODELSMITH_STATUS_TOKEN_FILE). Reporting is best effort: a run never
fails or waits because the operator is away, and reports are rate-limited.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class ProgressReporter:
    def __init__(self, min_interval: float = 15.0) -> None:
        self.url = os.environ.get("MODELSMITH_STATUS_URL")
        self.token_file = os.environ.get("MODELSMITH_STATUS_TOKEN_FILE")
        self.min_interval = min_interval
        self._last = float("-inf")

    def report(self, step: int, total: int | None, *, force: bool = False) -> bool:
        """Send one report unless one went out less than ``min_interval`` ago."""
        if not self.url or not self.token_file:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        self._last = now
        try:
            token = Path(self.token_file).read_text().strip()  # kubelet rotates it
            request = urllib.request.Request(  # noqa: S310 (the operator's own URL)
                f"{self.url.rstrip('/')}/v1/progress",
                data=json.dumps({"step": step, "total": total}).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=5):  # noqa: S310
                return True
        except (OSError, urllib.error.URLError) as exc:
            log.warning("progress report to %s failed: %s", self.url, exc)
            return False
