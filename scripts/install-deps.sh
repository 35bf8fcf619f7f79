#!/usr/bin/env bash
# Installs what running and testing tcpwatch need, when run as root on a
# Debian/Ubuntu host, and only what is missing: Debian packages first, then
# the test tools Debian does not package (scripts/install-test-tools.sh).
# Not root: says what is missing and goes on (tests that need it skip
# locally, and fail in CI).
set -euo pipefail

packages=(
  nftables iptables ipset iproute2 procps psmisc systemd ethtool
  ncat nmap masscan hping3 tcpdump wireshark-common curl python3 prometheus faketime
  libpcap-dev clang llvm libbpf-dev bpftool
  docker.io debootstrap util-linux libcap2-bin
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-deps: not root or no apt-get; missing packages: ${missing[*]}" >&2
  else
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

"$(dirname "$0")/install-test-tools.sh"
