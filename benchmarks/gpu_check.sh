#!/usr/bin/env bash
# The GPU check of issue #14, in one call, on a machine with an NVIDIA GPU (< 8 minutes):
#   1. install what is missing, from wheels (torch with CUDA, onnxruntime-gpu, tensorrt, pyzmq ...);
#   2. build + verify the TensorRT FP16 engine of the default bundle (`fringelive export tensorrt`);
#   3. run the daemon (`fringelive serve`) on the tensorrt, onnxruntime-cuda and torch (cuda)
#      backends on 4096² frames of the simulated camera; `fringelive send` a stack once per run;
#   4. print frames/s, p50/p99 latency, GPU memory, daemon peak RSS and the per-stage split
#      (queue, preprocess, inference, postprocess, particles, drift, publish) plus the
#      host->device copy of one frame (pinned vs pageable; the daemon times it inside inference).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--wheels DIR] [--install-only] [--frames N] [--size PX] [--work DIR]
#
# --dry-run: on a CPU (CI, tests): checks the script and its Python client, prints each step's
#   command instead of installing, runs `export tensorrt` and `serve --backend tensorrt` for real to
#   check that they fail cleanly (exit code 2, one line), and measures the CPU `onnxruntime` daemon
#   on small frames through the same client, so every step's CPU fallback is exercised.
# --wheels DIR: offline machines (the lent GPU machine reaches no network): every wheel in DIR into
#   the work dir, without resolving dependencies (pip --no-index --no-deps --target), and
#   fringelive from this checkout; write DIR beforehand with benchmarks/gpu_wheels.sh (pyzmq for the
#   machine's Python 3.12 at least). Under --dry-run too: it writes into the work dir only.
# --install-only: stop after step 1 and its version report.
# Environment: PYTHON (default: python3, or .venv/bin/python when it exists), FRINGELIVE_CMD
#   (default: the `fringelive` next to PYTHON), TIME_BUDGET_S (default 450: later steps are skipped,
#   with a line saying so, once it is spent).
# Exit code: 0 when every step either ran or was skipped with its reason; 1 on a failure.
set -uo pipefail

DRY=0; INSTALL_ONLY=0; WHEELS=""; FRAMES=""; SIZE=""; WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --install-only) INSTALL_ONLY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --frames) FRAMES="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
FL="${FRINGELIVE_CMD:-$(dirname "$(command -v "$PYTHON")")/fringelive}"
CLIENT="$PYTHON $HERE/gpu_check_client.py"
BUDGET="${TIME_BUDGET_S:-450}"
if [ "$DRY" = 1 ]; then SIZE="${SIZE:-512}"; FRAMES="${FRAMES:-4}"; else SIZE="${SIZE:-4096}"; FRAMES="${FRAMES:-60}"; fi
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$WORK"
FAIL=0
SERVE_PID=""
cleanup() { if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then kill -TERM "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null; fi; }
trap cleanup EXIT

say() { printf '[gpu_check %3ds] %s\n' "$SECONDS" "$*"; }
over_budget() { [ "$SECONDS" -ge "$BUDGET" ]; }
# run CMD... : executes it, or under --dry-run prints it (for the steps that install)
run() { if [ "$DRY" = 1 ]; then say "would run: $*"; else say "+ $*"; "$@"; fi; }

say "mode: $([ "$DRY" = 1 ] && echo dry-run || echo full), frames ${SIZE}², python $PYTHON, work dir $WORK"

# --- 0. the script's own pieces -------------------------------------------------------------------
bash -n "$0" || { say "FAIL: syntax error in $0"; exit 1; }
"$PYTHON" -m py_compile "$HERE/gpu_check_client.py" || { say "FAIL: gpu_check_client.py does not compile"; exit 1; }
GPU="none"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi
say "GPU: $GPU"
if [ "$GPU" = none ] && [ "$DRY" = 0 ]; then
  say "no NVIDIA GPU here: use --dry-run on a CPU machine"; exit 1
fi

# --- 1. install what is missing, from wheels -----------------------------------------------------
step_install() {
  local pip=("$PYTHON" -m pip install -q)
  if [ -n "$WHEELS" ]; then step_install_offline; return 0; fi
  # torch with CUDA: keep one that sees the GPU (a machine image may ship a newer one); else the
  # project's pin from PyTorch's CUDA 13 index (deploy/docker/Dockerfile).
  if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    say "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees the GPU: kept"
  else run "${pip[@]}" --index-url https://download.pytorch.org/whl/cu130 "torch==2.13.0"; fi
  # fringelive itself and its light dependencies (pyzmq, msgpack, prometheus-client, ...)
  if ! "$PYTHON" -c 'import fringelive.cli, zmq, msgpack' 2>/dev/null; then run "${pip[@]}" -e "$ROOT"; fi
  # onnxruntime-gpu replaces the CPU onnxruntime (same module name): only one may be installed;
  # the CPU one comes back when the GPU one cannot be installed
  if ! "$PYTHON" -c 'import sys, onnxruntime as o; sys.exit(0 if "CUDAExecutionProvider" in o.get_available_providers() else 1)' 2>/dev/null; then
    run "$PYTHON" -m pip uninstall -q -y onnxruntime
    run "${pip[@]}" "onnxruntime-gpu>=1.30" || run "${pip[@]}" "onnxruntime>=1.17"
  fi
  if ! "$PYTHON" -c 'import tensorrt' 2>/dev/null; then run "${pip[@]}" "tensorrt>=10,<11" "cuda-python>=12"; fi
  return 0
}

# --wheels DIR: offline, e.g. on a lent GPU machine whose image already holds torch with CUDA,
# numpy, scipy, onnx, onnxruntime, msgpack and prometheus-client. DIR holds what it lacks
# (benchmarks/gpu_wheels.sh writes them: pyzmq at least). Every wheel there goes, as it is and
# without resolving dependencies (nothing could be fetched), into $WORK/site, which PYTHONPATH puts
# before the image's packages (an onnxruntime-gpu there shadows the CPU build; the image is left
# as it was); a torch wheel only where no torch sees the GPU. fringelive itself runs from this
# checkout (link_source_tree) unless it is installed already.
wheel_in() { compgen -G "$WHEELS/$1-*.whl" >/dev/null; }  # NAME as in a wheel's file name (_ for -)
step_install_offline() {
  local site="$WORK/site" whl=() f
  [ -d "$WHEELS" ] || { say "--wheels $WHEELS: no such directory"; return 1; }
  for f in "$WHEELS"/*.whl; do
    [ -e "$f" ] || continue
    if [[ "$(basename "$f")" == torch-* ]] \
        && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      say "torch sees the GPU: $(basename "$f") not installed"; continue
    fi
    whl+=("$f")
  done
  say "wheels from $WHEELS: ${#whl[@]} to install into $site"
  if [ ${#whl[@]} -gt 0 ]; then
    # for real under --dry-run too: it writes into the work dir only and fetches nothing
    say "+ pip install --no-index --no-deps --target $site ${whl[*]##*/}"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${whl[@]}" \
      || { say "FAIL: installing the wheels from $WHEELS"; return 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! "$PYTHON" -c 'import fringelive.cli' 2>/dev/null; then link_source_tree; fi
  wheel_in onnxruntime_gpu || say "no onnxruntime_gpu wheel in $WHEELS: the onnxruntime-cuda run is skipped unless the image has it"
  wheel_in tensorrt || say "no tensorrt wheel in $WHEELS: the tensorrt steps are skipped unless the image has it"
  return 0
}

# fringelive from this checkout without installing it (no build backend, whatever setuptools the
# image has): a namespace tree of links, named as pyproject.toml's package-dir maps them.
link_source_tree() {
  local src="$WORK/src" name dir
  mkdir -p "$src/fringelive"
  while read -r name dir; do ln -sfn "$ROOT/$dir" "$src/${name//.//}"; done < <("$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
dirs = tomllib.load(open(sys.argv[1], "rb"))["tool"]["setuptools"]["package-dir"]
for name, d in sorted(dirs.items()):
    if name.count(".") == 1:
        print(name, d)
EOF
)
  export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
  FL="$PYTHON -m fringelive.cli"
  say "fringelive from this checkout, not installed: PYTHONPATH=$src, FRINGELIVE_CMD=$FL"
}
say "step 1: install"
step_install || { say "step 1 failed (the steps below say what is missing)"; }
"$PYTHON" - <<'EOF'
import importlib
import os
for m in ("torch", "onnxruntime", "tensorrt", "zmq", "fringelive.cli"):
    try:
        mod = importlib.import_module(m)
        extra = ""
        if m == "fringelive.cli":
            extra = f" from {os.path.dirname(os.path.dirname(mod.__file__))}"
        if m == "torch":
            extra = f", cuda {mod.cuda.is_available()}"
        if m == "onnxruntime":
            extra = f", providers {mod.get_available_providers()}"
        print(f"  {m} {getattr(mod, '__version__', '?')}{extra}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m}: missing ({type(e).__name__}: {e})")
EOF
if [ $INSTALL_ONLY = 1 ]; then say "--install-only: stopping after step 1"; exit 0; fi

# --- 2. TensorRT FP16 engine of the default bundle ---------------------------------------------------
BUNDLE="$WORK/bundle"
SRC_BUNDLE="$("$PYTHON" - <<'EOF'
from fringelive.daemon.config import default_bundle_path
print(default_bundle_path() or "")
EOF
)"
if [ -z "$SRC_BUNDLE" ]; then say "FAIL: no default bundle installed"; exit 1; fi
rm -rf "$BUNDLE"; cp -r "$SRC_BUNDLE" "$BUNDLE"  # export writes into the bundle: never the installed one
TRT_OK=0
say "step 2: fringelive export tensorrt (fp16, profile up to 1 x ${SIZE}²)"
$FL export tensorrt --bundle "$BUNDLE" --precision fp16 --tile-size "$SIZE" --max-batch 1 > "$WORK/export.log" 2>&1
rc=$?
sed 's/^/  /' "$WORK/export.log" | tail -5
if [ $rc = 0 ]; then TRT_OK=1; say "TensorRT engine built and verified"
elif [ $rc = 2 ]; then say "TensorRT unavailable (exit 2, as documented): the tensorrt backend run will be skipped"
else say "FAIL: export tensorrt exited $rc"; FAIL=1; fi

# --- 3./4. the daemon on each backend ---------------------------------------------------------------
FRAMES_NPY="$WORK/frames.npy"
say "frames: simulated camera, 4 x ${SIZE}²"
$CLIENT make-frames --size "$SIZE" --count 4 --out "$FRAMES_NPY" || { say "FAIL: frames"; exit 1; }

serve_and_measure() {  # KIND DEVICE
  local kind="$1" device="$2" cfg="$WORK/$1.toml" log="$WORK/serve-$1.log"
  cat > "$cfg" <<EOF
[ingest]
endpoint = "tcp://127.0.0.1:0"
rcvhwm = 4
[results]
endpoint = "tcp://127.0.0.1:0"
sndhwm = 1000
[control]
endpoint = "tcp://127.0.0.1:0"
[metrics]
enabled = false
[queue]
size = 4
policy = "block"
[model]
backend = "$kind"
device = "$device"
[pipeline]
memory_budget_mb = 12288
EOF
  if over_budget; then say "$kind: skipped, the time budget (${BUDGET} s) is spent"; return 0; fi
  say "step 3: fringelive serve --backend $kind (device $device)"
  : > "$log"
  $FL serve --config "$cfg" --bundle "$BUNDLE" --backend "$kind" > "$log" 2>&1 &
  SERVE_PID=$!
  local ingest="" results="" t=0
  while [ $t -lt 600 ]; do  # up to 60 s for the start (engines load, CUDA initialises)
    ingest="$(awk '$1 == "ingest" {print $2}' "$log")"; results="$(awk '$1 == "results" {print $2}' "$log")"
    [ -n "$ingest" ] && [ -n "$results" ] && break
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1; t=$((t + 1))
  done
  if [ -z "$ingest" ]; then
    wait "$SERVE_PID"; local rc=$?; SERVE_PID=""
    local why; why="$(grep -m1 'error' "$log" || tail -1 "$log")"
    if [ $rc = 2 ]; then say "$kind: unavailable here (serve exit 2): $why"; return 0; fi
    say "FAIL: $kind: serve exited $rc: $why"; FAIL=1; return 0
  fi
  # `fringelive send` against this daemon (the CLI path a user takes), then the measured client
  $FL send "$FRAMES_NPY" --endpoint "$ingest" --series send-check --meta pixel_size_nm=0.02 voltage_kv=300 \
      > "$WORK/send-$kind.log" 2>&1 || { say "FAIL: fringelive send to $kind"; FAIL=1; }
  sleep 1
  $CLIENT measure --ingest "$ingest" --results "$results" --frames "$FRAMES_NPY" --n "$FRAMES" \
      --latency-frames "$([ "$DRY" = 1 ] && echo 3 || echo 10)" --label "$kind" --pid "$SERVE_PID" \
      --json "$WORK/result-$kind.json" || { say "FAIL: measuring $kind"; FAIL=1; }
  kill -TERM "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null; SERVE_PID=""
  grep -E "stopped|error" "$log" | tail -2 | sed 's/^/  /'
}

if [ $TRT_OK = 1 ] || [ "$DRY" = 1 ]; then serve_and_measure tensorrt auto
else say "tensorrt: skipped (no verified engine)"; fi
serve_and_measure onnxruntime-cuda auto
if [ "$DRY" = 1 ]; then
  serve_and_measure onnxruntime cpu       # the CPU fallback, through the same client
else
  serve_and_measure torch cuda            # needs only torch: runs where TensorRT/ORT-GPU cannot be installed
fi
$CLIENT h2d --size "$SIZE"

say "summary (frames of ${SIZE}²; goal on one H100: >= 100 frames/s, p99 <= 100 ms):"
"$PYTHON" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("result-*.json"))]
print(f"  {'backend':18s} {'frames/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'GPU MiB':>8s} {'RSS MiB':>8s}  stages (median ms)")
for r in rows:
    st = r["stages_ms"]
    stages = ", ".join(f"{k} {st[k]:.1f}" for k in ("preprocess", "inference", "postprocess", "particles", "drift", "publish") if k in st)
    gm = f"{r['gpu_mem_peak_mib']:.0f}" if r["gpu_mem_peak_mib"] is not None else "n/a"
    rss = f"{r['daemon_peak_rss_mib']:.0f}" if r["daemon_peak_rss_mib"] is not None else "n/a"
    print(f"  {r['label']:18s} {r['fps']:9.2f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {gm:>8s} {rss:>8s}  {stages}")
if not rows:
    print("  (no backend ran)")
EOF
say "done in ${SECONDS} s; logs in $WORK; $([ $FAIL = 0 ] && echo OK || echo FAILED)"
exit $FAIL
