#!/usr/bin/env bash
# An emulated arm64 board on an x86 build host: a Debian bookworm arm64 root (debootstrap) whose
# binaries run through qemu user-mode emulation (binfmt_misc), with the device side installed in it by
# the documentation's "Install on a board" page (docs/guide/board.md), run as written.
# `factory bundle parity --root ROOT` and the arm64 tests use it.
#
#   sudo scripts/arm64-root.sh ROOT        (~3 min for the root, ~2 min for the install; cached in ROOT)
#
# Needs root (debootstrap, chroot, binfmt_misc) and Debian's package mirror and PyPI. The root is made
# once (ROOT/.factory-root-ready); the device install is redone only when the factory's wheel changes.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:?usage: scripts/arm64-root.sh ROOT}"
root="$(realpath -m "$root")"
py="${PYTHON:-.venv/bin/python}"
started=$SECONDS

if [ "$(uname -m)" != "aarch64" ]; then
  need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || need+=(qemu-user-static)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
    || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "this host cannot run arm64 binaries: binfmt_misc is not available to register qemu-aarch64" >&2
    exit 3  # the environment, not the install: callers may skip
  fi
fi

if [ ! -e "$root/.factory-root-ready" ]; then
  rm -rf "$root.partial"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root.partial" http://deb.debian.org/debian
  # the build host's network settings and local CAs (a TLS-intercepting proxy's, where there is one)
  cp /etc/resolv.conf "$root.partial/etc/resolv.conf"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root.partial/usr/local/share/ca-certificates/"
    chroot "$root.partial" /usr/sbin/update-ca-certificates >/dev/null
  fi
  touch "$root.partial/.factory-root-ready"
  rm -rf "$root"
  mv "$root.partial" "$root"
fi
echo "arm64 root ready in $root ($((SECONDS - started)) s)"

# The device install, by the documentation's board page (the lines between its board-install markers)
work="$root/root/install"
rm -rf "$work"
mkdir -p "$work"
"$py" -m pip wheel --quiet --no-deps -w "$work" . 2>/dev/null
cp requirements/constraints.txt "$work/"
cp docs/guide/board.md "$work/"
stamp="$(sha256sum "$work"/edge_model_factory-*.whl | cut -c1-64)"
if [ "$(cat "$root/opt/factory-agent/.wheel" 2>/dev/null)" != "$stamp" ]; then
  sed -n '/<!-- board-install -->/,/<!-- \/board-install -->/p' docs/guide/board.md | sed -n '/^```bash$/,/^```$/p' \
    | grep -v '^```' > "$work/install.sh"
  [ -s "$work/install.sh" ] || { echo "docs/guide/board.md has no board-install section" >&2; exit 1; }
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  trap 'umount -l "$root/proc" "$root/dev"' EXIT
  rm -rf "$root/opt/factory-agent"
  install_started=$SECONDS
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    bash -euxo pipefail -c "cd /root/install && . ./install.sh"
  echo "$stamp" > "$root/opt/factory-agent/.wheel"
  echo "$((SECONDS - install_started))" > "$root/opt/factory-agent/.install-seconds"
fi
echo "device install in $root/opt/factory-agent ($((SECONDS - started)) s in all)"
