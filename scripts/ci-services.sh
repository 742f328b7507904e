#!/usr/bin/env bash
# Install and start the services the test suite uses for real (Debian): PostgreSQL and Chromium.
# Idempotent: safe to run again on a machine where they already run.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
if ! command -v pg_ctlcluster >/dev/null || ! command -v chromium >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends postgresql chromium >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q online; then
  pg_lsclusters -h | grep -q "^$version main" || $SUDO pg_createcluster "$version" main >/dev/null
  $SUDO pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 30); do
  as_postgres psql -qtAc "select 1" >/dev/null 2>&1 && break
  sleep 1
done
as_postgres psql -qtAc "select 1 from pg_roles where rolname='factory'" | grep -q 1 \
  || as_postgres psql -qc "create role factory login superuser password 'factory'"
as_postgres psql -qtAc "select 1 from pg_database where datname='factory'" | grep -q 1 \
  || as_postgres createdb -O factory factory
echo "services: PostgreSQL $version on 127.0.0.1:5432 (role factory), $(chromium --version 2>/dev/null || echo 'no chromium')"
