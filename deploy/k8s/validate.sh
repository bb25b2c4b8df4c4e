#!/usr/bin/env bash
# Renders deploy/k8s with kustomize and validates every resource against a recent Kubernetes
# schema, offline (kubernetes-validate bundles its schemas), in a throwaway venv.
#
#   deploy/k8s/validate.sh [KUBERNETES_VERSION]     # default 1.31.0
set -euo pipefail
cd "$(dirname "$0")"
version="${1:-1.31.0}"
venv="${RLHF_VALIDATE_VENV:-${TMPDIR:-/tmp}/rlhf-k8s-validate}"
[ -x "$venv/bin/kubernetes-validate" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate; }
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
kubectl kustomize . >"$rendered"
"$venv/bin/kubernetes-validate" -k "$version" --strict "$rendered"
