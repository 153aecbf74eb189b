#!/usr/bin/env bash
# Installs the pinned Helm v3 into ~/.cache/stockflow/bin/helm, which processor/tests/helm.rs
# runs (`helm lint`, `helm template` on deploy/helm/stockflow). Helm is built from the Go module
# proxy with `go install`, so only a Go toolchain is needed. Idempotent: does nothing when that
# version is already there; quiet on success.
set -euo pipefail

HELM_VERSION="v3.22.0"
# The Kubernetes minor version Helm v3.22.0 is built against (its go.mod: k8s.io/client-go v0.37).
K8S_MINOR=37
BIN_DIR="${STOCKFLOW_HOME:-$HOME/.cache/stockflow}/bin"
HELM="$BIN_DIR/helm"

fail() { printf 'install-helm: %s\n' "$*" >&2; exit 1; }

# `helm version --template` prints just the version, e.g. v3.22.0.
if [[ -x "$HELM" && "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
  exit 0
fi

GO="$(command -v go || true)"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "$GO" ]] || fail "go not found; install Go 1.26 or newer (https://go.dev/dl/) to build Helm $HELM_VERSION"

mkdir -p "$BIN_DIR"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The same link flags as Helm's Makefile: without them `helm version` says only "v3.22", and
# lint and template assume Kubernetes 1.20 instead of the client-go release Helm is built with
# (k8s.io/client-go v0.37 is Kubernetes 1.37). Building from source takes several minutes on two
# cores the first time; Go's build cache makes later builds quick.
ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$K8S_MINOR"
done
if ! GOBIN="$BIN_DIR" CGO_ENABLED=0 "$GO" install -trimpath -ldflags "$ldflags" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >"$log" 2>&1; then
  fail "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed: $(tail -n 1 "$log")"
fi
installed="$("$HELM" version --template '{{.Version}}' 2>/dev/null || true)"
[[ "$installed" == "$HELM_VERSION" ]] || fail "built $HELM but it reports version '$installed', not $HELM_VERSION"
