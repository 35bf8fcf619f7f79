#!/usr/bin/env bash
# Installs the Debian packages that running and testing tcpwatch need, when
# run as root on a Debian/Ubuntu host and only those that are missing.
# Not root: says what it would need and goes on (tests that need them skip
# locally, and fail in CI).
set -euo pipefail

packages=(
  nftables iptables ipset iproute2 procps psmisc
  ncat nmap hping3 tcpdump curl python3
  clang llvm libbpf-dev bpftool
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-deps: not root or no apt-get; missing packages: ${missing[*]}" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
