#!/usr/bin/env bash
# The CUDA checks and the GPU benchmarks in one run (about 8 minutes on one H100):
#   bash bench/gpu.sh OUT_DIR [RACE_DIR]
# 1. tests/test_cuda.py: encoder vs transformers on the GPU, fused SDPA kernels, bf16 autocast,
#    the engine in fp32/bf16/fp16 (grad scaler), NCCL DDP under torchrun, the Embedder.
# 2. bench/pretrain.py on the GPU: pre-training step vs BertForPreTraining, batch 16 and 128.
# 3. bench/infer_cuda.py: embedding throughput vs transformers and sentence-transformers.
# 4. bench/pretrain_curve.py on the GPU: the Mini BERT learning race on IMDB, 2.5 minutes each.
# VOCAB (a folder with vocab.txt) and BERTKIT_DATA point at the inputs when all-MiniLM-L6-v2 and
# ../shared/data are not installed (a bare GPU machine); RACE_DIR may hold prepared shards.
set -u
OUT=${1:-runs/gpu}
RACE=${2:-runs/gpu-race}
mkdir -p "$OUT" "$RACE"
export PYTHONPATH=$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
V=${VOCAB:+--vocab $VOCAB}
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  $PY -c "import torch, transformers, sentence_transformers as s; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__, 'st', s.__version__)"
  timeout 150 $PY -m pytest -q -rs tests/test_cuda.py tests/test_train.py -k "cuda or prefetch" -p no:cacheprovider
} > "$OUT/log.txt" 2>&1
{
  timeout 50 $PY bench/pretrain.py --device cuda $V --steps 20 --warmup 3
  timeout 50 $PY bench/pretrain.py --device cuda $V --steps 20 --warmup 3 --batch-size 128
} > "$OUT/pretrain.txt" 2>&1
timeout 100 $PY bench/infer_cuda.py --device cuda $V > "$OUT/infer.txt" 2>&1
timeout 220 $PY bench/pretrain_curve.py --device cuda --minutes 2.5 --batch-size 128 --lr 1e-3 --steps 6000 \
  --warmup 300 --eval-every 250 --out "$RACE" > "$OUT/race.txt" 2>&1
cp "$RACE/race.png" "$RACE/race.json" "$OUT/" 2>/dev/null
grep -h "passed\|failed\|ratio\|x[ 0-9.]* vs\|steps in" "$OUT"/*.txt
