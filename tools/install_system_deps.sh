#!/usr/bin/env bash
# Debian packages the test bed needs; installs only what is missing so a warm run is instant.
# prometheus is the real server the dashboard e2e scrapes the bed with (tests/testbed/prometheus.py).
# buildah, mmdebstrap and uidmap build the container images without a registry (tools/build_images.py);
# runc, the CNI plugins, iptables and conntrack are what the kubelet nodes' containerd, CNI bridge and
# kube-proxy run (tests/testbed/kubelet.py). fio and perf are what `make bench` measures the data path and
# profiles the agents with (bench/data_path.py, bench/profile.py).
set -euo pipefail
needed=(lvm2 xfsprogs e2fsprogs fdisk util-linux mount iproute2 openssl prometheus buildah mmdebstrap uidmap
  runc containernetworking-plugins iptables conntrack fio linux-perf)
missing=()
for pkg in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[system-deps] installing ${missing[*]}"
  # Packages like prometheus start a system service on install. The bed runs its own, tagged per run,
  # so keep apt from starting any daemon: a policy-rc.d that denies, unless the machine has one already.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "[system-deps] Go is required to build the test-bed tools" >&2; exit 1; }
echo "[system-deps] ok"
