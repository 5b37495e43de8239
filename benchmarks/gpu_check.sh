#!/usr/bin/env bash
# GPU check: run once, from anywhere, on a machine with one CUDA GPU; about 4 minutes, under 8 (each step has a
# time limit, and the limits add up to 7.7 minutes).
#
#     bash benchmarks/gpu_check.sh            # ZOO_DATA defaults to ../shared/data (ESOL must be there)
#
# Installs nothing and reaches no network: the project runs from this checkout (PYTHONPATH=.), with the Python
# that has its dependencies (PYTHON, default python). In order:
#   1. the tests that run differently where a GPU is (device choice, DataLoader workers with pinned memory,
#      training and prediction on the GPU, DDP and exact resume), on the GPU;
#   2. molecule-solubility (ESOL, seed 0) trained for a few epochs on the GPU in bf16 and in float32, with
#      DataLoader workers 0 and auto, and on the CPU: the time of one epoch (train + validation), then the whole
#      seed-0 run on the GPU (bf16, early stopping) for its test RMSE;
#   3. zoo predict molecule-solubility over 200,000 generated rows (benchmarks/throughput.py's write_table) on
#      the GPU and on the CPU, both --workers auto: rows/s over the whole process, outputs compared;
#   4. a table of it all, with the GPU's utilisation (nvidia-smi sampled every 200 ms in the background).
# Everything lands in $GPU_CHECK_OUT (default: a new /tmp/gpu-check.*): check.md (the table), check.json, logs.
# Each step has its own time limit; one that fails or runs out is reported in the table and the rest still run.
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ZOO_DATA="${ZOO_DATA:-../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-python}"
ROWS="${ROWS:-200000}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}"
mkdir -p "$OUT"
export ZOO_HOME="$OUT/zoo-home"  # the feature cache and model store of this check only
ESOL="$ZOO_DATA/moleculenet_esol/delaney-processed.csv"
started=$(date +%s)

say() { echo "[gpu-check $(($(date +%s) - started))s] $*"; }

# --- preflight: stop early, in one line, when this is not the machine it is for ---------------------------------
command -v nvidia-smi >/dev/null || { echo "gpu_check: nvidia-smi not found: this needs a CUDA GPU" >&2; exit 2; }
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu_check: torch ($PY) sees no CUDA GPU" >&2; exit 2; }
[ -f "$ESOL" ] || { echo "gpu_check: no ESOL at $ESOL (set ZOO_DATA)" >&2; exit 2; }
"$PY" - > "$OUT/machine.json" <<'EOF'
import json, os, torch
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cores": len(os.sched_getaffinity(0)), "cpu_threads": torch.get_num_threads(),
                  "bf16_supported": torch.cuda.is_bf16_supported()}))
EOF
say "$(cat "$OUT/machine.json"); writing to $OUT"

# nvidia-smi samples in the background, one file per step
SAMPLER=""
sample_start() {
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
        > "$OUT/util-$1.csv" 2>/dev/null &
    SAMPLER=$!
}
sample_stop() { [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=""; }
trap sample_stop EXIT

# --- 1. the GPU-relevant tests, on the GPU ---------------------------------------------------------------------
say "1/3 tests"
sample_start tests
# test_engine last: its torchrun tests start processes that each take the GPU; a hang dumps its stacks in the log
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=60 tests/test_train_loader.py \
    tests/test_predict_pipeline.py tests/test_train_reliability.py tests/test_engine.py > "$OUT/tests.log" 2>&1
echo $? > "$OUT/tests.rc"
sample_stop
say "tests: $(tail -n 1 "$OUT/tests.log")"

# --- 2. training: one epoch's time per device, precision and worker count; the seed-0 run on the GPU ------------
say "2/3 training molecule-solubility"
sample_start train
timeout 80 "$PY" - "$ESOL" "$OUT" > "$OUT/train.log" 2>&1 <<'EOF'
import json, statistics, sys, time
from pathlib import Path

import zoo
from zoo.artifacts import sha256_file
from zoo.tables import read_dataset
from zoo.train import Trainer

esol, out = Path(sys.argv[1]), Path(sys.argv[2])
spec0 = zoo.info("molecule-solubility")
rows, sha = read_dataset(esol, spec0.data.reader), sha256_file(esol)
EPOCHS = 6
results = []
RUNS = [("GPU bf16, workers 0", "cuda", True, 0), ("GPU bf16, workers auto", "cuda", True, "auto"),
        ("GPU float32, workers 0", "cuda", False, 0), ("CPU float32, workers 0", "cpu", False, 0)]
for name, device, bf16, workers in RUNS:
    spec = zoo.info("molecule-solubility", overrides={"train.epochs": EPOCHS, "train.bf16": bf16})
    folder = out / "train" / name.replace(" ", "").replace(",", "-")
    start = time.perf_counter()
    _, metrics = Trainer(spec, out=folder, progress=False, device=device, workers=workers).fit(rows, data_sha256=sha)
    seconds = [json.loads(line)["epoch_s"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    results.append({"run": name, "first_epoch_s": seconds[0], "epoch_s": statistics.median(seconds[1:]),
                    "fit_s": round(time.perf_counter() - start, 2), "epochs": len(seconds),
                    "n_train": metrics["n_train"], "test_rmse": metrics["test"]["rmse"]})
    print(json.dumps(results[-1]), flush=True)
(out / "train.json").write_text(json.dumps(results, indent=1))
EOF
echo $? > "$OUT/train.rc"
sample_stop
say "epochs timed; the seed-0 run"
sample_start esol
start_s=$(date +%s.%N)
timeout 80 "$PY" -m zoo train molecule-solubility --device cuda --workers auto --out "$OUT/esol-seed0" \
    > "$OUT/esol.log" 2>&1
echo $? > "$OUT/esol.rc"
"$PY" -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$start_s" > "$OUT/esol.wall"
sample_stop
say "$(tail -n 1 "$OUT/esol.log")"

# --- 3. prediction over 200,000 rows, GPU then CPU --------------------------------------------------------------
say "3/3 zoo predict over $ROWS rows"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from throughput import write_table; \
write_table(Path(sys.argv[1]), int(sys.argv[2]))" "$OUT/molecules.csv" "$ROWS"
for device in cuda cpu; do
    sample_start "predict-$device"
    timeout 75 "$PY" - "$OUT" "$device" > "$OUT/predict-$device.log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from throughput import predict_run  # a fresh zoo predict process: rows/s over all of it, peak memory

out, device = Path(sys.argv[1]), sys.argv[2]
result = predict_run(out / "molecules.csv", out / f"predicted-{device}.csv", workers="auto", device=device)
(out / f"predict-{device}.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result))
EOF
    echo $? > "$OUT/predict-$device.rc"
    sample_stop
    say "predict $device: $(tail -n 1 "$OUT/predict-$device.log" | cut -c1-200)"
done

# --- 4. the table ---------------------------------------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF'
import csv, json, math, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
machine = json.loads((out / "machine.json").read_text())


def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None


def rc(step):
    code = (out / f"{step}.rc").read_text().strip() if (out / f"{step}.rc").is_file() else "?"
    return "ok" if code == "0" else ("timed out" if code in ("124", "137") else f"failed (exit {code}, see {step}.log)")


def util(step):
    """mean and peak GPU utilisation (%) and peak memory (MiB) in a step, from the nvidia-smi samples"""
    samples = []
    path = out / f"util-{step}.csv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            samples.append([float(v) for v in line.split(",")[:2]])
        except ValueError:
            pass
    if not samples:
        return "no samples"
    busy = [u for u, _ in samples]
    return f"{statistics.mean(busy):.0f}% mean, {max(busy):.0f}% peak, {max(m for _, m in samples):,.0f} MiB"


rows = []
tests = (out / "tests.log").read_text().strip().splitlines() if (out / "tests.log").is_file() else ["no log"]
rows.append(("GPU tests (train loader, predict pipeline, train reliability, engine)", f"{rc('tests')}: {tests[-1]}",
             util("tests")))
train = {r["run"]: r for r in read("train.json") or []}
for name, r in train.items():
    rows.append((f"train epoch, {name}", f"{r['epoch_s']:.3f} s (first {r['first_epoch_s']:.2f} s; "
                 f"{r['n_train'] / r['epoch_s']:,.0f} rows/s)", ""))
if train:
    rows[-len(train)] = rows[-len(train)][:2] + (util("train"),)
gpu, cpu = train.get("GPU bf16, workers 0"), train.get("CPU float32, workers 0")
fp32, auto = train.get("GPU float32, workers 0"), train.get("GPU bf16, workers auto")
if gpu and cpu:
    rows.append(("train epoch, GPU (bf16) over CPU", f"{cpu['epoch_s'] / gpu['epoch_s']:.2f}x faster", ""))
if gpu and fp32:
    rows.append(("bf16 speed-up on the GPU (float32 epoch / bf16 epoch)", f"{fp32['epoch_s'] / gpu['epoch_s']:.2f}x",
                 ""))
if gpu and auto:
    rows.append(("GPU epoch, DataLoader workers auto over 0", f"{gpu['epoch_s'] / auto['epoch_s']:.2f}x", ""))
if not train:
    rows.append(("training", rc("train"), util("train")))
esol = read("esol-seed0/metrics.json")
wall = (out / "esol.wall").read_text().strip() if (out / "esol.wall").is_file() else "?"
rows.append(("ESOL seed 0, whole run on the GPU (bf16, workers auto)",
             f"test RMSE {esol['test']['rmse']:.4f}, val {esol['val']['rmse']:.4f}, best epoch {esol['best_epoch']}, "
             f"{wall} s" if esol else rc("esol"), util("esol")))
pred = {d: read(f"predict-{d}.json") for d in ("cuda", "cpu")}
for device, name in (("cuda", "GPU"), ("cpu", "CPU")):
    p = pred[device]
    rows.append((f"predict {name}, --workers auto ({machine['cores']} cores)",
                 f"{p['rows_per_s']:,.0f} rows/s ({p['rows']:,} rows in {p['wall_s']} s, peak RSS "
                 f"{p['peak_rss_mb']:,.0f} MB)" if p else rc(f"predict-{device}"), util(f"predict-{device}")))
if pred["cuda"] and pred["cpu"]:
    rows.append(("predict, GPU over CPU", f"{pred['cuda']['rows_per_s'] / pred['cpu']['rows_per_s']:.2f}x", ""))
    with open(out / "predicted-cuda.csv") as a, open(out / "predicted-cpu.csv") as b:
        diff, errors_same, n = 0.0, True, 0
        for x, y in zip(csv.DictReader(a), csv.DictReader(b)):
            n += 1
            errors_same &= x.get("error", "") == y.get("error", "")
            if x.get("logS") and y.get("logS"):
                diff = max(diff, abs(float(x["logS"]) - float(y["logS"])))
    rows.append(("predict, GPU against CPU outputs", f"{n:,} rows, max |logS diff| {diff:.2e}, "
                 f"same failed rows: {errors_same}", ""))

title = (f"GPU check: {machine['gpu']}, torch {machine['torch']} (CUDA {machine['cuda']}), "
         f"{machine['cores']} cores, {machine['cpu_threads']} torch CPU threads")
table = [f"## {title}", "", "| what | result | GPU utilisation |", "|---|---|---|"]
table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
(out / "check.md").write_text("\n".join(table) + "\n")
(out / "check.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
print("\n".join(table))
EOF
say "done in $(($(date +%s) - started)) s; table and logs in $OUT (check.md)"
