"""Cross-checks of deploy/ that the Kubernetes JSON schemas cannot express (run by validate-deploy.sh).

Reads the manifests validate-deploy.sh rendered and checks, object by object and field by field:
- the base: no NetworkPolicy, no Secret, no upstream values (each overlay sets them);
- each component on top of the base: the NetworkPolicy holds exactly the sidecar's rules; the
  outbound-proxy component swaps the HTTPS rule for the proxy's and sets HTTPS_PROXY/NO_PROXY;
  the PodMonitor selects the pod;
- each overlay (shipped or the operator's own): the pod, the sidecar, its mounts against its
  effective configuration (config.toml plus ISSETTLED_PROXY__* variables), probes, securityContext,
  grace period, Service, NetworkPolicy, the variant's own objects (cluster mode: replicas, rollout,
  PDB, Lease, state Secret, Role exactly as the contract lists it, the API token in the sidecar
  only), example values left unmarked, and `issettled-proxy check-config` on the effective
  configuration when a binary is at hand;
- the Dockerfile's final stage.
Each failure names the overlay, the object and the field; the exit status is 1 if any failed.
"""
import argparse
import copy
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse

import dockerfile
import yaml

SIDECAR = "issettled-proxy"
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CONFIG_PATH = "/etc/issettled-proxy/config.toml"
ENV_PREFIX = "ISSETTLED_PROXY__"
MARKER = "issettled-proxy/replace-before-use"
# Values that stand in for the operator's own (RFC 2606 names, RFC 5737 / RFC 3849 addresses, the
# contract's example member id): a pod started with them cannot work.
EXAMPLE_DOMAINS = (".example", ".invalid", ".test", ".localhost", "example.com", "example.net", "example.org")
EXAMPLE_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
EXAMPLE_MEMBER_ID = "bankName"

failures = []
quiet = False  # the self-test's runs log nothing


def check(ok, message):
    if not ok:
        failures.append(message)
    return ok


def log(message):
    if quiet:
        return
    print(f"validate-deploy: {message}", file=sys.stderr)


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text).strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * units[match.group(2)]


def flatten(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load(path):
    return [o for o in yaml.safe_load_all(open(path, encoding="utf-8")) if o]


def by_kind(objects):
    kinds = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def is_example_host(host):
    host = (host or "").lower().rstrip(".")
    return any(host == d.lstrip(".") or host.endswith("." + d.lstrip(".")) for d in EXAMPLE_DOMAINS)


def is_example_cidr(cidr):
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return any(net.version == e.version and net.subnet_of(e) for e in EXAMPLE_NETS)


def ports_of(rule):
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}


# === the contract's configuration keys ======================================================

def contract_keys(contract_path):
    """Every key of the contract's Configuration block and of its `[cluster]` block."""
    if not contract_path:
        log("CONTRACT.md not found; configuration key check skipped")
        return None
    text = open(contract_path, encoding="utf-8").read()
    keys = set()
    for heading in ("## Configuration", "## Many replicas"):
        if heading not in text:
            check(heading != "## Configuration", f"{contract_path}: no section {heading}")
            continue
        block = re.search(r"```toml\n(.*?)```", text.split(heading, 1)[1], re.S).group(1)
        keys |= set(dict(flatten(tomllib.loads(block))))
    return keys


# === one pod ================================================================================

class Pod:
    """The rendered Deployment's pod, the sidecar and its effective configuration."""

    def __init__(self, name, objects):
        self.name = name
        self.kinds = by_kind(objects)
        self.deployment = next(d for d in self.kinds["Deployment"]
                               if any(c["name"] == SIDECAR for c in d["spec"]["template"]["spec"].get("initContainers", [])))
        self.template = self.deployment["spec"]["template"]
        self.spec = self.template["spec"]
        self.labels = self.template["metadata"].get("labels", {})
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        sidecars = [c for c in self.spec.get("initContainers", []) if c["name"] == SIDECAR]
        self.sidecar = sidecars[0] if sidecars else {}
        self.apps = [c for c in self.spec.get("initContainers", []) + self.spec.get("containers", [])
                     if c["name"] != SIDECAR]
        self.env = {e["name"]: e for e in self.sidecar.get("env", [])}
        # The ConfigMap behind the volume mounted at the configuration's directory.
        config_mount = next((m for m in self.sidecar.get("volumeMounts", [])
                             if m["mountPath"] == os.path.dirname(CONFIG_PATH)), {})
        config_map = self.volumes.get(config_mount.get("name"), {}).get("configMap", {}).get("name")
        self.configmap = next((c for c in self.kinds.get("ConfigMap", []) if c["metadata"]["name"] == config_map), {})
        self.config_text = self.configmap.get("data", {}).get("config.toml", "")
        self.file_config = tomllib.loads(self.config_text)
        # The effective configuration: the file, then ISSETTLED_PROXY__SECTION__KEY variables.
        self.config = dict(flatten(self.file_config))
        for env_name, entry in self.env.items():
            if env_name.startswith(ENV_PREFIX) and "value" in entry:
                self.config[env_name[len(ENV_PREFIX):].lower().replace("__", ".")] = entry["value"]
        self.mode = self.config.get("cluster.mode", "off")

    def selects(self, selector):
        return bool(selector) and all(self.labels.get(k) == v for k, v in selector.items())

    def mounts(self, container):
        return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


# === the NetworkPolicy ======================================================================

SIDECAR_INGRESS = {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                   "ports": [{"protocol": "TCP", "port": 8081}]}
SIDECAR_DNS = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
SIDECAR_HTTPS = {"ports": [{"protocol": "TCP", "port": 443}]}


def proxy_url(pod):
    """The outbound proxy the sidecar would use, as upstream.proxy = "" reads the variables."""
    explicit = pod.config.get("upstream.proxy", "")
    if explicit and explicit != "none":
        return explicit
    if explicit == "none":
        return ""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if pod.env.get(name, {}).get("value"):
            return pod.env[name]["value"]
    return ""


def check_networkpolicy(where, pod, policy, admin_port):
    """The sidecar's rules are present and nothing opens more than a rule's ports."""
    spec = policy["spec"]
    check(pod.selects(spec.get("podSelector", {}).get("matchLabels", {})),
          f"{where}: NetworkPolicy {policy['metadata']['name']}: podSelector does not select the pod")
    check(sorted(spec.get("policyTypes", [])) == ["Egress", "Ingress"],
          f"{where}: NetworkPolicy: policyTypes must be Ingress and Egress")
    ingress, egress = spec.get("ingress", []), spec.get("egress", [])
    check(all(r.get("ports") and r.get("from") for r in ingress),
          f"{where}: NetworkPolicy: every ingress rule needs both ports and from")
    check(all(r.get("ports") for r in egress),
          f"{where}: NetworkPolicy: an egress rule without ports opens everything")
    check(any(("TCP", admin_port) in ports_of(r) for r in ingress),
          f"{where}: NetworkPolicy: no ingress rule for the admin port {admin_port} (probes aside, Prometheus needs it)")
    listen_port = int(pod.config.get("listen.address", "127.0.0.1:8080").rsplit(":", 1)[1])
    check(not any(("TCP", listen_port) in ports_of(r) for r in ingress),
          f"{where}: NetworkPolicy: ingress to the proxy port {listen_port} (it is for the pod's loopback only)")
    check(any({("UDP", 53), ("TCP", 53)} <= ports_of(r) for r in egress),
          f"{where}: NetworkPolicy: no egress rule for DNS (UDP and TCP 53)")
    proxy = proxy_url(pod)
    https_rules = [r for r in egress if ("TCP", 443) in ports_of(r)]
    if proxy:
        proxy_port = urllib.parse.urlsplit(proxy).port or 1080
        check(any(("TCP", proxy_port) in ports_of(r) and r.get("to") for r in egress),
              f"{where}: NetworkPolicy: no egress rule to the outbound proxy (TCP {proxy_port} with `to`)")
    else:
        check(bool(https_rules), f"{where}: NetworkPolicy: no egress rule for HTTPS to IsSettled (TCP 443)")
    if pod.mode == "kubernetes":
        # The API server: a rule for 6443, or a 443 rule besides the one to IsSettled.
        api_rules = [r for r in egress if ("TCP", 6443) in ports_of(r)]
        check(bool(api_rules) or len(https_rules) >= (1 if proxy else 2),
              f"{where}: NetworkPolicy: cluster mode needs an egress rule to the API server (TCP 6443 or 443)")
    return [b["ipBlock"]["cidr"] for r in egress + ingress for peer in ("to", "from")
            for b in r.get(peer, []) if "ipBlock" in b]


# === an overlay =============================================================================

def check_overlay(name, objects, source_config, allowed_keys, binary, shipped):
    kinds = by_kind(objects)
    with_sidecar = [d for d in kinds.get("Deployment", [])
                    if any(c["name"] == SIDECAR for c in d["spec"]["template"]["spec"].get("initContainers", []))]
    if not check(len(with_sidecar) == 1, f"{name}: expected one Deployment with the {SIDECAR} sidecar, rendered {len(with_sidecar)}"):
        return
    pod = Pod(name, objects)
    if not check(bool(pod.configmap), f"{name}: the ConfigMap mounted at {os.path.dirname(CONFIG_PATH)} is not rendered"):
        return
    accounts = [a for a in kinds.get("ServiceAccount", []) if a["metadata"]["name"] == pod.spec.get("serviceAccountName")]
    if not check(len(accounts) == 1, f"{name}: the pod's ServiceAccount is not rendered"):
        return
    services = [s for s in kinds.get("Service", []) if pod.selects(s["spec"].get("selector", {}))]
    check(len(services) == 1, f"{name}: expected one Service for the app, rendered {len(services)}")
    policies = [p for p in kinds.get("NetworkPolicy", []) if pod.selects(p["spec"].get("podSelector", {}).get("matchLabels", {}))]
    check(len(policies) == len(kinds.get("NetworkPolicy", [])) <= 1, f"{name}: expected at most one NetworkPolicy, selecting the pod")
    config, spec, proxy = pod.config, pod.spec, pod.sidecar
    where = f"{name}: {SIDECAR}"

    # --- configuration --------------------------------------------------------------------
    if allowed_keys is not None:
        for key in config:
            check(key in allowed_keys, f"{name}: configuration key {key} (config.toml or env) is not in the contract")
    for env_name in pod.env:
        if env_name.startswith("ISSETTLED_PROXY"):
            check(env_name.startswith(ENV_PREFIX) and env_name.count("__") == 2,
                  f"{where}: env {env_name} is not ISSETTLED_PROXY__SECTION__KEY")
    if source_config:
        with open(source_config, "rb") as f:
            check(pod.file_config == tomllib.load(f), f"{name}: ConfigMap config.toml differs from {source_config}")
    for key in ("upstream.base_url", "upstream.member_id"):
        check(bool(config.get(key)), f"{name}: {key} is set neither in config.toml nor in the sidecar's env")
    check(config.get("listen.address", "127.0.0.1:8080").startswith("127.0.0.1:"),
          f"{name}: listen.address must stay on loopback inside the pod")
    check(config.get("listen.admin_address", "").startswith("0.0.0.0:"),
          f"{name}: listen.admin_address must bind 0.0.0.0 so the kubelet can probe it")
    admin_port = int(config.get("listen.admin_address", "127.0.0.1:8081").rsplit(":", 1)[1])
    for key in ("shutdown.delay", "shutdown.grace"):
        try:
            duration_seconds(config.get(key, "0s"))
        except ValueError as error:
            failures.append(f"{name}: {key}: {error}")

    # --- the pod and the sidecar ----------------------------------------------------------
    sa = accounts[0]
    check(spec.get("automountServiceAccountToken") is False, f"{name}: pod automountServiceAccountToken must be false")
    check(sa.get("automountServiceAccountToken") is False, f"{name}: ServiceAccount automountServiceAccountToken must be false")
    check(spec.get("serviceAccountName") == sa["metadata"]["name"], f"{name}: pod serviceAccountName must name the ServiceAccount")
    if not check(bool(proxy), f"{name}: no initContainer named {SIDECAR}"):
        return
    check(proxy.get("restartPolicy") == "Always", f"{where}: restartPolicy Always (native sidecar) missing")
    check(proxy.get("args") == ["run", "--config", CONFIG_PATH], f"{where}: args must be run --config {CONFIG_PATH}")
    ports = {p.get("name"): p["containerPort"] for p in proxy.get("ports", [])}
    check(ports.get("admin") == admin_port, f"{where}: container port 'admin' must be {admin_port}")
    for probe, probe_path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = proxy.get(probe, {}).get("httpGet", {})
        check(get.get("path") == probe_path, f"{where}: {probe} must GET {probe_path}")
        check(get.get("port") in ("admin", admin_port), f"{where}: {probe} must use the admin port")

    mounts = pod.mounts(proxy)

    def mounted(file_path, kind):
        directory = os.path.dirname(file_path)
        mount = mounts.get(directory)
        if not check(mount is not None, f"{where}: nothing mounted at {directory} (for {file_path})"):
            return None
        check("subPath" not in mount, f"{where}: {directory} must not use subPath (updates need the symlink swap)")
        volume = pod.volumes.get(mount["name"], {})
        check(kind in volume, f"{where}: {directory} must be a {kind} volume")
        return volume.get(kind)

    configmap = mounted(CONFIG_PATH, "configMap")
    if configmap:
        check(configmap["name"].startswith("issettled-proxy-config"), f"{name}: config volume must use the generated ConfigMap")
    if config.get("token.state_file"):
        mounted(config["token.state_file"], "emptyDir")
        check(not mounts.get(os.path.dirname(config["token.state_file"]), {}).get("readOnly"),
              f"{where}: the state_file directory must be writable")

    pod_sc = spec.get("securityContext", {})
    check(pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccompProfile RuntimeDefault")
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        cname = f"{name}: {container['name']}"
        sc = container.get("securityContext", {})
        merged = {**pod_sc, **sc}
        check(merged.get("runAsNonRoot") is True, f"{cname}: runAsNonRoot")
        check(merged.get("runAsUser") == 65532, f"{cname}: runAsUser 65532")
        check(sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation false")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: capabilities drop ALL")
        check(merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{cname}: seccompProfile RuntimeDefault")
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                check(resource in container.get("resources", {}).get(part, {}), f"{cname}: resources.{part}.{resource} missing")

    grace = duration_seconds(config.get("shutdown.delay", "0s")) + duration_seconds(config.get("shutdown.grace", "20s"))
    check(spec.get("terminationGracePeriodSeconds", 30) > grace,
          f"{name}: terminationGracePeriodSeconds must exceed shutdown.delay + shutdown.grace ({grace:g}s)")
    annotations = pod.template["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true", f"{name}: pod annotation prometheus.io/scrape")
    check(annotations.get("prometheus.io/port") == str(admin_port), f"{name}: prometheus.io/port must be the admin port")
    check(annotations.get("prometheus.io/path") == "/metrics", f"{name}: prometheus.io/path must be /metrics")

    # --- the app's Service: the app's ports only -------------------------------------------
    app_ports = {p.get("name"): p["containerPort"] for c in pod.apps for p in c.get("ports", [])}
    for service in services:
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port.get("port"))
            check(target in app_ports or target in app_ports.values(),
                  f"{name}: Service port {port.get('name')} targets {target!r}, not a port of the app container")
            check(target not in ("admin", admin_port, 8080), f"{name}: Service must not expose the sidecar's ports")

    # --- the variant ----------------------------------------------------------------------
    if pod.mode == "kubernetes":
        check_cluster(name, pod, kinds, shipped)
    else:
        check(pod.mode == "off", f"{name}: cluster.mode must be off or kubernetes, is {pod.mode!r}")
        check_single(name, pod, kinds, mounted)

    # --- NetworkPolicy (optional) ---------------------------------------------------------
    cidrs = []
    for policy in policies:
        cidrs = check_networkpolicy(name, pod, policy, admin_port)

    # --- example values are marked, marked values are examples -----------------------------
    found = set()
    if is_example_host(urllib.parse.urlsplit(config.get("upstream.base_url", "")).hostname):
        found.add("upstream.base_url")
    if config.get("upstream.member_id") == EXAMPLE_MEMBER_ID:
        found.add("upstream.member_id")
    if proxy_url(pod) and is_example_host(urllib.parse.urlsplit(proxy_url(pod)).hostname):
        found.add("upstream.proxy")
    if any(is_example_cidr(c) for c in cidrs):
        found.add("networkpolicy.cidr")
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        registry = container.get("image", "").split("/")[0] if "/" in container.get("image", "") else ""
        if is_example_host(registry.split(":")[0]):
            found.add("image")
    marked = set(pod.deployment["metadata"].get("annotations", {}).get(MARKER, "").split())
    for key in sorted(found - marked):
        failures.append(f"{name}: {key} holds an example value: replace it (or list it in the Deployment's "
                        f"annotation {MARKER} to keep it as an example)")
    for key in sorted(marked - found):
        failures.append(f"{name}: annotation {MARKER} lists {key}, which holds no example value: remove it from the list")
    if found & marked:
        log(f"{name}: example values, marked as such: {' '.join(sorted(found & marked))}")

    check_config(name, pod, binary)


def check_single(name, pod, kinds, mounted):
    """Mode off: one pod, one token session."""
    deployment = pod.deployment["spec"]
    check(deployment.get("replicas", 1) == 1, f"{name}: mode off: replicas must be 1 (one token session per pod)")
    check(deployment.get("strategy", {}).get("type") == "Recreate",
          f"{name}: mode off: strategy must be Recreate (one token session per pod)")
    check("Secret" not in kinds, f"{name}: must not carry a Secret (it would overwrite the live token)")
    token_file = pod.config.get("token.file", "")
    if check(bool(token_file) or bool(pod.config.get("token.env")), f"{name}: mode off needs token.file or token.env"):
        if token_file:
            secret = mounted(token_file, "secret")
            if secret:
                keys = [item["path"] for item in secret.get("items", [])] or ["token"]
                check(os.path.basename(token_file) in keys, f"{name}: token Secret has no item at token.file's name")


def check_cluster(name, pod, kinds, shipped):
    """Mode kubernetes: replicas, rollout, PDB, Lease, state Secret, RBAC, the API token in the sidecar only."""
    config, spec, proxy = pod.config, pod.spec, pod.sidecar
    where = f"{name}: {SIDECAR}"
    secret = config.get("cluster.secret", "issettled-token")
    state_secret = config.get("cluster.state_secret", "issettled-token-state")
    lease = config.get("cluster.lease", "issettled-proxy")
    deployment = pod.deployment["spec"]
    replicas = deployment.get("replicas", 1)
    check(replicas == 3 if shipped else replicas >= 2, f"{name}: cluster mode: replicas must be {'3' if shipped else '2 or more'}, is {replicas}")
    check(deployment.get("strategy") == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
          f"{name}: cluster mode: strategy must be RollingUpdate with maxSurge 1, maxUnavailable 0")
    for key in ("token.file", "token.env"):
        check(not config.get(key), f"{name}: cluster mode: {key} is ignored there (the Secrets are the token source): unset it")
    durations = [duration_seconds(config.get(f"cluster.{k}", d)) for k, d in
                 (("lease_duration", "15s"), ("renew_deadline", "10s"), ("retry_period", "2s"))]
    check(durations[0] > durations[1] > durations[2], f"{name}: cluster: lease_duration > renew_deadline > retry_period")

    # PodDisruptionBudget
    pdbs = kinds.get("PodDisruptionBudget", [])
    if check(len(pdbs) == 1, f"{name}: cluster mode: expected one PodDisruptionBudget"):
        pdb = pdbs[0]["spec"]
        check(pod.selects(pdb.get("selector", {}).get("matchLabels", {})), f"{name}: PodDisruptionBudget does not select the pod")
        check(pdb.get("maxUnavailable", 0) >= 1 or 0 < pdb.get("minAvailable", replicas) < replicas,
              f"{name}: PodDisruptionBudget allows no eviction at all (drains would hang)")

    # The Lease and the state Secret, pre-created, and nothing that apply would overwrite.
    leases = kinds.get("Lease", [])
    if check([l["metadata"]["name"] for l in leases] == [lease], f"{name}: cluster mode: expected the Lease {lease}"):
        check(leases[0]["apiVersion"] == "coordination.k8s.io/v1", f"{name}: Lease must be coordination.k8s.io/v1")
        check(not leases[0].get("spec"), f"{name}: Lease spec must stay empty (apply would reset a running election)")
    secrets = kinds.get("Secret", [])
    if check([s["metadata"]["name"] for s in secrets] == [state_secret],
             f"{name}: cluster mode: the only Secret shipped must be the state Secret {state_secret} "
             f"(never {secret}: it would overwrite the administrator's token)"):
        check(not secrets[0].get("data") and not secrets[0].get("stringData"),
              f"{name}: state Secret must carry no data: apply would overwrite the live chain")

    # RBAC: exactly the contract's list, by resourceNames.
    expected = {("", "secrets", secret, v) for v in ("get", "list", "watch")}
    expected |= {("", "secrets", state_secret, v) for v in ("get", "list", "watch", "update")}
    expected |= {("coordination.k8s.io", "leases", lease, v) for v in ("get", "update")}
    check(not kinds.get("ClusterRole") and not kinds.get("ClusterRoleBinding"), f"{name}: no ClusterRole or ClusterRoleBinding")
    roles = kinds.get("Role", [])
    if check(len(roles) == 1, f"{name}: cluster mode: expected one Role"):
        granted = set()
        for rule in roles[0].get("rules", []):
            check(rule.get("resourceNames"), f"{name}: Role: a rule without resourceNames grants every object of its kind")
            check("nonResourceURLs" not in rule, f"{name}: Role: nonResourceURLs")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for rname in rule.get("resourceNames", ["*"]):
                        for verb in rule.get("verbs", []):
                            granted.add((group, resource, rname, verb))
        for extra in sorted(granted - expected):
            failures.append(f"{name}: Role grants {extra}, beyond the contract's list")
        for missing in sorted(expected - granted):
            failures.append(f"{name}: Role lacks {missing}, which the contract lists")
        bindings = kinds.get("RoleBinding", [])
        if check(len(bindings) == 1, f"{name}: cluster mode: expected one RoleBinding"):
            binding = bindings[0]
            check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[0]["metadata"]["name"]},
                  f"{name}: RoleBinding must refer to the Role")
            namespace = pod.deployment["metadata"].get("namespace")
            check(bool(namespace), f"{name}: cluster mode: set `namespace:` in the overlay (it fills in the RoleBinding's subject)")
            check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": spec.get("serviceAccountName"), "namespace": namespace}],
                  f"{name}: RoleBinding's only subject must be the pod's ServiceAccount")

    # The API credential: projected into the sidecar only.
    token_volumes = {n for n, v in pod.volumes.items()
                     if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))}
    sa_mount = pod.mounts(proxy).get(SA_TOKEN_DIR)
    if check(sa_mount is not None and sa_mount.get("name") in token_volumes,
             f"{where}: the projected service-account token must be mounted at {SA_TOKEN_DIR}"):
        check(sa_mount.get("readOnly") is True and "subPath" not in sa_mount, f"{where}: {SA_TOKEN_DIR} read-only, no subPath")
        sources = pod.volumes[sa_mount["name"]]["projected"]["sources"]
        check(any(s.get("serviceAccountToken", {}).get("path") == "token" for s in sources), f"{where}: projected token at path token")
        check(any(s.get("configMap", {}).get("name") == "kube-root-ca.crt"
                  and {"key": "ca.crt", "path": "ca.crt"} in s["configMap"].get("items", []) for s in sources),
              f"{where}: projected ca.crt from ConfigMap kube-root-ca.crt")
        check(any(i.get("path") == "namespace" and i.get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
                  for s in sources for i in s.get("downwardAPI", {}).get("items", [])), f"{where}: projected namespace")
    secret_volumes = {n for n, v in pod.volumes.items() if "secret" in v
                      or any("secret" in s for s in v.get("projected", {}).get("sources", []))}
    check(not any(m["name"] in secret_volumes for m in pod.mounts(proxy).values()),
          f"{where}: cluster mode reads the Secrets through the API: no Secret volume")
    for app in pod.apps:
        for mount in pod.mounts(app).values():
            check(mount["name"] not in token_volumes | secret_volumes,
                  f"{name}: {app['name']} mounts {mount['name']}, which holds a service-account token or a Secret")
            check(not mount["mountPath"].startswith("/var/run/secrets/kubernetes.io"),
                  f"{name}: {app['name']} mounts something at {mount['mountPath']}")
        for entry in app.get("env", []) + app.get("envFrom", []):
            check("secretKeyRef" not in entry.get("valueFrom", {}) and "secretRef" not in entry,
                  f"{name}: {app['name']} reads a Secret through its env")
    for env_name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        check(pod.env.get(env_name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field,
              f"{where}: env {env_name} must come from the downward API ({field})")


# === check-config on the effective configuration ============================================

def check_config(name, pod, binary):
    if not binary:
        return
    env = {}
    for env_name, entry in pod.env.items():
        if "value" in entry:
            env[env_name] = entry["value"]
    # What the downward API would give; check-config never contacts the API.
    env.setdefault("POD_NAME", f"{pod.deployment['metadata']['name']}-0")
    env.setdefault("POD_NAMESPACE", pod.deployment["metadata"].get("namespace", "default"))
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(pod.config_text)

    def run(extra_env):
        return subprocess.run([binary, "check-config", "--config", f.name], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=30)

    try:
        result = run({})
        if pod.mode == "kubernetes" and result.returncode == 2 and "set token.file or token.env" in result.stderr:
            # The contract ignores token.file and token.env in cluster mode (the Secrets are the token source), so
            # the variant sets neither; a binary that still asks for one is checked on everything else.
            result = run({f"{ENV_PREFIX}TOKEN__FILE": "/nonexistent/ignored-in-cluster-mode"})
            if result.returncode == 0:
                log(f"{name}: NOTE: {binary} requires token.file or token.env in cluster mode, where the contract "
                    "ignores them; checked with a placeholder token.file instead (config/validate.rs should accept "
                    "neither set when cluster.mode is kubernetes)")
                return
    finally:
        os.unlink(f.name)
    if result.returncode == 0:
        log(f"{name}: check-config accepts the effective configuration (config.toml + the sidecar's env)")
    elif pod.mode == "kubernetes" and "unknown field `cluster`" in result.stderr:
        log(f"{name}: NOTE: {binary} predates the [cluster] section; check-config of the cluster "
            "configuration skipped (rebuild once the cluster mode has landed)")
    else:
        failures.append(f"{name}: check-config refuses the effective configuration (exit {result.returncode}): "
                        f"{result.stderr.strip()}")


# === the base and the components ============================================================

def check_base(objects, text):
    kinds = by_kind(objects)
    check("NetworkPolicy" not in kinds, "deploy/base: must render no NetworkPolicy (it selects the whole pod: opt-in component)")
    check("Secret" not in kinds, "deploy/base: must not carry a Secret")
    pod = Pod("deploy/base", objects)
    for key in ("upstream.base_url", "upstream.member_id"):
        check(key not in pod.config, f"deploy/base: {key} must be left to the overlays (a marked value there)")
    check("issettled.example" not in text, "deploy/base: renders an example host")


def the_policy(name, objects):
    """The pod and the one NetworkPolicy of a component's render, or (None, None)."""
    policies = by_kind(objects).get("NetworkPolicy", [])
    if not check(len(policies) == 1, f"{name}: expected one NetworkPolicy"):
        return None, None
    return Pod(name, objects), policies[0]["spec"]


def check_networkpolicy_component(objects):
    name = "deploy/base + components/networkpolicy"
    pod, spec = the_policy(name, objects)
    if not pod:
        return
    check(pod.selects(spec.get("podSelector", {}).get("matchLabels", {})), f"{name}: podSelector does not select the pod")
    # Exactly the rules deploy/README.md documents, nothing more.
    check(spec.get("ingress") == [SIDECAR_INGRESS], f"{name}: ingress must be exactly {SIDECAR_INGRESS}")
    check(spec.get("egress") == [SIDECAR_DNS, SIDECAR_HTTPS], f"{name}: egress must be exactly DNS and TCP 443")


def check_outbound_proxy_component(objects):
    name = "deploy/base + components/networkpolicy + components/outbound-proxy"
    pod, spec = the_policy(name, objects)
    if not pod:
        return
    proxy = proxy_url(pod)
    url = urllib.parse.urlsplit(proxy)
    if not check(url.scheme == "http" and url.hostname and url.port, f"{name}: HTTPS_PROXY must be http://HOST:PORT, is {proxy!r}"):
        return
    check(not url.username and not url.password, f"{name}: no credentials in HTTPS_PROXY (use upstream.proxy_auth_file)")
    no_proxy = {h.strip() for h in pod.env.get("NO_PROXY", {}).get("value", "").split(",")}
    check({"127.0.0.1", "localhost"} <= no_proxy, f"{name}: NO_PROXY must hold 127.0.0.1 and localhost")
    egress = spec.get("egress", [])
    check(not any(("TCP", 443) in ports_of(r) for r in egress), f"{name}: the TCP 443 rule must give way to the proxy's")
    check(any(ports_of(r) == {("TCP", url.port)} and r.get("to") for r in egress),
          f"{name}: no egress rule to the proxy (TCP {url.port} with `to`)")


def check_podmonitor(path, monitor_file):
    name = "deploy/base + components/podmonitor"
    pod = Pod(name, load(path))
    monitor = yaml.safe_load(open(monitor_file, encoding="utf-8"))
    check(monitor.get("apiVersion") == "monitoring.coreos.com/v1" and monitor.get("kind") == "PodMonitor", "PodMonitor: apiVersion/kind")
    check(pod.selects(monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})), "PodMonitor: selector does not select the pod")
    ports = {p.get("name") for p in pod.sidecar.get("ports", [])}
    for endpoint in monitor.get("spec", {}).get("podMetricsEndpoints", []):
        check(endpoint.get("port") in ports, f"PodMonitor: port {endpoint.get('port')!r} is not a sidecar port")
        check(endpoint.get("path", "/metrics") == "/metrics", "PodMonitor: path must be /metrics")


def check_dockerfile(path):
    commands = dockerfile.parse_file(path)
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
    check(final_image.startswith("gcr.io/distroless/cc-debian12:nonroot"),
          f"Dockerfile: final stage must be distroless cc-debian12:nonroot (is {final_image})")
    last = {c.cmd.upper(): c for c in final}
    check(last.get("USER") is not None and last["USER"].value[0] in ("nonroot", "65532", "nonroot:nonroot", "65532:65532"),
          "Dockerfile: final stage must run as nonroot")
    check(last.get("EXPOSE") is not None and set(last["EXPOSE"].value) >= {"8080", "8081"}, "Dockerfile: EXPOSE 8080 8081")
    check(last.get("ENTRYPOINT") is not None and last["ENTRYPOINT"].json
          and list(last["ENTRYPOINT"].value) == ["/usr/local/bin/issettled-proxy"], "Dockerfile: ENTRYPOINT (exec form)")
    check(last.get("CMD") is not None and last["CMD"].json
          and list(last["CMD"].value) == ["run", "--config", CONFIG_PATH], "Dockerfile: CMD (exec form)")
    check(not any(c.cmd.upper() == "RUN" for c in final), "Dockerfile: the final stage has no shell, so no RUN")
    check(any("--locked" in " ".join(c.value) and "cargo build" in " ".join(c.value) for c in commands if c.cmd.upper() == "RUN"),
          "Dockerfile: cargo build --locked missing")


# === the checks catch what they are for ====================================================

def find(objects, kind, name=None):
    return next(o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


def pod_spec(objects):
    return find(objects, "Deployment")["spec"]["template"]["spec"]


def app_container(objects):
    return pod_spec(objects)["containers"][0]


def sidecar(objects):
    return next(c for c in pod_spec(objects)["initContainers"] if c["name"] == SIDECAR)


# (what breaks, which render, the breakage, a phrase the failure must contain)
MUTATIONS = [
    ("the Role grants create on the state Secret", "cluster",
     lambda o: find(o, "Role")["rules"][1]["verbs"].append("create"), "beyond the contract"),
    ("the Role grants patch on the Lease", "cluster",
     lambda o: find(o, "Role")["rules"][2]["verbs"].append("patch"), "beyond the contract"),
    ("the Role reads every Secret", "cluster",
     lambda o: find(o, "Role")["rules"][0].pop("resourceNames"), "without resourceNames"),
    ("the Role names another Secret", "cluster",
     lambda o: find(o, "Role")["rules"][0]["resourceNames"].append("db-password"), "beyond the contract"),
    ("the Role lacks watch on the administrator's Secret", "cluster",
     lambda o: find(o, "Role")["rules"][0]["verbs"].remove("watch"), "lacks"),
    ("a ClusterRole is shipped", "cluster",
     lambda o: o.append({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []}), "ClusterRole"),
    ("the app container mounts the API token", "cluster",
     lambda o: app_container(o).setdefault("volumeMounts", []).append(
         {"name": "kube-api-access", "mountPath": SA_TOKEN_DIR}), "service-account token"),
    ("the pod automounts the API token", "cluster",
     lambda o: pod_spec(o).update(automountServiceAccountToken=True), "automountServiceAccountToken"),
    ("the sidecar lacks the projected token", "cluster",
     lambda o: sidecar(o)["volumeMounts"].pop(0), "projected service-account token"),
    ("POD_NAME is missing", "cluster",
     lambda o: sidecar(o).update(env=[e for e in sidecar(o)["env"] if e["name"] != "POD_NAME"]), "POD_NAME"),
    ("the state Secret names `state`", "cluster",
     lambda o: find(o, "Secret").update(data={"state": ""}), "no data"),
    ("the administrator's Secret is shipped", "cluster",
     lambda o: o.append({"kind": "Secret", "metadata": {"name": "issettled-token"}}), "administrator"),
    ("the rollout may take a pod down first", "cluster",
     lambda o: find(o, "Deployment")["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1), "RollingUpdate"),
    ("no PodDisruptionBudget", "cluster",
     lambda o: o.remove(find(o, "PodDisruptionBudget")), "PodDisruptionBudget"),
    ("no egress to the API server", "cluster",
     lambda o: find(o, "NetworkPolicy")["spec"]["egress"].pop(2), "API server"),
    ("the example host unmarked", "cluster",
     lambda o: find(o, "Deployment")["metadata"]["annotations"].pop(MARKER), "example value"),
    ("the example host unmarked", "example",
     lambda o: find(o, "Deployment")["metadata"]["annotations"].update({MARKER: "image networkpolicy.cidr"}), "example value"),
    ("a replaced value still listed as an example", "example",
     lambda o: sidecar(o)["env"][0].update(value="https://api.issettled.com"), "holds no example value"),
    ("ingress to the proxy port", "example",
     lambda o: find(o, "NetworkPolicy")["spec"]["ingress"].append(
         {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}), "proxy port"),
    ("an egress rule without ports", "example",
     lambda o: find(o, "NetworkPolicy")["spec"]["egress"].append({"to": [{"podSelector": {}}]}), "without ports"),
    ("a Service to the admin port", "example",
     lambda o: find(o, "Service")["spec"]["ports"].append({"name": "admin", "port": 8081, "targetPort": "admin"}), "Service"),
    ("mode off with replicas 2", "example",
     lambda o: find(o, "Deployment")["spec"].update(replicas=2), "replicas"),
    ("a NetworkPolicy in the base", "base",
     lambda o: o.append({"kind": "NetworkPolicy", "metadata": {"name": "x"}, "spec": {}}), "NetworkPolicy"),
    ("the component opens the database too", "networkpolicy",
     lambda o: find(o, "NetworkPolicy")["spec"]["egress"].append({"ports": [{"protocol": "TCP", "port": 5432}]}), "egress must be"),
    ("the component drops DNS", "networkpolicy",
     lambda o: find(o, "NetworkPolicy")["spec"]["egress"].pop(0), "egress must be"),
    ("HTTPS to the world beside the proxy", "outbound-proxy",
     lambda o: find(o, "NetworkPolicy")["spec"]["egress"].append(SIDECAR_HTTPS), "give way"),
    ("the proxy's password in HTTPS_PROXY", "outbound-proxy",
     lambda o: sidecar(o)["env"][0].update(value="http://u:p@proxy.example:3128"), "credentials"),
]


def self_test(renders, allowed):
    """Each check above fails on the breakage it exists for (a check that cannot fail is no check)."""
    global failures, quiet
    missed = []
    for what, render, mutate, phrase in MUTATIONS:
        objects = copy.deepcopy(renders[render])
        mutate(objects)
        failures, quiet = [], True
        if render == "base":
            check_base(objects, "")
        elif render == "networkpolicy":
            check_networkpolicy_component(objects)
        elif render == "outbound-proxy":
            check_outbound_proxy_component(objects)
        else:
            check_overlay(f"self-test {render}", objects, None, allowed, None, shipped=True)
        if not any(phrase in f for f in failures):
            missed.append(f"self-test: no check caught: {what} ({render}; failures: {failures})")
    failures, quiet = missed, False
    if not missed:
        log(f"self-test: each of {len(MUTATIONS)} breakages of the shipped renders is caught")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contract", default="")
    parser.add_argument("--binary", default="", help="issettled-proxy for check-config; empty: skipped")
    parser.add_argument("--base", required=True)
    parser.add_argument("--networkpolicy", required=True)
    parser.add_argument("--outbound-proxy", required=True)
    parser.add_argument("--podmonitor", required=True)
    parser.add_argument("--overlay", action="append", default=[], metavar="DIR=RENDERED[=SOURCE_CONFIG]",
                        help="an overlay's rendering; with SOURCE_CONFIG it is a shipped overlay")
    args = parser.parse_args()

    allowed = contract_keys(args.contract)
    base = load(args.base)
    check_base(base, open(args.base, encoding="utf-8").read())
    components = {"networkpolicy": load(args.networkpolicy), "outbound-proxy": load(args.outbound_proxy)}
    check_networkpolicy_component(components["networkpolicy"])
    check_outbound_proxy_component(components["outbound-proxy"])
    check_podmonitor(args.podmonitor, "deploy/components/podmonitor/podmonitor.yaml")
    shipped = {}
    for overlay in args.overlay:
        name, rendered, *source = overlay.split("=")
        objects = load(rendered)
        check_overlay(name, objects, source[0] if source else None, allowed, args.binary, shipped=bool(source))
        if source:
            shipped[name] = objects
    check_dockerfile("Dockerfile")
    if failures:
        print("\n".join(f"validate-deploy: FAIL: {m}" for m in failures), file=sys.stderr)
        sys.exit(1)
    self_test({"base": base, "example": shipped["deploy/overlays/example"],
               "cluster": shipped["deploy/overlays/cluster"], **components}, allowed)

    if failures:
        print("\n".join(f"validate-deploy: FAIL: {m}" for m in failures), file=sys.stderr)
        sys.exit(1)
    log("cross-checks passed (base, components, overlays: config, mounts, probes, securityContext, Service, "
        "NetworkPolicy, cluster RBAC/Lease/Secret/PDB, example values; PodMonitor, Dockerfile)")


if __name__ == "__main__":
    main()
