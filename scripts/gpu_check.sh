#!/usr/bin/env bash
# Everything worth knowing about stnbench on a GPU, in one call of under 8 minutes (a GPU machine is lent for
# about 15 minutes at a time):
#   1. the GPU-marked tests (tests/test_gpu.py; skipped without CUDA),
#   2. img/s of every model at batch 256, precision 32-true and bf16-mixed (scripts/bench_train.py),
#   3. seconds per 1,000 iterations of schedule=paper for ST-CNN on RTS, and the projected time of one
#      Table 1 cell (150k iterations),
#   4. data generation img/s on the GPU,
#   5. N runs packed on one GPU (hydra/launcher=local n_jobs=N) against one run alone.
# Writes $OUT/summary.md, $OUT/summary.json and every step's log (OUT defaults to ./gpu_check).
#   bash scripts/gpu_check.sh          # on a machine with CUDA
#   bash scripts/gpu_check.sh --cpu    # dry run on the CPU with tiny sizes: checks the script itself
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export STNBENCH_OUTPUT_DIR="$OUT/outputs" STNBENCH_CACHE_DIR="${STNBENCH_CACHE_DIR:-.cache/stnbench}"
if [ "$MODE" = gpu ]; then
  DEVICE=cuda TRAINER=gpu BATCH=256 STEPS=40 ITERS=1000 PACK=4 PACK_STEPS=600 MODELS=fcn,cnn,st_fcn,st_cnn,rnn_stn,recurrent_stn
else
  DEVICE=cpu TRAINER=cpu BATCH=16 STEPS=2 ITERS=10 PACK=2 PACK_STEPS=5 MODELS=cnn,st_cnn
fi
status=0
step() {  # step NAME COMMAND...: run it, keep its log, remember failures but go on
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then echo "   ok ($((SECONDS - start)) s)"; else echo "   FAILED ($((SECONDS - start)) s), see $OUT/$name.log"; status=1; fi
  echo "$((SECONDS - start))" > "$OUT/$name.seconds"
}

"$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'no cuda', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
step tests "$PY" -m pytest -q -m gpu tests/test_gpu.py
for precision in 32-true bf16-mixed; do
  [ "$MODE" = cpu ] && [ "$precision" = bf16-mixed ] && continue
  step "bench_$precision" "$PY" scripts/bench_train.py --device "$DEVICE" --precision "$precision" \
    --batch-size "$BATCH" --steps "$STEPS" --rounds 1 --models "$MODELS"
done
PAPER=(data=rts model=st_cnn schedule=paper "trainer=$TRAINER" "trainer.max_steps=$ITERS" test_after_fit=false
       trainer.limit_val_batches=0 logger=csv "data.batch_size=$BATCH" callbacks.model_summary=null)
step paper_1k "$PY" -m stnbench.train "${PAPER[@]}" "hydra.run.dir=$OUT/outputs/paper_1k"
step generate "$PY" - "$DEVICE" "$BATCH" <<'PY'
import sys, time, tempfile, torch
from stnbench.data.datamodule import DistortedMNIST, derive_seed
from stnbench.data.distortions import RTS, Elastic
from stnbench.data.clutter import Cluttered
from stnbench.data.sequences import MultiDigit
import os
device, batch = torch.device(sys.argv[1]), int(sys.argv[2])
for distortion in (RTS(), Elastic(), Cluttered(), MultiDigit()):
    dm = DistortedMNIST(distortion, root=os.environ.get("STNBENCH_DATA_DIR", "data"),
                        cache_dir=os.environ["STNBENCH_CACHE_DIR"], num_val=1000, download=False)
    dm.prepare_data(); dm.setup("fit")
    pool = len(dm.pools["train"])
    def one(n):
        index = torch.randint(pool, (batch,), generator=torch.Generator().manual_seed(n)).to(device)
        return dm.materialize({"split": "train", "index": index, "seed": derive_seed("gen", n)})
    one(0)
    torch.cuda.synchronize() if device.type == "cuda" else None
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 2.0 or n < 3:
        one(n + 1); n += 1
    torch.cuda.synchronize() if device.type == "cuda" else None
    print(f"{type(distortion).__name__}: {n * batch / (time.perf_counter() - start):.0f} img/s")
PY
PACKED=(data=rts model=st_cnn schedule=paper "trainer=$TRAINER" "trainer.max_steps=$PACK_STEPS" test_after_fit=false
        trainer.limit_val_batches=0 logger=csv "data.batch_size=$BATCH" callbacks.model_summary=null)
step pack_1 "$PY" -m stnbench.train -m "${PACKED[@]}" seed=1 sweep_name=pack_1
SEEDS=$(seq -s, 1 "$PACK")
step "pack_$PACK" "$PY" -m stnbench.train -m "${PACKED[@]}" "seed=$SEEDS" sweep_name="pack_$PACK" \
  hydra/launcher=local "hydra.launcher.n_jobs=$PACK"

"$PY" - "$OUT" "$MODE" "$ITERS" "$PACK" "$PACK_STEPS" <<'PY'
import json, sys
from pathlib import Path
out, mode, iters, pack, pack_steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def seconds(name):
    f = out / f"{name}.seconds"
    return int(f.read_text()) if f.exists() else None
def log(name):
    f = out / f"{name}.log"
    return f.read_text() if f.exists() else ""
summary = {"mode": mode, "device": (out / "device.txt").read_text().strip()}
paper = json.loads((out / "outputs/paper_1k/results.json").read_text()) if (out / "outputs/paper_1k/results.json").exists() else {}
if paper.get("fit_seconds"):
    per_1k = paper["fit_seconds"] * 1000 / iters
    summary["paper schedule: seconds per 1,000 iterations"] = round(per_1k, 1)
    summary["projected Table 1 cell (150k iterations), minutes"] = round(per_1k * 150 / 60, 1)
one, many = seconds("pack_1"), seconds(f"pack_{pack}")
if one and many:
    summary[f"packing: {pack} runs on one device vs 1 run, throughput ratio"] = round(pack * one / many, 2)
summary["tests"] = [l for l in log("tests").splitlines() if "passed" in l or "skipped" in l or "failed" in l][-1:]
summary["bench"] = {name: [l for l in log(name).splitlines() if l.startswith("|") or l.startswith("torch ")]
                    for name in ("bench_32-true", "bench_bf16-mixed") if log(name)}
summary["generate"] = log("generate").strip().splitlines()[-4:]
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# gpu_check ({mode})", "", f"device: {summary['device']}", ""]
for key, value in summary.items():
    if key in ("bench", "device", "mode"):
        continue
    lines.append(f"- {key}: {value}")
for name, table in summary["bench"].items():
    lines += ["", f"## {name}", "", *table]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
exit $status
