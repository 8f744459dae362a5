#!/usr/bin/env bash
# Validates the secret-store examples (deploy/examples/secret-stores/*, kustomize components)
# offline:
#
#   1. each renders on top of deploy/base with kustomize;
#   2. every rendered object of a kind Kubernetes has a schema for validates strictly
#      (kubernetes-validate, the versions .ci/validate-deploy.sh uses);
#   3. the custom resources (ExternalSecret, SecretStore, SecretProviderClass: no schema here)
#      and what the schemas cannot see are checked against what the sidecar reads: the Secret
#      name and key of deploy/base's token volume (= the contract's cluster.secret and key
#      `token`) and the token file of deploy/base/config.toml.
#
# Tools come from the cached virtualenv of validate-deploy.sh. Skips with the reason when it
# cannot be made (no python3, no PyPI), fails instead when CI=true.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/lib.sh
source .ci/lib.sh

EXAMPLES=deploy/examples/secret-stores
read -r -a versions <<<"$(sed -n 's/^K8S_VERSIONS=(\(.*\))$/\1/p' .ci/validate-deploy.sh)"
(( ${#versions[@]} )) || ci_die "cannot read K8S_VERSIONS from .ci/validate-deploy.sh"

venv=$(ci_venv)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# NAME COMPONENT...: render deploy/base with these components into $work/NAME.yaml, validate it.
render() {
    local name=$1 rel list="" component
    shift
    mkdir -p "$work/$name"
    rel=$("$venv/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD" "$work/$name")
    for component in "$@"; do list+="${list:+, }\"$rel/$component\""; done
    cat >"$work/$name/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["$rel/deploy/base"]
components: [$list]
YAML
    local what="deploy/base + $*"
    "$venv/bin/kubectl" kustomize "$work/$name" >"$work/$name.yaml" || ci_die "$what does not render"
    # Split: kinds with a Kubernetes schema are validated by kubernetes-validate, the rest below.
    "$venv/bin/python" - "$work/$name.yaml" "$work/$name.core.yaml" "$work/$name.crd.yaml" <<'PY'
import sys
import yaml
objects = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
core = [o for o in objects if "." not in o["apiVersion"].split("/")[0] or o["apiVersion"].startswith(("apps/", "rbac.authorization.k8s.io/", "networking.k8s.io/", "policy/", "coordination.k8s.io/"))]
crd = [o for o in objects if o not in core]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(crd, open(sys.argv[3], "w"), sort_keys=False)
PY
    for version in "${versions[@]}"; do
        report=$work/$name.validate
        "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" "$work/$name.core.yaml" >"$report" 2>&1 \
            || { cat "$report" >&2; ci_die "$what: rendered objects do not validate against Kubernetes $version (strict)"; }
        ! grep -q "Couldn't find schema" "$report" || { cat "$report" >&2; ci_die "$what: an object has no schema"; }
    done
    custom=$({ grep '^kind:' "$work/$name.crd.yaml" || true; } | cut -d' ' -f2 | sort | paste -sd, -)
    ci_log "$what: $(grep -c '^kind:' "$work/$name.core.yaml") objects valid for Kubernetes ${versions[*]} (strict); custom resources: ${custom:-none}"
}
for dir in "$EXAMPLES"/*/; do
    render "$(basename "$dir")" "${dir%/}"
done
# Cluster mode reads the administrator's Secret through the API: External Secrets writes it there.
render external-secrets-cluster deploy/components/cluster "$EXAMPLES/external-secrets"

"$venv/bin/python" - "$work" "$EXAMPLES" <<'PY'
"""What the schemas cannot check: every store ends in the Secret name, key and file the sidecar reads."""
import os
import sys
import tomllib

import yaml

work, examples = sys.argv[1:]
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def rendered(name):
    return [o for o in yaml.safe_load_all(open(f"{work}/{name}.yaml")) if o]


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    check(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0] if found else {}


def sidecar(deployment):
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["initContainers"] if c["name"] == "issettled-proxy")


def token_file(container, config):
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return env.get("ISSETTLED_PROXY__TOKEN__FILE") or config["token"]["file"]


# What the sidecar reads, from the base: the Secret and key behind its token volume, its token file.
config = tomllib.load(open("deploy/base/config.toml", "rb"))
base = yaml.safe_load(open("deploy/base/deployment.yaml"))
base_volume = next(v for v in base["spec"]["template"]["spec"]["volumes"] if v["name"] == "token")
SECRET = base_volume["secret"]["secretName"]
KEY = next(i["key"] for i in base_volume["secret"]["items"] if i["path"] == os.path.basename(config["token"]["file"]))
FILE = config["token"]["file"]
check((SECRET, KEY) == ("issettled-token", "token"),
      f"deploy/base reads Secret {SECRET} key {KEY}; the contract's cluster.secret is issettled-token, key token")

# External Secrets Operator: an ExternalSecret producing exactly that Secret and key.
objects = rendered("external-secrets")
external = one(objects, "ExternalSecret")
store = one(objects, "SecretStore")
check(external.get("apiVersion") == "external-secrets.io/v1", "ExternalSecret: apiVersion external-secrets.io/v1")
target = external.get("spec", {}).get("target", {})
check(target.get("name") == SECRET, f"ExternalSecret: target.name must be {SECRET}")
check(target.get("creationPolicy", "Owner") == "Owner", "ExternalSecret: creationPolicy Owner (documented as the supported default)")
check([d.get("secretKey") for d in external["spec"].get("data", [])] == [KEY], f"ExternalSecret: data must yield exactly key {KEY}")
ref = external["spec"].get("secretStoreRef", {})
check((ref.get("kind"), ref.get("name")) == ("SecretStore", store.get("metadata", {}).get("name")),
      "ExternalSecret: secretStoreRef must name the example SecretStore")
deployment = one(objects, "Deployment")
volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "token")
check(volume.get("secret", {}).get("secretName") == SECRET, "external-secrets: the pod must still mount the Secret")

# In cluster mode the same ExternalSecret writes the Secret [cluster] secret names, never the state Secret.
cluster = tomllib.load(open("deploy/components/cluster/config.toml", "rb"))["cluster"]
objects = rendered("external-secrets-cluster")
external = one(objects, "ExternalSecret")
target = external.get("spec", {}).get("target", {}).get("name")
check(target == cluster.get("secret", "issettled-token") and [d.get("secretKey") for d in external["spec"].get("data", [])] == ["token"],
      f"cluster mode: the ExternalSecret must write Secret {cluster.get('secret')} key token, not {target}")
check(target != cluster.get("state_secret", "issettled-token-state"), "cluster mode: a store must never write the state Secret")

# Vault Agent injector: the rendered file is the sidecar's token file; the app does not get it.
objects = rendered("vault-agent")
deployment = one(objects, "Deployment")
pod = deployment["spec"]["template"]
notes = pod["metadata"].get("annotations", {})
prefix = "vault.hashicorp.com/agent-inject-secret-"
secrets = [k[len(prefix):] for k in notes if k.startswith(prefix)]
check(notes.get("vault.hashicorp.com/agent-inject") == "true", "vault-agent: agent-inject must be \"true\"")
check(notes.get("vault.hashicorp.com/agent-init-first") == "true",
      "vault-agent: agent-init-first must be \"true\" (the file must exist before the native sidecar starts)")
check(len(secrets) == 1, f"vault-agent: expected one agent-inject-secret-*, got {secrets}")
if secrets:
    name = secrets[0]
    rendered_file = os.path.join("/vault/secrets", notes.get(f"vault.hashicorp.com/agent-inject-file-{name}", name))
    proxy = sidecar(deployment)
    check(token_file(proxy, config) == rendered_file,
          f"vault-agent: the sidecar reads {token_file(proxy, config)}, the agent writes {rendered_file}")
    check(f"vault.hashicorp.com/agent-inject-template-{name}" in notes, "vault-agent: a template rendering only the token is needed")
    check(notes.get("vault.hashicorp.com/agent-run-as-user") == "65532", "vault-agent: the agent must write the file as uid 65532")
    check(all(m["mountPath"] != os.path.dirname(FILE) for m in proxy.get("volumeMounts", [])),
          "vault-agent: the Secret mount must be gone (the Secret does not exist in this layout)")
check(notes.get("vault.hashicorp.com/agent-inject-containers") == "issettled-proxy",
      "vault-agent: agent-inject-containers must keep the app container from mounting /vault/secrets")
token_volume = notes.get("vault.hashicorp.com/agent-service-account-token-volume-name")
volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
check("token" not in volumes, "vault-agent: the Secret volume must be gone")
check(any("serviceAccountToken" in s for s in volumes.get(token_volume, {}).get("projected", {}).get("sources", [])),
      "vault-agent: agent-service-account-token-volume-name must name a projected serviceAccountToken volume")
check(pod["spec"].get("automountServiceAccountToken") is False, "vault-agent: automountServiceAccountToken must stay false")

# Secrets Store CSI driver: the file "token" in the volume the sidecar mounts, and the synced Secret.
objects = rendered("secrets-store-csi")
deployment = one(objects, "Deployment")
spc = one(objects, "SecretProviderClass")
check(spc.get("apiVersion") == "secrets-store.csi.x-k8s.io/v1", "SecretProviderClass: apiVersion secrets-store.csi.x-k8s.io/v1")
volume = next((v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "token"), {})
csi = volume.get("csi", {})
check(set(volume) == {"name", "csi"}, f"secrets-store-csi: the token volume must be a CSI volume only, got {sorted(volume)}")
check(csi.get("driver") == "secrets-store.csi.k8s.io" and csi.get("readOnly") is True, "secrets-store-csi: driver and readOnly")
check(csi.get("volumeAttributes", {}).get("secretProviderClass") == spc.get("metadata", {}).get("name"),
      "secrets-store-csi: the volume must name the SecretProviderClass")
proxy = sidecar(deployment)
mount = next((m for m in proxy["volumeMounts"] if m["name"] == "token"), {})
check(mount.get("mountPath") == os.path.dirname(token_file(proxy, config)) and "subPath" not in mount,
      "secrets-store-csi: the sidecar must mount the volume at its token file's directory, without subPath")
files = [o.get("objectAlias") or o["objectName"] for o in yaml.safe_load(spc["spec"]["parameters"]["objects"])]
check(os.path.basename(token_file(proxy, config)) in files,
      f"SecretProviderClass: no object is written as {os.path.basename(token_file(proxy, config))} (files: {files})")
for synced in spc["spec"].get("secretObjects", []):
    check(synced["secretName"] == SECRET and [d["key"] for d in synced["data"]] == [KEY],
          f"SecretProviderClass: secretObjects must sync Secret {SECRET} with key {KEY}")

if failures:
    print("\n".join(f"secret-stores-check: FAIL: {f}" for f in failures), file=sys.stderr)
    sys.exit(1)
print(f"secret-stores-check: every store ends in Secret {SECRET} key {KEY} or the file the sidecar reads", file=sys.stderr)
PY
ci_log "OK"
