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
echo "== import layers"; lint-imports
echo "== generated files"; modelsmith crds --check
echo "== pytest"
# Two workers (tests/conftest.py says who runs what): the cluster tiers wait on pods and
# the API server while the workload tests use the CPU. MODELSMITH_TEST_WORKERS=0 runs
# everything in this one process (pdb, -s). pytest exits 5 when it collected nothing;
# set -e turns that into a failure too.
python -m pytest -n "${MODELSMITH_TEST_WORKERS:-2}" --dist loadgroup --durations=25 "$@"
