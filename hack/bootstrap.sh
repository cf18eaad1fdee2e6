#!/usr/bin/env bash
# Make this checkout ready to run: a virtualenv with the operator and dev tools, and the
# local control plane's binaries. Idempotent and cheap when nothing changed: pip wheels
# and Go builds are cached outside the repository (~/.cache/pip, ~/go/pkg/mod,
# ~/.cache/go-build, ~/.cache/modelsmith), so fresh clones reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.modelsmith-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
.venv/bin/modelsmith dev build
