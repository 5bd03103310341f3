#!/usr/bin/env bash
# The GPU check of issue 15, under 8 minutes on one H100/H200: run it from a checkout with the
# environment installed, on a machine with a GPU (no network needed: the data are synthetic).
#
#   bash gpu/smoke.sh                      # numbers in runs/gpu-smoke/ (gpu.txt, gpu.json, ...)
#   bash gpu/smoke.sh --out DIR --device cuda:1
#   bash gpu/smoke.sh --quick              # seconds, any device (CPU too): checks it runs
#
# What it writes to DIR:
#   env.txt    torch, CUDA and the device
#   gpu.txt    `wash-sweeps bench --only gpu`: population images/s vs a PAPA-code-style loop
#   gpu.json   (N modules + N optimizers + AMP), WASH/PAPA cost as % of a step, a short
#              CIFAR-shaped training run; PASS/MISS of the GPU targets
#   comm.txt   `--only comm` on the device (not in --quick): the CPU table's columns on the GPU
#   comm.json
#   times.txt  seconds per part and in all
set -euo pipefail
cd "$(dirname "$0")/.."

out="runs/gpu-smoke"
device="auto"
quick=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick="--tiny"; shift ;;
        --out) out="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        *) echo "gpu/smoke.sh: unknown argument $1 (--quick, --out DIR, --device D)" >&2; exit 2 ;;
    esac
done
py="${PYTHON:-python}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
mkdir -p "$out"
: > "$out/times.txt"
start=$(date +%s)

part() {  # part NAME COMMAND...: run it, keep its output, record its seconds
    local name="$1"; shift
    local t0; t0=$(date +%s)
    "$@" 2>&1 | tee "$out/$name.txt"
    echo "$name $(( $(date +%s) - t0 )) s" >> "$out/times.txt"
}

"$py" - > "$out/env.txt" <<'EOF'
import platform, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        print(f"cuda:{i}", torch.cuda.get_device_name(i))
else:
    print("no CUDA device: CPU only")
EOF
cat "$out/env.txt"

part gpu "$py" -m wash_sweeps.benchmarks --only gpu --device "$device" $quick \
    --out "$out/gpu.json" --workdir "$out/work"
if [ -z "$quick" ]; then
    part comm "$py" -m wash_sweeps.benchmarks --only comm --device "$device" --out "$out/comm.json"
fi
echo "total $(( $(date +%s) - start )) s" >> "$out/times.txt"
cat "$out/times.txt"
