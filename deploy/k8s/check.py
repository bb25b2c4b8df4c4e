"""Cross-references in rendered manifests that a schema cannot see; exits 1 naming each problem.

    python check.py RENDERED.yaml [RLHF_BINARY]

- every Service, Deployment and StatefulSet selector matches some pod template's labels;
- every ConfigMap, Secret and PersistentVolumeClaim a pod mounts is defined here (or is the
  operator's data claim `rlhf-data` or TLS Secret `rlhf-tls`);
- a StatefulSet's serviceName is a headless Service;
- every named targetPort and probe port exists on the pods behind it;
- every `--learner` / `--reward` address in a container's args names a Service and its port;
- with an rlhf binary, the learner's config in the ConfigMap passes `rlhf learner --check`.
"""

import subprocess
import sys
import tempfile

import yaml

EXTERNAL_CLAIMS = {"rlhf-data"}
# Made by the operator from their PKI (deploy/README.md): never committed.
EXTERNAL_SECRETS = {"rlhf-tls"}


def pods(docs):
    """(owner name, pod template) for every workload."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]


def main(rendered, binary=None):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    problems = []
    templates = list(pods(docs))

    def matching(selector):
        return [
            (name, t) for name, t in templates if selector.items() <= t["metadata"].get("labels", {}).items()
        ]

    for name, svc in by_kind.get("Service", {}).items():
        behind = matching(svc["spec"].get("selector", {}))
        if not behind:
            problems.append(f"Service {name}: its selector matches no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str):
                for owner, t in behind:
                    names = {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports", [])}
                    if target not in names:
                        problems.append(f"Service {name}: targetPort {target!r} is no port of {owner}'s pods")
    for kind in ("Deployment", "StatefulSet"):
        for name, d in by_kind.get(kind, {}).items():
            labels = d["spec"]["template"]["metadata"].get("labels", {})
            if not d["spec"]["selector"]["matchLabels"].items() <= labels.items():
                problems.append(f"{kind} {name}: selector does not match its own template")
    for name, s in by_kind.get("StatefulSet", {}).items():
        svc = by_kind.get("Service", {}).get(s["spec"]["serviceName"])
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"StatefulSet {name}: serviceName {s['spec']['serviceName']!r} is no headless Service")

    services = {n: {p["port"] for p in s["spec"]["ports"]} for n, s in by_kind.get("Service", {}).items()}
    statefulsets = by_kind.get("StatefulSet", {})
    for owner, t in templates:
        for volume in t["spec"].get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                problems.append(f"{owner}: ConfigMap {volume['configMap']['name']!r} is not defined")
            secret = volume.get("secret", {}).get("secretName")
            if secret and secret not in by_kind.get("Secret", {}) and secret not in EXTERNAL_SECRETS:
                problems.append(f"{owner}: Secret {secret!r} is not defined")
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}) and claim not in EXTERNAL_CLAIMS:
                problems.append(f"{owner}: PersistentVolumeClaim {claim!r} is not defined")
        for c in t["spec"]["containers"]:
            ports = {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("grpc", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{owner}/{c['name']}: {probe} port {port} is not a container port")
            args = c.get("args", [])
            for flag, value in zip(args, args[1:]):
                if flag not in ("--learner", "--reward"):
                    continue
                for address in value.split(","):
                    host, _, port = address.split("://")[-1].rpartition(":")
                    # `pod-N.service` for a StatefulSet's pods, `service` otherwise.
                    pod, _, service = host.rpartition(".") if "." in host else ("", "", host)
                    if service not in services or int(port) not in services[service]:
                        problems.append(f"{owner}: {flag} {address}: no Service {service!r} with port {port}")
                    elif pod:
                        set_name, _, ordinal = pod.rpartition("-")
                        s = statefulsets.get(set_name)
                        if s is None or not ordinal.isdigit() or int(ordinal) >= s["spec"].get("replicas", 1):
                            problems.append(f"{owner}: {flag} {address}: no such StatefulSet pod")

    if binary:
        for name, cm in by_kind.get("ConfigMap", {}).items():
            for key, text in cm.get("data", {}).items():
                if key != "learner.toml":
                    continue
                with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                    f.write(text)
                    f.flush()
                    run = subprocess.run([binary, "learner", "--config", f.name, "--check"], capture_output=True, text=True)
                if run.returncode != 0:
                    problems.append(f"ConfigMap {name}/{key}: rlhf learner --check failed: {run.stderr.strip()}")

    for p in problems:
        print(f"check.py: {p}", file=sys.stderr)
    print(f"check.py: {len(docs)} resources, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
