#!/usr/bin/env bash
# Install checkov (the Kubernetes manifest scanner of tests/test_checkov.py) into a virtual environment of its own.
#   scripts/install-checkov.sh [DIR]     (default: .venv/tools/checkov, or $DEEPMONEY_VENV/tools/checkov,
#                                         linked as .venv/bin/checkov)
# Not in the project's environment: checkov 3.3 pins boto3==1.35.49, packaging<24, networkx<2.7,
# importlib-metadata<8 and cachetools<6, so beside deepmoney's dependencies pip would either break pytest
# (packaging>=24) or hold boto3, torch's networkx and the rest at 2021-2024 releases in the environment the
# tests run in. Pinned exactly: checkov adds checks in patch releases, and a new check must come with a
# deliberate bump here, not with a fresh CI machine. Already installed (same version): nothing is done.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEEPMONEY_VENV:-.venv}"
target="${1:-$venv/tools/checkov}"
version="3.3.30"
python="$venv/bin/python"
[ -x "$python" ] || python="${PYTHON:-python3}"

installed="$("$target/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true)"
if [ "$installed" != "$version" ]; then
  [ -x "$target/bin/python" ] || "$python" -m venv "$target"
  "$target/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$version"
  echo "install-checkov: checkov $version in $target" >&2
else
  echo "install-checkov: checkov $version already in $target" >&2
fi
if [ -z "${1:-}" ]; then
  ln -sfn "$(cd "$target" && pwd)/bin/checkov" "$venv/bin/checkov"
fi
