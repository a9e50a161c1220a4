#!/usr/bin/env bash
# Run tests on an emulated AArch64 workstation: this checkout installed into a copy of the
# emulated arm64 board's root file system (Debian 12, Python 3.11, under qemu-user, which LLVM
# sees as a `generic` AArch64 CPU) with g++, onnx, onnxruntime and pytest added, so that
# `--target host` resolves to AArch64 and the tests compile, run and time there. What it checks
# is that nothing assumes an x86-64 host; not speed (emulated) and not a real Arm CPU's features.
#
#   bash scripts/check_aarch64_host.sh                  # the host-profile tests (143, about 13 min)
#   bash scripts/check_aarch64_host.sh tests/test_subbyte_ops.py -k n1_   # any pytest arguments
#   (paths under tests/; without one, the default files; a -m replaces the default -m "not slow")
#
# Needs root and scripts/setup.sh's packages (qemu-user-static, debootstrap). The workstation's
# root file system is kept in .cache/aarch64-host (about 1.4 GB; the first run makes it in about
# 2 min from the emulated board, which is built first if needed, in about 6 min); each run
# installs the working tree (tracked files and new ones git does not ignore) into it afresh.
# Tests run one at a time (a compiled kernel takes seconds under emulation).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "check_aarch64_host: needs root (chroot, mount)" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "check_aarch64_host: run scripts/setup.sh first" >&2; exit 2; }

ROOT=.cache/aarch64-host
WHEELS="onnx onnxruntime pytest setuptools>=68"
# inside the root: a clean environment (no host PYTHONPATH, QEMU_CPU or PATH without sbin), in /tmp
CLEAN=(/usr/bin/env -i -C /tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
# the emulated board (built first if needed; this also registers qemu-aarch64 with binfmt_misc),
# and the pip options that pick wheels for its Python, as the board's own were picked
BOARD=$(.venv/bin/python -c "import sys; from tvmbits.board import emulate
print(emulate.build('arm64', log=lambda message: print(message, file=sys.stderr)))
print(*(f'--platform {p}' for p in emulate.ARCHS['arm64'].wheel_platforms), '--python-version', emulate.PYTHON)")
FOR_BOARD=${BOARD#*$'\n'}
BOARD=${BOARD%%$'\n'*}
if [ ! -d "$ROOT" ]; then
  rm -rf "$ROOT.partial"
  echo "check_aarch64_host: copying the arm64 board into $ROOT, adding g++ and $WHEELS"
  cp -a "$BOARD" "$ROOT.partial"
  cp /etc/resolv.conf "$ROOT.partial/etc/resolv.conf"
  chroot "$ROOT.partial" "${CLEAN[@]}" /bin/sh -c \
    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null"
  .venv/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: $FOR_BOARD \
    --implementation cp -d "$ROOT.partial/tmp/wheels" $WHEELS
  chroot "$ROOT.partial" "${CLEAN[@]}" /bin/sh -c \
    "/opt/tvm/bin/pip install -q --disable-pip-version-check --no-index /tmp/wheels/*.whl && rm -r /tmp/wheels"
  mv "$ROOT.partial" "$ROOT"
fi
versions='import importlib.metadata as m; print(m.version("apache-tvm"), m.version("apache-tvm-ffi"))'
here=$(.venv/bin/python -c "$versions")
there=$(chroot "$ROOT" "${CLEAN[@]}" /opt/tvm/bin/python -c "$versions")
if [ "$here" != "$there" ]; then
  echo "check_aarch64_host: $ROOT has apache-tvm, apache-tvm-ffi $there, .venv has $here: remove $ROOT" \
    "(and .cache/boards/arm64 if it has the old ones too) to rebuild it" >&2
  exit 2
fi

# the working tree (tracked files and new ones git does not ignore), installed as a user installs
# a release (not editable), and tested from /tmp so that the source tree does not shadow the
# installed package
echo "check_aarch64_host: installing this working tree into $ROOT"
rm -rf "$ROOT/tmp/tvmbits"
mkdir -p "$ROOT/tmp/tvmbits"
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -c 2>/dev/null | tar -x -C "$ROOT/tmp/tvmbits"
chroot "$ROOT" "${CLEAN[@]}" /bin/sh -c \
  "/opt/tvm/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation /tmp/tvmbits"

# the host profile's tests (those that need torch, brevitas or qonnx are not installed there)
DEFAULT=(tests/test_targets.py tests/test_tar_extract.py tests/test_cli_run.py tests/test_api.py
  tests/test_kernel_choice.py "tests/test_subbyte_ops.py::test_dense" "tests/test_bitserial_ops.py::test_dense")
args=() paths=0
for arg in "$@"; do
  arg=${arg#./}
  case "$arg" in tests|tests/*) arg="/tmp/tvmbits/$arg"; paths=1 ;; esac
  args+=("$arg")
done
[ $paths = 1 ] || args=("${DEFAULT[@]/#//tmp/tvmbits/}" "${args[@]}")
echo "check_aarch64_host: pytest ${args[*]}"
exec unshare --mount --propagation private /bin/sh -c 'mount -t proc proc "$1/proc" && exec chroot "$@"' sh \
  "$ROOT" "${CLEAN[@]}" /opt/tvm/bin/python -m pytest -q -p no:cacheprovider \
  -c /tmp/tvmbits/pyproject.toml --rootdir /tmp/tvmbits -o addopts= -m "not slow" "${args[@]}"
