#!/usr/bin/env bash
# Every GPU check and benchmark in one run, printing each figure (see benchmarks/RESULTS.md).
# Usage on a GPU machine, from the repository root:  bash benchmarks/gpu.sh
# Uses the machine's python3 (with torch) and the source tree (PYTHONPATH=src). About 6-7
# minutes on an H100; each step has its own time limit, so one slow step cannot eat the rest.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
WORK=${WORK:-/tmp/skiplab-gpu}
rm -rf "$WORK" && mkdir -p "$WORK"
step() { echo; echo "=== $* ($(date +%T))"; }
lim() { timeout "$@" || echo "!!! step failed or timed out (exit $?)"; }

step device
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"

step "CUDA tests: graphed training steps, data, landscape and path gradients on the GPU"
lim 150 $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_data.py \
  tests/test_landscape.py tests/test_pathgrad.py -k "cuda or graph" 2>&1 | tail -8
step "skiplab analyze on the GPU (--device auto picks cuda)"
lim 90 $PY -m pytest -q -p no:cacheprovider tests/test_cli_analyze.py 2>&1 | tail -4
step "graphed vs eager training steps (bit-identical with deterministic cuDNN)"
lim 60 $PY benchmarks/graph_check.py --json

step "training throughput resnet-56, batch 128 (target >= 15k img/s, >= 2.5x reference)"
lim 100 $PY benchmarks/train_throughput.py --device cuda --model resnet-56 --batch 128 --images 20000 --json
step "training throughput resnet-56, batch 512 (target >= 30k img/s, >= 2.5x reference)"
lim 100 $PY benchmarks/train_throughput.py --device cuda --model resnet-56 --batch 512 --images 20000 --json

step "loss landscape resnet-56, 51x51, 2000 images (target < 45 s)"
lim 150 $PY benchmarks/landscape_speed.py --device cuda --model resnet-56 --steps 51 --images 2000 \
  --fp32-points 200 --vmap-points 32 --naive-points 3 --json

step "path gradients resnet-110, batch 128 (target <= 4x one forward+backward)"
lim 90 $PY benchmarks/pathgrad_cost.py --device cuda --batch 128 --json

step "8 resnet-20 runs at batch 128, one after another vs all at once (target >= 4x)"
lim 240 $PY benchmarks/many_runs.py --device cuda --runs 8 --model resnet-20 --batch 128 \
  --images 20000 --epochs 5 --eager --json

step "training throughput preact-resnet-110, batch 128 (for the he2016-table2 estimate)"
lim 60 $PY benchmarks/train_throughput.py --device cuda --model preact-resnet-110 --batch 128 \
  --images 20000 --no-eager --no-reference --json

step "train CLI on cuda (CUDA graphs, bf16, channels_last) + resume"
lim 60 $PY -m skiplab train resnet-20 --data digits --device cuda --epochs 2 --out "$WORK/run" 2>&1 | tail -1
lim 30 $PY -m skiplab train resnet-20 --data digits --device cuda --epochs 2 --out "$WORK/run" --resume 2>&1 | tail -1
step done
