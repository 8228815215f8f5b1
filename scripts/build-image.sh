#!/usr/bin/env bash
# Build (and with --push, push) the deepmoney image, tagged with the package version: the tag that
# `deepmoney launch`, `serve render` and the pipeline's components name. Never :latest.
#   scripts/build-image.sh [--push] [--repository REGISTRY/NAME] [extra docker build arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
repository="ghcr.io/deepmoney/deepmoney"
push=false
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=true ;;
    --repository) repository="$2"; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
[ -n "$version" ] || { echo "error: no version in pyproject.toml" >&2; exit 2; }
tag="$repository:${version//+/-}"
engine="${CONTAINER_ENGINE:-docker}"
command -v "$engine" >/dev/null || { echo "error: $engine not found; set CONTAINER_ENGINE (docker, podman)" >&2; exit 2; }
"$engine" build --build-arg "DEEPMONEY_VERSION=$version" --tag "$tag" ${args[@]+"${args[@]}"} .
if $push; then "$engine" push "$tag"; fi
echo "$tag"
