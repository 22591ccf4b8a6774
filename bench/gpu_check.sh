#!/usr/bin/env bash
# The GPU check in one prepared run: the test suite on CUDA (IMAGEN_TEST_DEVICE=cuda) and
# bench/gpu.py, for a machine whose python3 already has a CUDA torch, accelerate, transformers,
# einops, attrs, pillow, pytest, hypothesis and tensorboard (the device tool's). Prepare the wheels
# it lacks here first (no network there):
#
#   pip download --no-deps -c constraints.txt -d .device-wheels ema-pytorch webdataset fsspec
#
# then run on the device, carrying .device-wheels:  bash bench/gpu_check.sh "$OUT"
set -uo pipefail
out=${1:-/tmp/gpu-check}
mkdir -p "$out"
target=$(mktemp -d)
python3 -m pip install -q --no-deps --target "$target" .device-wheels/*.whl \
    ./packages/unets ./packages/diffusion ./packages/text ./packages/cascade ./packages/trainer ./packages/cli
export PYTHONPATH="$target" IMAGEN_TEST_DEVICE=cuda OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
# the per-package suites, fast parts (slow end-to-end runs are CPU-timed elsewhere)
for package in diffusion unets cascade trainer text; do
    timeout 240 python3 -m pytest "packages/$package/tests" -m "not slow" -q -x -p no:cacheprovider \
        > "$out/tests-$package.txt" 2>&1
    echo "$package: exit $? $(tail -n 1 "$out/tests-$package.txt")" | tee -a "$out/summary.txt"
done
timeout 240 python3 bench/gpu.py --output "$out/gpu.md" > "$out/gpu.json" 2> "$out/gpu.err"
echo "bench/gpu.py: exit $?" | tee -a "$out/summary.txt"
cat "$out/gpu.json"
