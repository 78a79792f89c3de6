#!/bin/bash
# One lent accelerator session of issue 23: suites/pacs_lite0_full.yaml (224 px, 5,000 steps) on test
# domain sketch, seed 0, W4A4: erm, lsq, gaqat and qtdog (W7A32), in that order, on one GPU, stopped at a
# deadline. Finished records (no model.pt) come back as $OUT/records.tgz; unfinished runs leave their curves.
# Run from the repository root with PACS-64 under data/ and the wheels the machine lacks under .whl/:
#   bash benchmarks/device/pacs_lite0_full.sh SECONDS WORKERS [--set KEY=VALUE ...]
# (a rehearsal on a CPU: SKIP_WHEELS=1, tiny --set values, and RESULTS=/tmp/somewhere so that nothing
# lands in the repository's results/)
set -u
start=$(date +%s); budget=${1:-480}; workers=${2:-2}; out=${OUT:-/tmp/out}; results=${RESULTS:-results}; mkdir -p "$out"
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 QATBENCH_DATA=$PWD/data QATBENCH_QUIET=1
qatbench=(python3 -c "import sys; from qatbench.cli import main; sys.exit(main(sys.argv[1:]))")  # not installed there
args=(suites/pacs_lite0_full.yaml --set 'datasets[0].test_envs=[sketch]' --set 'seeds=[0]' --set 'bits=[W4A4]'
      --only erm,lsq,gaqat,qtdog --results "$results" "${@:3}")
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
  python3 - <<'PY'
import time, torch
from qatbench.data.transforms import domainbed_train
torch.set_num_threads(1)
augment, image = domainbed_train(224), torch.randint(0, 255, (3, 224, 224), dtype=torch.uint8)
for _ in range(5): augment(image)
t = time.perf_counter()
for _ in range(100): augment(image)
print(f"DomainBed augmentation at 224 px, one core: {(time.perf_counter() - t) * 10:.2f} ms per image")
PY
} > "$out/env.txt" 2>&1; cat "$out/env.txt"
"${qatbench[@]}" run "${args[@]}" --dry-run || exit 3
nvidia-smi dmon -s um -d 15 > "$out/dmon.txt" 2>&1 &
( while sleep 30; do echo "t=$(( $(date +%s) - start ))s load $(cut -d' ' -f1 /proc/loadavg)" \
    $(for c in "$results"/pacs_lite0_full/*/curve.jsonl; do [ -f "$c" ] && echo "$(basename $(dirname $c)):$(wc -l < $c)"; done); done ) > "$out/progress.txt" &
left=$(( budget - ($(date +%s) - start) )); [ "$left" -gt 0 ] || { echo "no time left to train"; exit 3; }
timeout -s TERM "$left" "${qatbench[@]}" run "${args[@]}" --workers "$workers" > "$out/run.log" 2>&1
echo "qatbench run exit $? at t=$(( $(date +%s) - start ))s" | tee -a "$out/progress.txt"
kill %1 %2 2>/dev/null
tar czf "$out/records.tgz" --exclude='*.pt' --exclude='.lock' --exclude='heartbeat' --exclude='resume.*' -C "$results" pacs_lite0_full
cat "$out/progress.txt"; tail -5 "$out/run.log"; ls -la "$out"
