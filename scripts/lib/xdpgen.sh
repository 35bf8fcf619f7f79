# shellcheck shell=bash
# Builds benches/xdpgen (the XDP-frame generator and its programs) with
# clang and libbpf into $TARGET_DIR/xdpgen and sets
#   XDPGEN        the generator
#   XDPGEN_PASS   pass.bpf.o (a native XDP program that passes everything)
# Usage: . scripts/lib/xdpgen.sh; xdpgen_build TARGET_DIR
# Needs clang and libbpf-dev (scripts/install-deps.sh installs them) and
# kernel >= 5.18 to run (BPF_F_TEST_XDP_LIVE_FRAMES).

xdpgen_build() {
  local dir=$1/xdpgen multiarch prog
  command -v clang >/dev/null || { echo "xdpgen: needs clang (scripts/install-deps.sh installs it)" >&2; return 1; }
  [ -f /usr/include/bpf/libbpf.h ] || { echo "xdpgen: needs libbpf-dev (scripts/install-deps.sh installs it)" >&2; return 1; }
  mkdir -p "$dir"
  multiarch=$(clang -print-multiarch)
  for prog in redirect pass; do
    # -mcpu=v3: the frame counter is an atomic fetch-and-add.
    clang -O2 -g -Wall -target bpf -mcpu=v3 -I"/usr/include/$multiarch" \
      -c "benches/xdpgen/$prog.bpf.c" -o "$dir/$prog.bpf.o"
  done
  clang -O2 -Wall -Wextra -o "$dir/xdpgen" benches/xdpgen/xdpgen.c -lbpf -lpthread
  # shellcheck disable=SC2034 # for the scripts that source this file
  XDPGEN=$dir/xdpgen
  # shellcheck disable=SC2034
  XDPGEN_PASS=$dir/pass.bpf.o
}
