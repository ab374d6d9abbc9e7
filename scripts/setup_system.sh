#!/usr/bin/env bash
# System packages the end-to-end tests drive for real: headless Chromium (the HTML report's browser
# test), PostgreSQL 15 (the shadow store) and nginx (the mirroring front of deploy/nginx/). Debian's packages; idempotent, quick when present.
# Needs root or passwordless sudo; without either it says what to install and fails.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "servecmp tests need these Debian packages: ${need[*]} (apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]} (Debian packages) ..."
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
