#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh needs on an offline GPU machine, downloaded here (where pip
# reaches an index) for that machine's Python, into DIR (default .whl, which .gitignore ignores).
#
#   bash benchmarks/gpu_wheels.sh [--dir DIR] [--python-version 3.12] [PACKAGE==VERSION ...]
#
# Default packages: pyzmq (the one runtime dependency of the daemon that the lent machines' image
# lacks: it has torch with CUDA, numpy, scipy, onnx, onnxruntime, msgpack, prometheus-client;
# /work/.library/device/KINDS.md). Name more to add them, e.g. onnxruntime-gpu: its wheel is
# ~250 MB, more than the device tool carries in one call (64 MiB), which the script says.
# Then, on the GPU machine, in one call (carry [".whl"]):
#   bash benchmarks/gpu_check.sh --wheels .whl 2>&1 | tee "$OUT/gpu_check.log"
set -euo pipefail

DIR=".whl"; PYVER="3.12"; PKGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift ;;
    --python-version) PYVER="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "gpu_wheels: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) PKGS+=("$1") ;;
  esac
  shift
done
[ ${#PKGS[@]} -gt 0 ] || PKGS=("pyzmq==27.2.0")
PYTHON="${PYTHON:-python3}"
mkdir -p "$DIR"
platforms=()
for n in 28 27 26 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${platforms[@]}" -d "$DIR" "${PKGS[@]}"
total=0
for f in "$DIR"/*.whl; do
  [ -e "$f" ] || continue
  size=$(stat -c %s "$f"); total=$((total + size))
  awk -v b="$size" -v n="$(basename "$f")" 'BEGIN { printf "  %8.1f MiB  %s\n", b / 1048576, n }'
done
awk -v b="$total" -v d="$DIR" -v v="$PYVER" 'BEGIN { printf "gpu_wheels: %s holds %.1f MiB of wheels for CPython %s\n", d, b / 1048576, v }'
if [ "$total" -gt $((60 * 1048576)) ]; then
  echo "gpu_wheels: more than the device tool carries in one call with the working tree (64 MiB): carry fewer" >&2
  exit 1
fi
