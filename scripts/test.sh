#!/usr/bin/env bash
# Run the test suite: installs into ./.venv first when needed (fast no-op when up to
# date), then `python -m pytest "$@"` in one pytest-xdist worker per CPU (NLHF_TEST_WORKERS
# overrides, 0 runs in this process), test files whole on one worker (`--dist loadfile`,
# so a module's fixtures are built once). Examples:
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m "not slow"   # skip end-to-end runs
#   bash scripts/test.sh packages/nlhf-core/tests -q
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh --if-needed
exec .venv/bin/python -m pytest -n "${NLHF_TEST_WORKERS:-auto}" --dist loadfile "$@"
