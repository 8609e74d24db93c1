#!/usr/bin/env bash
# System packages the tests use: redis-server (API cache tests) and chromium (dashboard browser test).
# Idempotent: does nothing when both are on PATH. Needs root or passwordless sudo and apt-get (Debian/Ubuntu).
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "error: ${missing[*]} missing and neither root nor passwordless sudo; install them with apt-get" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "error: ${missing[*]} missing and no apt-get here" >&2; exit 1; }

echo "installing system packages: ${missing[*]}"
for attempt in 1 2 3; do
  if $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
     && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  then exit 0; fi
  echo "apt-get failed (attempt $attempt), retrying" >&2
  sleep $((attempt * 5))
done
echo "error: could not install ${missing[*]} with apt-get" >&2
exit 1
