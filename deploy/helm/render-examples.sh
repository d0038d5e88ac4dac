#!/usr/bin/env bash
# Render the chart with its default values and with each examples/<name>.yaml into
# examples/rendered/<name>.yaml (default values: examples/rendered/default.yaml). The output is
# committed so that reviewers see manifest changes in diffs; tests/deploy fails when it drifts.
#
# Usage: deploy/helm/render-examples.sh [OUTPUT_DIR]   (default: deploy/helm/tailor/examples/rendered)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CHART="$HERE/tailor"
HELM="${HELM:-$ROOT/tools/bin/helm}"
OUT="${1:-$CHART/examples/rendered}"

# Fixed release, namespace and Kubernetes version: the output must not depend on the machine.
RELEASE=tailor
NAMESPACE=tailor
KUBE_VERSION=1.30.0

if [[ ! -x "$HELM" ]]; then
  "$HERE/install-helm.sh" >&2
fi

mkdir -p "$OUT"
if [[ "$(cd "$OUT" && pwd)" == "$CHART/examples" ]]; then
  echo "error: $OUT holds the example values; render into examples/rendered" >&2
  exit 1
fi
rm -f "$OUT"/*.yaml

render() {
  local name="$1"
  shift
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@" \
    > "$OUT/$name.yaml"
  echo "rendered $OUT/$name.yaml"
}

render default
for example in "$CHART"/examples/*.yaml; do
  render "$(basename "$example" .yaml)" --values "$example"
done
