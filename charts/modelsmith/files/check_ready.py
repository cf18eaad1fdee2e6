"""helm test: pass once the operator's /healthz answers 200, retrying while it starts."""

import os
import sys
import time
import urllib.error
import urllib.request

url = os.environ["HEALTH_URL"]
deadline = time.monotonic() + float(os.environ.get("HEALTH_TIMEOUT", "60"))
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (an in-cluster URL)
            print(f"{url}: {resp.status} {resp.read(500).decode(errors='replace')}")
            sys.exit(0)
    except (urllib.error.URLError, OSError) as exc:
        if time.monotonic() > deadline:
            print(f"{url}: not ready: {exc}", file=sys.stderr)
            sys.exit(1)
    time.sleep(2)
