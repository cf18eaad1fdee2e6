#!/usr/bin/env bash
# The whole test suite: lint, types, generated-file drift, unit, integration and
# workload tests (the image entrypoints as real processes on tiny models).
# The integration tests bring the local control plane up (or reuse a running one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
. .venv/bin/activate

echo "== ruff"
ruff check operator images/runtime tests bench
ruff format --check operator images/runtime tests bench
echo "== mypy --strict"; mypy
echo "== generated files"; modelsmith crds --check
echo "== pytest"
# pytest exits 5 when it collected nothing; set -e turns that into a failure too.
python -m pytest --durations=25 "$@"
