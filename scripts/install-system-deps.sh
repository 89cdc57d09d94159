#!/usr/bin/env bash
# Installs the Debian 12 packages flowkit needs to build, run and test. Idempotent; needs root.
# Skips apt entirely when everything is already present, so `make run` stays fast.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config python3-venv python3-dev
  libbpf-dev libelf-dev zlib1g-dev            # the C extension links libbpf
  clang llvm bpftool                           # `make bpf`, tests that compile eBPF objects
  iproute2 iputils-ping ethtool libcap2-bin   # namespaces, veths, tc; capsh (privilege tests)
  netsniff-ng pmacct                           # trafgen load and the libpcap peer (benchmarks)
  linux-perf                                   # bench_copy_path: perf samples of the hook
  nfdump tshark tcpdump                        # IPFIX collectors and capture (ipfix tests)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "flowkit: missing system packages: ${missing[*]}" >&2
  echo "flowkit: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
