#!/usr/bin/env bash
# Set up a fresh Debian machine for tvmbits: the Arm cross toolchains, qemu-user and debootstrap
# for the emulated boards, and a virtual environment at .venv with tvmbits installed editable.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# this machine's C++ compiler (it links the libraries of `--target host`), cross compilers for
# the architectures this machine is not (Debian names the native compiler <triple>-g++ too),
# qemu-user-static for the emulated boards' root file systems, the dynamic qemu-user (it takes
# -plugin) and its plugin's glib headers, and llvm-mca for benchmarks/arm.py
case "$(uname -m)" in
  x86_64)  CROSS="g++-aarch64-linux-gnu binutils-aarch64-linux-gnu" ;;
  aarch64) CROSS="g++-x86-64-linux-gnu binutils-x86-64-linux-gnu" ;;
  *) echo "setup: $(uname -m) machines are not supported (x86_64 and aarch64 are)" >&2; exit 2 ;;
esac
APT_PACKAGES="g++ $CROSS g++-arm-linux-gnueabihf binutils-arm-linux-gnueabihf qemu-user-static binfmt-support
  debootstrap"
BENCH_PACKAGES="qemu-user libglib2.0-dev llvm-19"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
missing=""
for pkg in $BENCH_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then  # without recommends: qemu-user-binfmt would take binfmt_misc from qemu-user-static
  echo "setup: installing Debian packages for benchmarks/arm.py:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
echo "setup: installing tvmbits and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip
# torch first, alone: this machine kind keeps its CPU build on disk (in the test extra, pip
# resolving it among the other packages could pick the multi-GB CUDA build)
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import tvm, tvmbits; print('setup: tvmbits', tvmbits.__version__, 'on TVM', tvm.__version__)"
