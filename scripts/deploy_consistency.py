"""Cross-checks one rendered kustomize overlay (multi-document YAML on stdin) against the
proxy.toml in its ConfigMap: what a schema cannot see (ports, probe paths, drain timings,
Secret files, the sidecar's security settings).

Usage: kubectl kustomize DIR | python3 deploy_consistency.py NAME [CONFIG_OUT]
Writes the ConfigMap's proxy.toml to CONFIG_OUT (for `cacheside check-config`) when given.
"""
import re
import sys
import tomllib

import yaml

name = sys.argv[1]
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
errors = []


def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + f"{name}: {msg}")
    if not ok:
        errors.append(msg)


def seconds(text):
    """A proxy.toml duration ("20s", "500ms", "1m", "0s") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text):
        total += float(value) * units[unit]
    return total


def one(kind):
    found = [d for d in docs if d["kind"] == kind]
    check(len(found) == 1, f"one {kind}")
    return found[0] if found else {}


deploy = one("Deployment")
config_map = one("ConfigMap")
conf = tomllib.loads(config_map.get("data", {}).get("proxy.toml", ""))
pod = deploy["spec"]["template"]
spec = pod["spec"]
sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "cacheside"]
check(len(sidecars) == 1, "cacheside is an init container")
side = sidecars[0]
check(side.get("restartPolicy") == "Always", "restartPolicy: Always (native sidecar)")

# Ports and probes against [server] and [admin].
ports = {p["name"]: p["containerPort"] for p in side.get("ports", [])}
admin_port = int(conf.get("admin", {}).get("listen", "127.0.0.1:9380").rsplit(":", 1)[1])
admin_host = conf.get("admin", {}).get("listen", "127.0.0.1:9380").rsplit(":", 1)[0]
check(admin_host in ("0.0.0.0", "[::]"), f"admin.listen on all interfaces so the kubelet can probe ({admin_host})")
server_port = int(conf.get("server", {}).get("listen", "127.0.0.1:6380").rsplit(":", 1)[1])
check(server_port in ports.values(), f"server.listen port {server_port} is a container port")
admin_names = [n for n, p in ports.items() if p == admin_port]
check(len(admin_names) == 1, f"admin port {admin_port} is a named container port")
admin_name = admin_names[0] if admin_names else None
for probe, path in (("startupProbe", "/startupz"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
    get = side.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path and get.get("port") in (admin_name, admin_port),
          f"{probe} is GET {path} on the admin port")
ann = pod["metadata"].get("annotations", {})
if ann.get("prometheus.io/scrape") == "true":
    check(ann.get("prometheus.io/port") == str(admin_port) and ann.get("prometheus.io/path") == "/metrics",
          "prometheus.io annotations point at the admin port's /metrics")
for pm in (d for d in docs if d["kind"] == "PodMonitor"):
    sel = pm["spec"]["selector"].get("matchLabels", {})
    labels = pod["metadata"].get("labels", {})
    check(all(labels.get(k) == v for k, v in sel.items()), "PodMonitor selects the pod's labels")
    check(all(e.get("port") == admin_name and e.get("path", "/metrics") == "/metrics"
              for e in pm["spec"]["podMetricsEndpoints"]), "PodMonitor scrapes the admin port's /metrics")

# Drain timings: the pod's grace period covers the app's preStop and cacheside's whole drain.
shutdown = conf.get("shutdown", {})
grace = seconds(shutdown.get("grace_period", "25s"))
min_drain = seconds(shutdown.get("min_drain", "5s"))
check(min_drain < grace or min_drain == 0, f"min_drain {min_drain}s < grace_period {grace}s")
pre_stop = max((c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                for c in spec.get("containers", [])), default=0)
tgps = spec.get("terminationGracePeriodSeconds", 30)
check(tgps > grace + pre_stop,
      f"terminationGracePeriodSeconds {tgps} > app preStop {pre_stop}s + shutdown.grace_period {grace}s")

# Security settings of the sidecar.
sc = side.get("securityContext", {})
pod_sc = spec.get("securityContext", {})
check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "runAsNonRoot with a non-root uid")
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
check((sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
      "seccomp RuntimeDefault")
check("memory" in side.get("resources", {}).get("limits", {}) and "cpu" in side.get("resources", {}).get("requests", {}),
      "resources: cpu request and memory limit")

# Every *_file key names a file that a mounted volume provides.
mounts = {m["mountPath"].rstrip("/"): m["name"] for m in side.get("volumeMounts", [])}
volumes = {v["name"]: v for v in spec.get("volumes", [])}
secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
check(mounts.get("/etc/cacheside") in volumes and "configMap" in volumes[mounts["/etc/cacheside"]],
      "the ConfigMap is mounted at /etc/cacheside (the image's --config path)")
check(volumes.get(mounts.get("/etc/cacheside"), {}).get("configMap", {}).get("name") == config_map["metadata"]["name"],
      "the mounted ConfigMap is the generated one")
files = []
for section, table in conf.items():
    if isinstance(table, dict):
        files += [(f"{section}.{k}", v) for k, v in table.items() if k.endswith("_file")]
for key, path in files:
    directory, _, fname = path.rpartition("/")
    vol = volumes.get(mounts.get(directory, ""), {})
    secret = secrets.get(vol.get("secret", {}).get("secretName"), {})
    provided = set(secret.get("data", {})) | set(secret.get("stringData", {}))
    check(fname in provided, f"{key} = {path} is a key of the mounted Secret")
if "iam" in conf.get("upstream", {}):
    sa = next((d for d in docs if d["kind"] == "ServiceAccount"
               and d["metadata"]["name"] == spec.get("serviceAccountName")), {})
    check("eks.amazonaws.com/role-arn" in sa.get("metadata", {}).get("annotations", {}),
          "upstream.iam: the pod's ServiceAccount carries an IRSA role")
    check(conf["upstream"].get("url", "").startswith("rediss://"), "upstream.iam: rediss:// (IAM needs TLS)")

if len(sys.argv) > 2:
    open(sys.argv[2], "w").write(config_map["data"]["proxy.toml"])
sys.exit(1 if errors else 0)
