#!/usr/bin/env bash
# Unit-tests the alerts of deploy/components/alerts with promtool (Debian package `prometheus`):
#
#   1. the PrometheusRule's spec is written out as a plain rules file (it has the same shape:
#      `groups:`) beside a copy of rules.test.yaml, in a temporary directory;
#   2. `promtool check rules` parses every expression and template;
#   3. every alert has at least one firing and one silent case in rules.test.yaml, and every
#      alert the tests name exists;
#   4. `promtool test rules` runs the cases;
#   5. the component renders on top of deploy/base with kustomize (kubectl from the cached
#      virtualenv of validate-deploy.sh).
#
# Skips with the reason when promtool is missing, fails instead when CI=true.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/lib.sh
source .ci/lib.sh

component=deploy/components/alerts
ci_need promtool prometheus
ci_log "$(promtool --version 2>&1 | head -1)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=$(ci_venv)

# --- 1 and 3: extract the rules, check the cases cover every alert ------------------------
"$venv/bin/python" - "$component/prometheusrule.yaml" "$component/rules.test.yaml" "$work" <<'PY'
import sys

import yaml

rule_path, test_path, work = sys.argv[1:]
rule = yaml.safe_load(open(rule_path, encoding="utf-8"))
assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule", rule_path
with open(f"{work}/rules.yaml", "w", encoding="utf-8") as out:
    yaml.safe_dump(rule["spec"], out, sort_keys=False)

alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open(test_path, encoding="utf-8"))
assert tests["rule_files"] == ["rules.yaml"], f"{test_path}: rule_files must be [rules.yaml]"
firing, silent = set(), set()
for case in tests["tests"]:
    for check in case.get("alert_rule_test", []):
        (firing if check.get("exp_alerts") else silent).add(check["alertname"])
failures = [f"{a}: no firing case" for a in alerts if a not in firing]
failures += [f"{a}: no silent case" for a in alerts if a not in silent]
failures += [f"{a}: tested but not in {rule_path}" for a in sorted((firing | silent) - set(alerts))]
if len(set(alerts)) != len(alerts):
    failures.append("an alert name is used twice")
if failures:
    sys.exit("alerts-check: FAIL: " + "; ".join(failures))
print(f"alerts-check: {len(alerts)} alerts, each with a firing and a silent case", file=sys.stderr)
PY
cp "$component/rules.test.yaml" "$work/"

# --- 2 and 4: promtool --------------------------------------------------------------------
promtool check rules "$work/rules.yaml" || ci_die "promtool check rules"
(cd "$work" && promtool test rules rules.test.yaml) || ci_die "promtool test rules ($component/rules.test.yaml)"

# --- 5: the component renders on top of the base --------------------------------------------
mkdir -p "$work/render"
rel=$("$venv/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD" "$work/render")
cat >"$work/render/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: ["$rel/deploy/base"]
components: ["$rel/deploy/components/podmonitor", "$rel/$component"]
YAML
"$venv/bin/kubectl" kustomize "$work/render" >"$work/rendered.yaml" || ci_die "$component does not render on top of deploy/base"
grep -q '^kind: PrometheusRule$' "$work/rendered.yaml" || ci_die "$component renders no PrometheusRule"
ci_log "OK"
