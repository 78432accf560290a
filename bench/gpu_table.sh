#!/usr/bin/env bash
# The whole GPU table of issue 9 in one device call: SD1.5-sized at 512 px and SDXL-sized at 1024 px (random
# weights, nothing downloaded), batch 1 and 8, fp16 and bf16, plain loop / ours (defaults) / fastest (compiled
# transformer blocks, losses read every 10 steps) / lowmem (bf16: gradient checkpointing + 8-bit AdamW), each
# with steps/s, images/s, CUDA peak and the ratio to plain. Not run on the CPU machine: it needs a GPU.
#
# Prepare here, in the project root (the device machine has torch and transformers but cannot download):
#   ../shared/device/wheels.sh bitsandbytes==0.50.2    # diffusers + lycoris-lora (+ bitsandbytes) into .whl/
# Then call the device tool's `run` with
#   command: bash bench/gpu_table.sh      carry: [".whl"]      timeout_s: 590
# The table's children stop starting after BUDGET_S seconds (default 450, so it ends within 8 minutes); what ran
# is printed after each child and the log comes back as $OUT/gpu_table.log. With PROFILE=1 it first profiles one
# SD1.5 512 px step per variant (CPU time, aten calls and kernel launches per step; about 2 minutes more, so give
# BUDGET_S=360 with it). Extra arguments go to bench/train.py (e.g. --steps 40).
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_table.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$log"
python3 -c "import torch, diffusers, lycoris; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
  2>&1 | tee -a "$log"
if [ "${PROFILE:-0}" = 1 ]; then
  python3 bench/train.py --device cuda --size sd15 --resolution 512 --batch 1 --steps 12 --warmup 6 \
    --profile 5 --precision bf16 --variants plain,lycoris,ours 2>&1 | tee -a "$log"
fi
python3 bench/train.py --gpu-table --budget-s "${BUDGET_S:-450}" "$@" 2>&1 | tee -a "$log"
