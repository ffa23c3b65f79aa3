#!/usr/bin/env python3
"""Static checks of the deploy artefacts that no tool on the CI machine runs for real: the
Dockerfile, docker-compose.yml, the Kubernetes manifests (as rendered by `kubectl kustomize`,
given on stdin, or read from the files when kubectl is absent) and the Grafana dashboard and
provisioning. Each check is a fact the deployment depends on; a failure names the file.

Usage: deploy/check_manifests.py [RENDERED_K8S_YAML]   (run from the repository root)
"""
import json
import os
import re
import sys

import yaml

errors = []


def check(cond, where, what):
    if not cond:
        errors.append(f"{where}: {what}")
    return cond


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- Dockerfile --------------------------------------------------------------------------
DF = "deploy/Dockerfile"
dockerfile = open(DF).read()
lines = [l.strip() for l in dockerfile.splitlines()]
froms = [l for l in lines if l.startswith("FROM ")]
check(len(froms) >= 2, DF, "multi-stage: at least two FROM")
check(any(re.match(r"FROM rust:1-bookworm AS \w+", l) for l in froms), DF, "builder is rust:1-bookworm")
check("cargo build --release --locked" in dockerfile, DF, "builds with cargo build --release --locked")
runtime = froms[-1] if froms else ""
check("bookworm-slim" in runtime or "distroless" in runtime, DF, "slim or distroless runtime")
users = [l.split()[1] for l in lines if l.startswith("USER ")]
check(users and users[-1].split(":")[0] not in ("0", "root"), DF, "runs as a non-root USER")
check(any(l.startswith("VOLUME") and "/etc/payroute" in l and "/var/lib/payroute" in l for l in lines), DF,
      "config and data are volumes")
hc_block = re.search(r"^HEALTHCHECK .*?(?<!\\)$", dockerfile, re.M | re.S)
health_url = re.search(r"PAYROUTE_HEALTH_URL=(\S+)", dockerfile)
check(hc_block and health_url and "$PAYROUTE_HEALTH_URL" in hc_block.group(0)
      and health_url.group(1).endswith("/healthz"), DF, "HEALTHCHECK on /healthz")
if "distroless" in runtime:
    check("curl" not in dockerfile, DF, "distroless has no curl")
for l in lines:
    if l.startswith("COPY ") and "--from" not in l:
        for src in l.split()[1:-1]:
            check(os.path.exists(src), DF, f"COPY source {src} exists (build context: repository root)")
ignored = open(".dockerignore").read().split()
check("target" in ignored, ".dockerignore", "keeps target/ out of the build context")

# --- docker-compose.yml ------------------------------------------------------------------
DC = "deploy/docker-compose.yml"
compose = yaml.safe_load(open(DC))
services = compose.get("services", {})
for s in ["payroute", "postgres", "redis", "prometheus", "grafana"]:
    check(s in services, DC, f"service {s}")
check(services.get("postgres", {}).get("image", "").startswith("postgres:16"), DC, "postgres:16")
check(services.get("redis", {}).get("image", "").startswith("redis:7"), DC, "redis:7")
for name, svc in services.items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            check(os.path.exists(os.path.join("deploy", src)), DC, f"{name}: mount source {src} exists")
        elif src not in compose.get("volumes", {}):
            check(src.startswith("/"), DC, f"{name}: volume {src} is declared")
    build = svc.get("build")
    if build:
        ctx = os.path.normpath(os.path.join("deploy", build.get("context", ".")))
        check(os.path.exists(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))), DC,
              f"{name}: dockerfile exists in context")
prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in services.get("prometheus", {}).get("volumes", [])}
check(prom_mounts.get("/etc/prometheus/alerts.yml") == "./prometheus/alerts.yml", DC, "prometheus loads alerts.yml")
graf_mounts = [v.split(":")[1] for v in services.get("grafana", {}).get("volumes", [])]
check("/etc/grafana/provisioning/dashboards" in graf_mounts and "/etc/grafana/provisioning/datasources" in graf_mounts,
      DC, "grafana provisioning mounted")
prom_cfg = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
targets = [t for sc in prom_cfg["scrape_configs"] if sc["job_name"] == "payroute"
           for s in sc.get("static_configs", []) for t in s["targets"]]
compose_cfg = yaml.safe_load(open("deploy/compose/payroute.yaml"))
admin_port = compose_cfg["server"]["admin_listen"].rsplit(":", 1)[1]
check(f"payroute:{admin_port}" in targets, "deploy/prometheus/prometheus.yml",
      f"scrapes the compose payroute on its admin port {admin_port}")
check(compose_cfg["server"]["admin_listen"].startswith("0.0.0.0:"), "deploy/compose/payroute.yaml",
      "admin listener reachable from the other containers")
check(health_url and f":{admin_port}/" in health_url.group(1), DF,
      "HEALTHCHECK port is the compose config's admin port")

# --- Grafana -----------------------------------------------------------------------------
GJ = "deploy/grafana/payroute.json"
dash = json.load(open(GJ))
check(35 <= dash.get("schemaVersion", 0) <= 41, GJ, "schemaVersion ~39")
ids = [p["id"] for p in dash["panels"]]
check(len(ids) == len(set(ids)), GJ, "unique panel ids")
tvars = {v["name"]: v for v in dash["templating"]["list"]}
check(tvars.get("DS", {}).get("type") == "datasource", GJ, "datasource variable DS")
for p in dash["panels"]:
    if p["type"] == "row":
        continue
    check(p.get("datasource", {}).get("uid") == "${DS}", GJ, f"panel {p['title']!r} uses ${{DS}}")
    check(p.get("targets"), GJ, f"panel {p['title']!r} has queries")
    for t in p.get("targets", []):
        check(t.get("datasource", {}).get("uid") == "${DS}", GJ, f"panel {p['title']!r} query uses ${{DS}}")
for v in ["job", "instance", "channel"]:
    check(v in tvars, GJ, f"variable {v}")
dsp = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
check(any(d["type"] == "prometheus" and d.get("isDefault") for d in dsp["datasources"]),
      "provisioning/datasources", "a default Prometheus datasource")
dbp = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/payroute.yml"))
paths = [p["options"]["path"] for p in dbp["providers"]]
check(any(m.startswith(tuple(paths)) for m in graf_mounts), "provisioning/dashboards",
      "the provider's path is where compose mounts the dashboard")

# --- Alerts: labels, annotations, runbooks that exist --------------------------------------
AL = "deploy/prometheus/alerts.yml"
readme = open("README.md").read()


def slug(heading):
    # GitHub's anchor: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


anchors = {slug(m) for m in re.findall(r"^#+ (.+)$", readme, re.M)}
alerts = [r for g in yaml.safe_load(open(AL))["groups"] for r in g["rules"] if "alert" in r]
for r in alerts:
    a = r["alert"]
    check(r.get("labels", {}).get("severity") in ("critical", "warning", "info"), AL, f"{a}: severity label")
    ann = r.get("annotations", {})
    for k in ["summary", "description", "runbook"]:
        check(ann.get(k), AL, f"{a}: {k} annotation")
    rb = ann.get("runbook", "")
    check(rb.startswith("README.md#") and rb.split("#", 1)[1] in anchors, AL,
          f"{a}: runbook {rb} is a heading of README.md")
tested = set(re.findall(r"alertname: (\w+)", open("deploy/prometheus/alerts_test.yml").read()))
for r in alerts:
    check(r["alert"] in tested, "deploy/prometheus/alerts_test.yml", f"{r['alert']} is tested")

# --- Kubernetes --------------------------------------------------------------------------
K = "deploy/k8s"
if len(sys.argv) > 1:
    docs = load_all(sys.argv[1])
else:
    kust = yaml.safe_load(open(f"{K}/kustomization.yaml"))
    docs = [d for r in kust["resources"] for d in load_all(f"{K}/{r}")]
    for g in kust.get("configMapGenerator", []):
        docs.append({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": g["name"]},
                     "data": {os.path.basename(f): open(f"{K}/{f}").read() for f in g["files"]}})
by_kind = {}
for d in docs:
    check("apiVersion" in d and "kind" in d and d.get("metadata", {}).get("name"), K, f"object {d} is named and typed")
    by_kind.setdefault(d["kind"], []).append(d)
for kind in ["Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "ConfigMap"]:
    check(kind in by_kind, K, f"has a {kind}")
if errors:
    print("\n".join(errors))
    sys.exit(1)

dep = by_kind["Deployment"][0]
spec = dep["spec"]
pod = spec["template"]["spec"]
labels = spec["template"]["metadata"]["labels"]
check(spec.get("replicas") == 2, K, "Deployment: 2 replicas")
check(all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), K, "Deployment selector matches its pods")
c = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
def probe(name):
    g = c.get(name, {}).get("httpGet", {})
    return g.get("path"), g.get("port")
check(probe("readinessProbe") == ("/readyz", "admin"), K, "readiness /readyz on the admin port")
check(probe("livenessProbe") == ("/healthz", "admin"), K, "liveness /healthz on the admin port")
cfg = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["payroute.yaml"])
check(ports.get("admin") == int(cfg["server"]["admin_listen"].rsplit(":", 1)[1]), K, "admin port is the config's admin_listen")
check(ports.get("api") == int(cfg["server"]["listen"].rsplit(":", 1)[1]), K, "api port is the config's listen")
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, K, "pod runs as non-root")
check(csc.get("readOnlyRootFilesystem") is True, K, "read-only root filesystem")
check(csc.get("allowPrivilegeEscalation") is False, K, "no privilege escalation")
check("ALL" in csc.get("capabilities", {}).get("drop", []), K, "drops all capabilities")
check(c.get("resources", {}).get("requests") and c["resources"].get("limits"), K, "resources requests and limits")
vols = {v["name"]: v for v in pod["volumes"]}
mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
args = c.get("args", [])
cfg_path = args[args.index("--config") + 1] if "--config" in args else ""
cfg_dir = os.path.dirname(cfg_path)
m = mounts.get(cfg_dir)
if check(m is not None, K, f"the config's directory {cfg_dir} is a mount"):
    check("subPath" not in m, K, "config mounted as a directory (no subPath), so updates arrive")
    v = vols[m["name"]]
    check(v.get("configMap", {}).get("name") == by_kind["ConfigMap"][0]["metadata"]["name"], K, "config from the ConfigMap")
secret_files = set(re.findall(r"file:(/etc/payroute/secrets)/([A-Z0-9_]+)", by_kind["ConfigMap"][0]["data"]["payroute.yaml"]))
sm = mounts.get("/etc/payroute/secrets")
if check(sm is not None and "secret" in vols[sm["name"]], K, "keys mounted from a Secret at /etc/payroute/secrets"):
    check(len(secret_files) >= 5, K, "the config reads its secrets from the Secret")
check(pod.get("terminationGracePeriodSeconds", 30) > 30, K, "grace period longer than the 30s drain")
svc = by_kind["Service"][0]
check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), K, "Service selects the pods")
svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
for p in svc_ports.values():
    check(p.get("targetPort") in ports or p.get("targetPort") in ports.values(), K, f"Service port {p['name']} targets a container port")
pdb = by_kind["PodDisruptionBudget"][0]
check(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), K, "PDB selects the pods")
check(pdb["spec"].get("minAvailable") == 1 or pdb["spec"].get("maxUnavailable") == 1, K, "PDB keeps one replica")
smon = by_kind["ServiceMonitor"][0]
check(all(svc["metadata"].get("labels", {}).get(k) == v for k, v in smon["spec"]["selector"]["matchLabels"].items()),
      K, "ServiceMonitor selects the Service")
for e in smon["spec"]["endpoints"]:
    check(e.get("port") in svc_ports, K, f"ServiceMonitor port {e.get('port')} is a Service port")
    check(e.get("path", "/metrics") == "/metrics", K, "ServiceMonitor scrapes /metrics")

if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"deploy artefacts: {len(alerts)} alerts with runbooks, Dockerfile, compose ({len(services)} services), "
      f"{len(docs)} Kubernetes objects, dashboard ({len(dash['panels'])} panels): ok")
