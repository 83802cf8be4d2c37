#!/usr/bin/env bash
# One-go GPU check for issue 12 (run from the repository root on a machine with CUDA; at most 13.5
# minutes, the sum of the parts' limits): the CUDA tests, then the benches, each under its own time limit
# so one slow part cannot eat the rest. Everything lands in bench/results/gpu-<date>-*.txt (copy them
# back and commit them).
#
#   bash bench/gpu_check.sh            # all parts
#   PARTS="tests hires" bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAMP=$(date -u +%Y%m%d-%H%M)
OUT=bench/results/gpu-$STAMP
# opt-in parts (not in the default, which fits one 15-minute device session): controlnet, forge
PARTS=${PARTS:-"tests hires compile graphs fused response bigimage lora speed"}
mkdir -p bench/results

header() {
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1;
    nproc; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$1"
}

run() {  # run NAME SECONDS COMMAND...: output appended to $OUT-NAME.txt, exit status and time at the end
  local name=$1 limit=$2; shift 2
  local file=$OUT-$name.txt start=$SECONDS
  header "$file"
  echo "\$ $*" >> "$file"
  timeout "$limit" "$@" >> "$file" 2>&1
  echo "exit $? after $((SECONDS - start)) s" >> "$file"
  echo "$name: $(tail -1 "$file")"
}

for part in $PARTS; do
  case $part in
    tests)     run tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/pipeline/test_cuda.py \
                 tests/upscalers/test_cuda.py \
                 tests/pipeline/models/networks/test_lora.py::test_cuda_backups_on_the_cpu_restore_exactly ;;
    hires)     run hires 90 "$PY" bench/bench_hires.py --device cuda --quick ;;
    compile)   run compile 120 "$PY" bench/bench_hires.py --device cuda --quick --precision auto --compile \
                 --compile-cache /tmp/hiresd-gpu-check-cc ;;
    graphs)    run graphs 120 "$PY" bench/bench_hires.py --device cuda --quick --precision auto --compile \
                 --cuda-graphs --compile-cache /tmp/hiresd-gpu-check-cc ;;
    fused)     run fused 60 "$PY" bench/bench_fused_qkv.py --device cuda --width-div 1 --size 512 \
                 --dtype float16 ;;
    response)  run response 60 "$PY" bench/bench_response.py --sizes 1024 2048 --batches 1 4 --repeats 3 ;;
    bigimage)  run bigimage 45 "$PY" bench/bench_bigimage.py --device cuda ;;
    lora)      run lora 45 "$PY" bench/bench_lora.py --device cuda --quick ;;
    speed)     run speed 120 "$PY" bench/bench_hires_speed.py --device cuda --dtype float16 --size 1024 2048 \
                 --steps 4 --repeats 3 ;;
    controlnet) run controlnet 60 "$PY" bench/bench_controlnet.py --device cuda --size 1024 --repeats 3 ;;
    forge)     run forge 60 "$PY" bench/bench_forge_scripts.py --device cuda --width-div 1 --size 1024 ;;
    *)         echo "unknown part $part" ;;
  esac
done
echo "results: $OUT-*.txt"
