#!/usr/bin/env bash
# Compiles every CUDA kernel of mote-cuda to PTX (sm_80 and sm_90) with the exact NVRTC of the
# GPU machine, on a machine without a GPU or CUDA toolkit: a kernel that does not compile fails.
#
#   cuda/nvrtc-check.sh            (from anywhere in the repository)
#
# Installs PyPI's nvidia-cuda-nvrtc==13.0.88 into a venv (target/nvrtc-venv, reused), links
# libnvrtc.so next to libnvrtc.so.13 in a shim folder, and runs the test
# `nvrtc_compiles_every_kernel` with MOTE_REQUIRE_NVRTC=1 so that it fails instead of skipping.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="${MOTE_NVRTC_VENV:-$root/target/nvrtc-venv}"
want=13.0.88
libdir=""
find_lib() { find "$venv" -path '*nvidia/cu13/lib/libnvrtc.so.13' 2>/dev/null | head -1; }
if [ -d "$venv" ]; then libdir=$(dirname "$(find_lib)" 2>/dev/null || true); fi
if [ -z "$libdir" ] || [ ! -e "$libdir/libnvrtc.so.13" ]; then
    echo "nvrtc-check: installing nvidia-cuda-nvrtc==$want into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc==$want"
    libdir=$(dirname "$(find_lib)")
fi
[ -e "$libdir/libnvrtc.so.13" ] || { echo "nvrtc-check: libnvrtc.so.13 not found under $venv" >&2; exit 1; }
shim="$root/target/nvrtc-shim"
mkdir -p "$shim"
ln -sf "$libdir/libnvrtc.so.13" "$shim/libnvrtc.so"
export LD_LIBRARY_PATH="$shim:$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "nvrtc-check: NVRTC from $libdir"
MOTE_REQUIRE_NVRTC=1 cargo test -p mote-cuda --test nvrtc -- --nocapture --test-threads=1
