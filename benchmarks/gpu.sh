#!/usr/bin/env bash
# Every GPU check and benchmark in one run, printing each figure (see benchmarks/RESULTS.md).
# Usage on a GPU machine, from the repository root:  bash benchmarks/gpu.sh
# Uses the machine's python3 (with torch) and the source tree (PYTHONPATH=src). Each step
# has its own time limit, so one slow step cannot eat the rest; the limits add up to 465 s
# (target: the whole script under 8 minutes). Expected on an H100, from the figures in
# RESULTS.md: about 4-5 minutes (not yet timed with these sizes).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() { echo; echo "=== $* ($(date +%T))"; }
lim() { timeout "$@" || echo "!!! step failed or timed out (exit $?)"; }

step "versions (record them with every figure below)"
if git rev-parse --git-dir >/dev/null 2>&1; then
  GIT="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src benchmarks tests || echo ' + uncommitted changes')"
else
  GIT="n/a (not a git checkout)"
fi
GIT=$GIT lim 20 $PY -c "import os, platform, torch, skiplab
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| cuDNN', torch.backends.cudnn.version(), '| skiplab', skiplab.__version__, '| git', os.environ['GIT'],
      '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"

step "CUDA tests: graphed training steps, data, landscape and path gradients on the GPU"
lim 60 $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_data.py \
  tests/test_landscape.py tests/test_pathgrad.py -k "cuda or graph" 2>&1 | tail -8
step "graphed vs eager training steps (bit-identical with deterministic cuDNN)"
lim 25 $PY benchmarks/graph_check.py --json

step "training throughput resnet-56, batch 128 (target >= 15k img/s, >= 2.5x reference)"
lim 55 $PY benchmarks/train_throughput.py --device cuda --model resnet-56 --batch 128 --images 10000 --json
step "training throughput resnet-56, batch 512 (target >= 30k img/s, >= 2.5x reference)"
lim 40 $PY benchmarks/train_throughput.py --device cuda --model resnet-56 --batch 512 --images 10000 --json

step "loss landscape resnet-56, 51x51, 2000 images (target < 45 s)"
lim 75 $PY benchmarks/landscape_speed.py --device cuda --model resnet-56 --steps 51 --images 2000 \
  --fp32-points 200 --vmap-points 32 --naive-points 3 --json

step "path gradients resnet-110, batch 128 (target <= 4x one forward+backward)"
lim 40 $PY benchmarks/pathgrad_cost.py --device cuda --batch 128 --json

step "generic unit overhead: resnet-56 fwd+bwd vs hand-written, batch 128 (target <= 1.05)"
lim 25 $PY benchmarks/models_overhead.py --device cuda --batch 128 --repeats 20 --json

step "8 resnet-20 runs at batch 128, one after another vs all at once (target >= 4x)"
lim 90 $PY benchmarks/many_runs.py --device cuda --runs 8 --model resnet-20 --batch 128 \
  --images 10000 --epochs 4 --eager --json

step "training throughput preact-resnet-110, batch 128 (for the he2016-table2 estimate)"
lim 35 $PY benchmarks/train_throughput.py --device cuda --model preact-resnet-110 --batch 128 \
  --images 10000 --no-eager --no-reference --json
step done
