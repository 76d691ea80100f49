#!/usr/bin/env bash
# Install everything into ./.venv and run the main job on an embedded example spec.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SPEC="${NLHF_QUICKSTART_SPEC:-specs/quickstart.yaml}"  # the job the quickstart runs
BACKEND="${NLHF_QUICKSTART_BACKEND:-torch}"

bash scripts/install.sh --if-needed
# a re-run replaces the previous quickstart's outputs, unless --resume is given (docs/resume.md)
FRESH=(--overwrite)
for arg in "$@"; do
  case "$arg" in --resume | --overwrite) FRESH=() ;; esac
done
echo "quickstart: nlhf run $SPEC --backend $BACKEND ${FRESH[*]-} $*" >&2
.venv/bin/nlhf run "$SPEC" --backend "$BACKEND" ${FRESH[@]+"${FRESH[@]}"} "$@"
