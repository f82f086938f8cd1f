#!/usr/bin/env bash
# Debian packages the test bed needs; installs only what is missing so a warm run is instant.
set -euo pipefail
needed=(lvm2 xfsprogs e2fsprogs fdisk util-linux mount iproute2 openssl)
missing=()
for pkg in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[system-deps] installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "[system-deps] Go is required to build the test-bed tools" >&2; exit 1; }
echo "[system-deps] ok"
