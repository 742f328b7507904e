#!/usr/bin/env bash
# Build the two container images for real with podman (daemonless), from a base made here with
# debootstrap, so no image registry needs to be reachable:
#   localhost/factory-base:bookworm       Debian bookworm, Python 3.11 in a venv on PATH (what python:3.11-slim gives)
#   localhost/factory:dev                 the factory (Dockerfile)
#   localhost/factory-agent:$RUNTIME      the device agent (deploy/device/Dockerfile), one runtime
# Usage: scripts/build-images.sh            (RUNTIME=onnxruntime|litert|openvino, WORK=.cache/images)
# Needs root (debootstrap, chroot), podman and debootstrap (apt-get install podman runc debootstrap). The package
# indexes this machine's pip uses (find-links, file:// indexes, its config) are mounted into the builds read-only.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime="${RUNTIME:-onnxruntime}"
work="$(realpath -m "${WORK:-.cache/images}")"
base=localhost/factory-base:bookworm
mkdir -p "$work"
# In a sandbox whose cgroups are v1/hybrid and whose rlimits cannot be raised (this build host), crun refuses
# to start containers: runc with cgroupfs and no default ulimits works there and anywhere else.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  printf '[containers]\ndefault_ulimits = []\npids_limit = 0\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' \
    >"$work/containers.conf"
  export CONTAINERS_CONF="$work/containers.conf"
fi
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-images: $tool is not installed (apt-get install $tool)" >&2; exit 2; }
done

if ! podman image exists "$base"; then
  root="$work/rootfs"
  rm -rf "$root"
  echo "base: debootstrap bookworm (minbase, python3, venv)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log"
  chroot "$root" python3 -m venv /opt/python
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python"]' - "$base" >/dev/null
  rm -rf "$root"
fi

# this machine's pip configuration, for the builds: the same indexes and caps as scripts/install.sh sees here
mounts=()
conf="$work/pip.conf"
python3 - "$conf" <<'EOF' >"$work/mounts"
import subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
values = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    values[key.split(".", 1)[-1]] = value.strip().strip("'")
dirs = set()
lines = ["[global]"]
for key in ("find-links", "extra-index-url", "index-url", "constraint", "cert", "default-timeout"):
    if key in values:
        lines.append(f"{key} = {values[key]}")
        for item in values[key].split():
            path = item[len("file://"):] if item.startswith("file://") else item
            if path.startswith("/") and key != "cert":
                dirs.add(path.rsplit("/simple", 1)[0] if path.endswith("/simple") else path)
            elif key == "cert":  # a proxy's CA bundle: the builds must trust what this machine trusts
                print(f"CERT {path}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
for d in sorted(dirs):
    print(d)
EOF
mounts+=(--volume "$conf:/etc/pip.conf:ro")
while read -r d; do
  case "$d" in CERT\ *) mounts+=(--volume "${d#CERT }:${d#CERT }:ro"); continue ;; esac
  if [ -f "$d" ]; then mounts+=(--volume "$(dirname "$d"):$(dirname "$d"):ro"); elif [ -d "$d" ]; then mounts+=(--volume "$d:$d:ro"); fi
done <"$work/mounts"

start=$(date +%s)
podman build --network host "${mounts[@]}" --build-arg BASE="$base" -f Dockerfile -t localhost/factory:dev . \
  >"$work/factory.log" 2>&1 || { tail -30 "$work/factory.log" >&2; exit 1; }
main_s=$(( $(date +%s) - start ))
start=$(date +%s)
podman build --network host "${mounts[@]}" --build-arg BASE="$base" --build-arg RUNTIME="$runtime" \
  -f deploy/device/Dockerfile -t "localhost/factory-agent:$runtime" . \
  >"$work/agent.log" 2>&1 || { tail -30 "$work/agent.log" >&2; exit 1; }
agent_s=$(( $(date +%s) - start ))
size() { podman image inspect --format '{{.Size}}' "$1"; }
echo "{\"base\": \"$base\", \"base_bytes\": $(size "$base"), \"factory\": \"localhost/factory:dev\", \"factory_bytes\": $(size localhost/factory:dev), \"factory_build_s\": $main_s, \"agent\": \"localhost/factory-agent:$runtime\", \"agent_bytes\": $(size "localhost/factory-agent:$runtime"), \"agent_build_s\": $agent_s}"
