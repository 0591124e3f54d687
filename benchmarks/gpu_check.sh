#!/usr/bin/env bash
# GPU check of the paper path, in under 5 minutes on one GPU:
#   1. the paper rehearsal (./run_all.sh --profile paper --subset 8 -p device cuda, notebooks 01-03, 1 epoch)
#      on the paper-shaped fixture with a random-init OpenAI-style RN50.pt;
#   2. `clipdepth bench --device cuda --parts lockstep,input` at the paper's sizes (both datasets): the per-part
#      costs of one lockstep step, and the input side (decode, augmentation, one batch in one worker, a
#      lockstep step fed by the input pipeline with min(8, cores - 1) workers against compute alone);
# then writes OUTDIR/gpu_check.json: the rehearsal's wall time and status, the per-part costs, whether the
# GPU step is input-bound or compute-bound, and the projected GPU-hours for all of Tables 3-7 (bench's
# projection_tables_3_7_s, with and without the input side).
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Fails at once, in one line, on a machine where torch sees no CUDA device.
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2; exit 2; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${CLIPDEPTH_PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
export CLIPDEPTH_PYTHON="$PY" PYTHONPATH="$REPO/lib${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: error: no CUDA device visible to torch on this machine; run this on a GPU machine" >&2
  exit 2
fi
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"

echo "gpu_check: writing the paper-shaped fixture and a random-init RN50.pt into $OUT/fixture"
"$PY" - "$OUT/fixture" <<'PYEOF'
import sys
from pathlib import Path

import torch

from clipdepth.model.backbone import load_clip
from clipdepth.data.paper_shaped import write_paper_shaped

root = Path(sys.argv[1])
if not (root / "data").exists():
    write_paper_shaped(root / "data", n_train=8, n_test=8)
weights = root / "RN50.pt"
if not weights.exists():
    model = load_clip("RN50-quickgelu", None, seed=0)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, weights)
PYEOF

echo "gpu_check: 1/2 paper rehearsal on cuda"
t0=$(date +%s.%N)
set +e
"$REPO/run_all.sh" --profile paper --subset 8 --only 01,02,03 -p device cuda -p epochs 1 \
  -p data_dir "$OUT/fixture/data" -p weights "$OUT/fixture/RN50.pt" --reports-dir "$OUT/reports" \
  -p runs_dir "$OUT/runs" -p cache_dir "$OUT/cache" > "$OUT/rehearsal.log" 2>&1
rehearsal_rc=$?
set -e
t1=$(date +%s.%N)
tail -3 "$OUT/rehearsal.log"

echo "gpu_check: 2/2 clipdepth bench --device cuda --parts lockstep,input (paper sizes, both datasets)"
"$PY" -m clipdepth bench --device cuda --parts lockstep,input --dataset both --out "$OUT/performance.json"

"$PY" - "$OUT" "$rehearsal_rc" "$t0" "$t1" <<'PYEOF'
import json
import sys
from pathlib import Path

from clipdepth._files import atomic_write_json

out, rc, t0, t1 = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
perf = json.loads((out / "performance.json").read_text())
proj = perf["projection_tables_3_7_s"]
report = {
    "device": perf["device"], "device_name": perf["device_name"], "torch": perf["torch"],
    "rehearsal": {"command": "./run_all.sh --profile paper --subset 8 --only 01,02,03 -p device cuda -p epochs 1",
                  "exit_status": rc, "wall_seconds": round(t1 - t0, 1), "log": str(out / "rehearsal.log"),
                  "index": str(out / "reports" / "paper" / "index.html")},
    "per_part_costs_s": {name: {k: v for k, v in d.items() if k.endswith("_s") or k == "per_row"}
                         for name, d in perf["lockstep"].items()},
    "input_side": {name: {k: d[k] for k in ("workers", "decode_per_frame_s", "augment_per_frame_s",
                                            "previous_augment_per_frame_s", "input_per_batch_s",
                                            "encoder_per_batch_s", "overlap")}
                   for name, d in perf.get("input", {}).items()},
    "workers": perf.get("workers"),
    "step_bound": perf.get("input_bound"),
    "projection_formula": perf.get("projection_formula"),
    "projected_gpu_hours_tables_3_7": {k: round(v / 3600, 2) for k, v in proj.items()},
    "performance_json": str(out / "performance.json"),
}
atomic_write_json(out / "gpu_check.json", report, indent=2)
for name, bound in (report["step_bound"] or {}).items():
    side = report["input_side"][name]
    print(f"gpu_check: {name}: the GPU step is {bound}-bound with {report['workers']} input workers (one batch "
          f"{side['input_per_batch_s']:.3f} s in one worker, encoder pass {side['encoder_per_batch_s']:.3f} s)")
print(f"gpu_check: Tables 3-7 projected at {report['projected_gpu_hours_tables_3_7']} GPU-hours; "
      f"rehearsal exit {rc} in {report['rehearsal']['wall_seconds']} s; wrote {out / 'gpu_check.json'}")
sys.exit(1 if rc else 0)
PYEOF
