#!/usr/bin/env bash
# Renders deploy/k8s and validates every resource against a Kubernetes schema, offline
# (kubernetes-validate bundles its schemas), then checks the cross-references a schema cannot see
# (check.py), all in a throwaway venv. `.ci/run` runs it.
#
#   deploy/k8s/validate.sh [KUBERNETES_VERSION]     # default 1.31.0
#   RLHF_BINARY=target/release/rlhf validate.sh     # also `rlhf learner --check` the ConfigMap's config
#
# With kubectl, `kubectl kustomize` renders; without it, the resources kustomization.yaml lists
# are joined and given its namespace (all this kustomization does besides the image name).
set -euo pipefail
cd "$(dirname "$0")"
version="${1:-1.31.0}"
venv="${RLHF_VALIDATE_VENV:-${TMPDIR:-/tmp}/rlhf-k8s-validate}"
[ -x "$venv/bin/kubernetes-validate" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate==1.31.0; }
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize . >"$rendered"
else
    "$venv/bin/python" - >"$rendered" <<'EOF'
import yaml
k = yaml.safe_load(open("kustomization.yaml"))
docs = [d for path in k["resources"] for d in yaml.safe_load_all(open(path)) if d]
for d in docs:
    if d["kind"] != "Namespace":
        d["metadata"]["namespace"] = k["namespace"]
print(yaml.safe_dump_all(docs, sort_keys=False))
EOF
fi
"$venv/bin/kubernetes-validate" -k "$version" --strict --quiet "$rendered"
"$venv/bin/python" check.py "$rendered" ${RLHF_BINARY:+"$RLHF_BINARY"}
