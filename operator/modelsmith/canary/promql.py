"""Instant PromQL queries for the canary analysis, answering the one question it asks:
a number, no number (empty or NaN), or no answer at all (Prometheus unreachable).

The last two must never be confused: "no data" is judged by a check's onEmpty, while
an unreachable Prometheus pauses the rollout. Anything but a well-formed success
answer (connection refused, timeout, 5xx, a query error) counts as unreachable: the
analysis cannot vouch for the canary, so it must not move.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

TIMEOUT_SECONDS = 5.0


class PrometheusUnavailableError(Exception):
    """The query got no usable answer; the message says why."""


def _number(result_type: str, result: Any) -> float | None:
    if result_type == "scalar":
        value = float(result[1])
    elif result_type == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusUnavailableError(
                f"the query returned {len(result)} series; a check needs one (aggregate it)"
            )
        value = float(result[0]["value"][1])
    else:
        raise PrometheusUnavailableError(f"unexpected result type {result_type}")
    return None if math.isnan(value) else value


def query(base_url: str, promql: str, *, timeout: float = TIMEOUT_SECONDS) -> float | None:
    """The query's single value now; None when empty or NaN."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (configured URL)
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise PrometheusUnavailableError(f"HTTP {exc.code} from {base_url}: {detail}") from exc
    except (OSError, ValueError) as exc:
        raise PrometheusUnavailableError(f"{base_url}: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusUnavailableError(f"{body.get('errorType')}: {body.get('error')}")
    data = body.get("data", {})
    return _number(str(data.get("resultType")), data.get("result"))


def sample_all(base_url: str, queries: Mapping[str, str]) -> dict[str, float | None] | None:
    """Every check's value by name, or None when any query got no usable answer."""
    try:
        return {name: query(base_url, text) for name, text in queries.items()}
    except PrometheusUnavailableError:
        return None
