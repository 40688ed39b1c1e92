#!/bin/bash
# Exact vs quantized arithmetic (docs/performance.md, "Quantized arithmetic"): prefill and
# generation of the three registry models at batch 1, 8 and 16, one `mosr-lm bench` process
# per cell (so each peak RSS is its own), 2 threads. Prints one line per cell:
#   <model> <arithmetic> <workload> b<batch> <mosr-lm bench JSON>
# Usage: cargo build -p mosr-lm && tools/bench/arithmetic.sh > out.txt
# Needs about 10 GB free for the 1.5B model's exact load; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
L=${CARGO_TARGET_DIR:-target}/debug/mosr-lm
for m in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; do
  G=$($L fetch "$m")
  r=3; [ "$m" = qwen2.5-coder-1.5b-instruct ] && r=1
  for a in exact quantized; do
    for w in prefill generate; do
      echo "$m $a $w b8 $(RAYON_NUM_THREADS=2 $L bench --model "$G" --workload $w --batch 8 --seq 128 --new-tokens 32 --repeats $r --arithmetic $a 2>/dev/null | tail -1)"
    done
    for b in 1 16; do
      echo "$m $a generate b$b $(RAYON_NUM_THREADS=2 $L bench --model "$G" --workload generate --batch $b --seq 64 --new-tokens 32 --repeats $r --arithmetic $a 2>/dev/null | tail -1)"
      echo "$m $a prefill b$b $(RAYON_NUM_THREADS=2 $L bench --model "$G" --workload prefill --batch $b --seq 64 --repeats $r --arithmetic $a 2>/dev/null | tail -1)"
    done
  done
done
