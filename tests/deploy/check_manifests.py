#!/usr/bin/env python3
"""Checks the deployment files; called by tests/deploy.rs.

- Chart.yaml and values.yaml parse, and name the fields the chart uses;
- every plain manifest under deploy/kubernetes/ validates (strict) against the
  Kubernetes schemas (kubernetes-validate, offline);
- when `helm` is on PATH: `helm lint`, `helm template` with the defaults and
  with every optional part switched on; the output validates, and the default
  rendering is exactly the committed plain manifest;
- fleet mode off (no fleet flag, no fleet volume) and on (one --fleet per
  URL, the node's name, the Redis password only as a file mounted from its
  Secret, the CA from a Secret or a ConfigMap), and a URL with a password
  refused.

Prints one JSON object: {"helm": bool, "configs": [TOML text, ...]} with the
agent configuration of every rendered ConfigMap, for the Rust side to parse
with the agent's own config loader. Exits non-zero with a reason on failure.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/tcpwatch"
PLAIN = ROOT / "deploy/kubernetes"
K8S_VERSION = kubernetes_validate.latest_version()
# Custom resources have no schema in the Kubernetes set; checked by shape.
CUSTOM_KINDS = {"ServiceMonitor"}


def fail(message):
    print(f"check_manifests: {message}", file=sys.stderr)
    sys.exit(1)


def validate(docs, where):
    kinds = []
    for doc in docs:
        if not doc:
            continue
        kind = doc.get("kind")
        if kind in CUSTOM_KINDS:
            check_service_monitor(doc, where)
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except Exception as e:  # the library raises several types
                fail(f"{where}: {kind}/{doc.get('metadata', {}).get('name')}: {e}")
        kinds.append(kind)
    return kinds


def check_service_monitor(doc, where):
    endpoints = doc.get("spec", {}).get("endpoints", [])
    if doc.get("apiVersion") != "monitoring.coreos.com/v1" or not endpoints:
        fail(f"{where}: ServiceMonitor malformed")
    if endpoints[0].get("path") != "/metrics" or endpoints[0].get("port") != "metrics":
        fail(f"{where}: ServiceMonitor does not scrape port 'metrics' at /metrics")


def check_least_privilege(docs, where):
    """The agent's container: non-root, read-only root, capabilities from
    the binary (so no_new_privs must stay off: allowPrivilegeEscalation)."""
    for doc in docs:
        if not doc or doc.get("kind") != "DaemonSet":
            continue
        spec = doc["spec"]["template"]["spec"]
        agent = next(c for c in spec["containers"] if c["name"] == "tcpwatch")
        ctx = agent.get("securityContext", {})
        want = {
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": True,
        }
        for key, value in want.items():
            if ctx.get(key) != value:
                fail(f"{where}: tcpwatch container: securityContext.{key} is not {value}")
        if not ctx.get("runAsUser"):
            fail(f"{where}: tcpwatch container runs as root")
        caps = ctx.get("capabilities", {})
        if caps.get("drop") != ["ALL"] or "SYS_ADMIN" in caps.get("add", []):
            fail(f"{where}: tcpwatch container: capabilities must drop ALL and add no SYS_ADMIN")
        if spec.get("securityContext", {}).get("runAsUser") == 0:
            fail(f"{where}: pod runs as root")


def check_tracepoint(docs, where):
    """The tracepoint source's DaemonSet: the node's tracefs, cgroup2 tree
    and pod logs mounted read-only, the capabilities it needs, hostPID."""
    ds = next(d for d in docs if d and d.get("kind") == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "tcpwatch")
    mounts = {m["mountPath"]: m for m in agent.get("volumeMounts", [])}
    for path in ("/sys/kernel/tracing", "/host/cgroup", "/var/log/pods"):
        if not mounts.get(path, {}).get("readOnly"):
            fail(f"{where}: {path} is not mounted read-only")
    caps = agent["securityContext"]["capabilities"]["add"]
    for cap in ("BPF", "PERFMON", "DAC_READ_SEARCH", "SYS_PTRACE"):
        if cap not in caps:
            fail(f"{where}: the tracepoint source lacks {cap}")
    if "--cgroup-root=/host/cgroup" not in agent["args"]:
        fail(f"{where}: the agent is not told where the cgroup2 tree is")
    if spec.get("hostPID") is not True:
        fail(f"{where}: no hostPID")


FLEET_URLS = ["rediss://tcpwatch@redis-0.fleetfin.example:6380", "rediss://tcpwatch@redis-1.fleetfin.example:6380"]
PASSWORD_FILE = "/etc/tcpwatch-fleet/password/password"
CA_FILE = "/etc/tcpwatch-fleet/ca/ca.crt"


def agent_of(docs):
    ds = next(d for d in docs if d and d.get("kind") == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    return spec, next(c for c in spec["containers"] if c["name"] == "tcpwatch")


def check_fleet_off(docs, where):
    """Without fleet.urls: no fleet flag, no fleet volume."""
    spec, agent = agent_of(docs)
    if any(a.startswith("--fleet") or a.startswith("--node-name") for a in agent["args"]):
        fail(f"{where}: fleet flags without fleet.urls: {agent['args']}")
    if any(v["name"].startswith("fleet-") for v in spec.get("volumes", [])):
        fail(f"{where}: fleet volumes without fleet.urls")


def check_fleet(docs, where, ca_kind):
    """Fleet mode: one --fleet per URL, the node's name from the API, the
    password only as a file from the Secret (readable by the agent's group,
    never in args or env), the CA from a Secret or a ConfigMap."""
    spec, agent = agent_of(docs)
    args = agent["args"]
    if [a for a in args if a.startswith("--fleet=")] != [f"--fleet={u}" for u in FLEET_URLS]:
        fail(f"{where}: the Redis URLs are not passed: {args}")
    for want in ("--node-name=$(NODE_NAME)", f"--fleet-password-file={PASSWORD_FILE}", f"--fleet-tls-ca={CA_FILE}", "--fleet-scan-pairs=5"):
        if want not in args:
            fail(f"{where}: {want} missing from {args}")
    env = {e["name"]: e for e in agent.get("env", [])}
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail(f"{where}: NODE_NAME is not the node's name")
    if any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values()) or "TCPWATCH_FLEET_PASSWORD" in env:
        fail(f"{where}: the Redis password is in the environment")
    mounts = {m["name"]: m for m in agent.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for name, path in (("fleet-password", PASSWORD_FILE), ("fleet-ca", CA_FILE)):
        m = mounts.get(name)
        if not m or not m.get("readOnly") or not path.startswith(m["mountPath"] + "/"):
            fail(f"{where}: {name} not mounted read-only for {path}")
    secret = volumes["fleet-password"].get("secret", {})
    if secret.get("secretName") != "tcpwatch-redis-fleetfin" or secret.get("items") != [{"key": "redis-password", "path": "password"}]:
        fail(f"{where}: the password volume is not the Secret's key: {secret}")
    if secret.get("defaultMode") != 0o440 or spec.get("securityContext", {}).get("fsGroup") != agent["securityContext"]["runAsUser"]:
        fail(f"{where}: the password file is not the agent's group's only (mode 0440, fsGroup)")
    ca = volumes["fleet-ca"].get(ca_kind, {})
    name = ca.get("secretName") if ca_kind == "secret" else ca.get("name")
    if name != "redis-ca-fleetfin" or ca.get("items") != [{"key": "ca.crt", "path": "ca.crt"}]:
        fail(f"{where}: the CA volume is not the {ca_kind}: {volumes['fleet-ca']}")


def configs(docs):
    return [d["data"]["tcpwatch.toml"] for d in docs if d and d.get("kind") == "ConfigMap"]


def helm(*args):
    run = subprocess.run(["helm", *args], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"helm {' '.join(args)}: {run.stderr.strip()}")
    return run.stdout


def strip_comments(text):
    return "\n".join(l for l in text.splitlines() if not l.startswith("#")).strip()


def main():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    if chart.get("apiVersion") != "v2" or chart.get("name") != "tcpwatch":
        fail("Chart.yaml: expected apiVersion v2, name tcpwatch")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ("image", "config", "metrics", "resources", "tolerations", "capabilities"):
        if key not in values:
            fail(f"values.yaml: missing '{key}'")

    found = []
    for path in sorted(PLAIN.glob("*.yaml")):
        docs = list(yaml.safe_load_all(path.read_text()))
        kinds = validate(docs, path.name)
        check_least_privilege(docs, path.name)
        if "DaemonSet" not in kinds:
            fail(f"{path.name}: no DaemonSet")
        found += configs(docs)

    have_helm = shutil.which("helm") is not None
    if have_helm:
        helm("lint", "--strict", str(CHART))
        default = helm("template", "tcpwatch", str(CHART))
        committed = (PLAIN / "tcpwatch.yaml").read_text()
        if strip_comments(default) != strip_comments(committed):
            fail("deploy/kubernetes/tcpwatch.yaml differs from `helm template tcpwatch deploy/helm/tcpwatch`; regenerate it")
        full = helm(
            "template", "tcpwatch", str(CHART),
            "--set", "metrics.serviceMonitor.enabled=true",
            "--set", "config.allow={10.0.0.0/8,192.0.2.1}",
            "--set", "config.max-blocks-per-minute=off",
            "--set", "priorityClassName=system-node-critical",
        )
        docs = list(yaml.safe_load_all(full))
        kinds = validate(docs, "helm template (all options)")
        check_least_privilege(docs, "helm template (all options)")
        if "ServiceMonitor" not in kinds:
            fail("serviceMonitor.enabled=true rendered no ServiceMonitor")
        found += configs(docs)
        for source in ("tracepoint", "tracepoint,xdp"):
            where = f"helm template (config.source={source})"
            # helm splits --set values at commas unless escaped.
            value = source.replace(",", "\\,")
            rendered = helm("template", "tcpwatch", str(CHART), "--set-string", f"config.source={value}")
            docs = list(yaml.safe_load_all(rendered))
            validate(docs, where)
            check_least_privilege(docs, where)
            check_tracepoint(docs, where)
            found += configs(docs)

        check_fleet_off(list(yaml.safe_load_all(default)), "helm template (defaults)")
        for ca_kind, ca_value in (("secret", "fleet.tlsCA.secretName"), ("configMap", "fleet.tlsCA.configMapName")):
            where = f"helm template (fleet, CA from a {ca_kind})"
            rendered = helm(
                "template", "tcpwatch", str(CHART),
                "--set", "fleet.urls={" + ",".join(FLEET_URLS) + "}",
                "--set", "fleet.passwordSecret.name=tcpwatch-redis-fleetfin",
                "--set", "fleet.passwordSecret.key=redis-password",
                "--set", f"{ca_value}=redis-ca-fleetfin",
                "--set", "fleet.scanPairs=5",
            )
            docs = list(yaml.safe_load_all(rendered))
            validate(docs, where)
            check_least_privilege(docs, where)
            check_fleet(docs, where, ca_kind)
            found += configs(docs)
        refused = subprocess.run(
            ["helm", "template", "tcpwatch", str(CHART), "--set", "fleet.urls={redis://tcpwatch:hunter2@redis.fleetfin.example:6379}"],
            capture_output=True, text=True,
        )
        if refused.returncode == 0 or "password" not in refused.stderr:
            fail("a fleet URL holding a password is not refused")

    print(json.dumps({"helm": have_helm, "configs": found}))


if __name__ == "__main__":
    main()
