#!/usr/bin/env bash
# Every GPU check and benchmark in one run, printing each figure (see benchmarks/RESULTS.md).
# Usage on a GPU machine, from the repository root:  bash benchmarks/gpu.sh
# Uses the machine's python3 (with torch) and the source tree (PYTHONPATH=src).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/skiplab-gpu}
mkdir -p "$OUT"
step() { echo; echo "=== $* ($(date +%T))"; }
step device
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
step "data on the GPU (augmentation, batches)"
$PY -m pytest -q -p no:cacheprovider tests/test_data.py -k cuda 2>&1 | tail -2
step "train on cuda: bf16 autocast, channels_last, checkpoint + resume"
$PY -m skiplab train resnet-20 --data digits --device cuda --epochs 2 --out "$OUT/run" 2>&1 | tail -1
$PY -m skiplab train resnet-20 --data digits --device cuda --epochs 2 --out "$OUT/run" --resume 2>&1 | tail -1
step "training throughput resnet-56, batch 512 and 128 (target >= 30k / 15k img/s, >= 2.5x reference)"
$PY benchmarks/train_throughput.py --device cuda --model resnet-56 --batch 512 --images 20000 --json
$PY benchmarks/train_throughput.py --device cuda --model resnet-56 --batch 128 --images 20000 --json
step "generic unit overhead on cuda"
$PY benchmarks/models_overhead.py --device cuda --batch 128 --repeats 20 --json
step "loss landscape resnet-56, 51x51, 2000 images (target < 45 s)"
$PY benchmarks/landscape_speed.py --device cuda --model resnet-56 --steps 51 --images 2000 --naive-points 3 --bf16 --json
