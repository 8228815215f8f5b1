#!/usr/bin/env bash
# Install deepmoney into a virtual environment (.venv, or $DEEPMONEY_VENV).
#   scripts/install.sh         the package and its core dependencies (data, synthesis, evaluation, registry)
#   scripts/install.sh train   ... plus training (DeepSpeed, peft)
#   scripts/install.sh quickstart   ... training, serving and the KFP SDK: what `deepmoney quickstart` needs
#   scripts/install.sh dev     ... plus training and the test tools (pytest, moto, ruff, import-linter, helm, kubectl,
#                              checkov in a venv of its own)
#   scripts/install.sh train,serve   several extras at once
# On a machine without an NVIDIA GPU it installs the CPU build of torch first, so that pip does not
# pull a multi-GB CUDA build; on a GPU machine it keeps (or installs) the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEEPMONEY_VENV:-.venv}"
extras="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

tools=""
case ",$extras," in
  *,dev,*)  # the test tools install beside the package (their own downloads, their own venv): in parallel
    { scripts/install-k8s-tools.sh "$venv/bin" && scripts/install-checkov.sh; } &
    tools=$! ;;
esac

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found; installing the default (CUDA) torch" >&2
    "${pip[@]}" "torch>=2.4"
  else
    echo "install: no GPU; installing the CPU build torch==2.13.0" >&2
    "${pip[@]}" "torch==2.13.0"
  fi
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
"${pip[@]}" -e "$target"
# helm and kubectl for the chart and manifest tests; checkov for tests/test_checkov.py in a venv of its own
# (its pins clash with the project's)
if [ -n "$tools" ] && ! wait "$tools"; then
  echo "install: the test tools (helm, kubectl, checkov) failed to install; see above" >&2
  exit 1
fi
echo "install: done ($venv)" >&2
