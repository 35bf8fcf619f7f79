#!/usr/bin/env python3
"""Checks the chart's optional monitoring objects; called by the offline tests (tests/offline/rules.rs).

- With the defaults, `helm template` renders neither a PrometheusRule nor the
  dashboard ConfigMap (the default rendering is the plain manifest).
- `metrics.prometheusRule.enabled=true` renders one PrometheusRule whose spec
  equals deploy/prometheus/tcpwatch-rules.yml and passes `promtool check
  rules`, with the chart's labels and the extra ones asked for.
- `metrics.grafanaDashboard.enabled=true` renders one ConfigMap that
  validates (kubernetes-validate, strict), carries the sidecar label
  `grafana_dashboard: "1"` and the annotations asked for, and holds
  deploy/grafana/tcpwatch.json byte for byte.
- Each option renders its own object only.

Exits non-zero with one line on stderr on failure; prints "ok" otherwise.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/tcpwatch"
RULES = ROOT / "deploy/prometheus/tcpwatch-rules.yml"
DASHBOARD = ROOT / "deploy/grafana/tcpwatch.json"


def fail(message):
    print(f"check_monitoring: {message}", file=sys.stderr)
    sys.exit(1)


def render(*sets):
    args = ["helm", "template", "tcpwatch", str(CHART)]
    for s in sets:
        args += ["--set", s]
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{' '.join(args)}: {run.stderr.strip()}")
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def kinds(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def only(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        fail(f"expected one {kind}/{name}, rendered: {kinds(docs)}")
    return found[0]


def check_rule(rule):
    if rule.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"PrometheusRule apiVersion is {rule.get('apiVersion')}")
    labels = rule["metadata"].get("labels", {})
    if labels.get("release") != "kps" or labels.get("app.kubernetes.io/name") != "tcpwatch":
        fail(f"PrometheusRule labels: {labels}")
    if rule.get("spec") != yaml.safe_load(RULES.read_text()):
        fail("the PrometheusRule's spec differs from deploy/prometheus/tcpwatch-rules.yml")
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rule["spec"], f)
        f.flush()
        run = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"promtool check rules (PrometheusRule spec): {run.stdout}{run.stderr}")


def check_dashboard(config_map):
    try:
        kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)
    except Exception as e:  # the library raises several types
        fail(f"dashboard ConfigMap: {e}")
    meta = config_map["metadata"]
    if meta.get("labels", {}).get("grafana_dashboard") != "1":
        fail(f"dashboard ConfigMap lacks the sidecar label grafana_dashboard: \"1\": {meta}")
    if meta.get("annotations") != {"grafana_folder": "Security"}:
        fail(f"dashboard ConfigMap annotations: {meta.get('annotations')}")
    data = config_map.get("data", {})
    if list(data) != ["tcpwatch.json"]:
        fail(f"dashboard ConfigMap keys: {list(data)}")
    if data["tcpwatch.json"] != DASHBOARD.read_text():
        fail("the dashboard ConfigMap's tcpwatch.json differs from deploy/grafana/tcpwatch.json")
    json.loads(data["tcpwatch.json"])


def main():
    default = render()
    for doc in default:
        if doc["kind"] == "PrometheusRule" or doc["metadata"]["name"] == "tcpwatch-dashboard":
            fail(f"the default rendering has {doc['kind']}/{doc['metadata']['name']}")

    rule_on = [
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kps",
    ]
    dashboard_on = [
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.annotations.grafana_folder=Security",
    ]
    both = render(*rule_on, *dashboard_on)
    check_rule(only(both, "PrometheusRule", "tcpwatch"))
    check_dashboard(only(both, "ConfigMap", "tcpwatch-dashboard"))
    base = kinds(default)
    for sets, extra in ((rule_on, "PrometheusRule/tcpwatch"), (dashboard_on, "ConfigMap/tcpwatch-dashboard")):
        got = kinds(render(*sets))
        if got != sorted(base + [extra]):
            fail(f"--set {' '.join(sets)} rendered {got}, expected the defaults plus {extra}")
    print("ok")


if __name__ == "__main__":
    main()
