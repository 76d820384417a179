"""Exploration on one GPU (not the project's benchmark): how the fast path's compiled blocks
should be compiled (CUDA graphs or not, static or dynamic shapes) for a whole job's time, and
what DeepSpeed's engine costs the fast path at stages 0/1/2.

    python explore.py ARCH DATA OUT
Each variant is a real train.py run (random weights of ARCH, the first 500 rows of DATA);
JOB_STARTED_AT is set just before Python starts, so wall_seconds is the whole process.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
arch, data, out = (Path(a).resolve() for a in sys.argv[1:4])
out.mkdir(parents=True, exist_ok=True)
COMMON = ["--model_name_or_path", str(arch), "--random_weights", "True", "--dataset_name_or_path",
          str(data), "--num_train_epochs", "1"]
# train.py with fast_path.COMPILE_OPTIONS and config.COMPILED_LENGTH_MULTIPLE set first
PATCHED = """
import json, os, runpy, sys
sys.path.insert(0, os.getcwd())
import config, fast_path
fast_path.COMPILE_OPTIONS = json.loads(os.environ["X_COMPILE_OPTIONS"])
config.COMPILED_LENGTH_MULTIPLE = int(os.environ["X_MULTIPLE"])
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""
BIG_BUCKETS = Path("/tmp/ds_zero2_big_buckets.json")
config = json.loads((ROOT / "deepspeed-single-gpu" / "ds_zero2.json").read_text())
config["zero_optimization"]["reduce_bucket_size"] = 500_000_000
BIG_BUCKETS.write_text(json.dumps(config))
DS = ["deepspeed", "--num_gpus", "1", "--master_port", "29555", "train.py"]
FAST = ["--fast_path", "True"]
SHORT = ["--max_steps", "25", "--answer_quality", "False", "--save_model", "False"]
VARIANTS = [  # name, stage, command, options, env
    ("workshop", "baseline", [sys.executable, "train.py"], [], {}),
    ("fast static RO64 cold", "baseline", [sys.executable, "-c", PATCHED], FAST + ["--compile_blocks", "True"],
     dict(X_COMPILE_OPTIONS='{"mode": "reduce-overhead", "dynamic": false}', X_MULTIPLE="64", COMPILE_CACHE="/tmp/cc-a")),
    ("fast dynamic default8 cold", "baseline", [sys.executable, "-c", PATCHED], FAST + ["--compile_blocks", "True"],
     dict(X_COMPILE_OPTIONS='{"mode": "default", "dynamic": true}', X_MULTIPLE="8", COMPILE_CACHE="/tmp/cc-b")),
    ("fast dynamic default8 warm", "baseline", [sys.executable, "-c", PATCHED], FAST + ["--compile_blocks", "True"],
     dict(X_COMPILE_OPTIONS='{"mode": "default", "dynamic": true}', X_MULTIPLE="8", COMPILE_CACHE="/tmp/cc-b")),
    ("fast static RO64 warm", "baseline", [sys.executable, "-c", PATCHED], FAST + ["--compile_blocks", "True"],
     dict(X_COMPILE_OPTIONS='{"mode": "reduce-overhead", "dynamic": false}', X_MULTIPLE="64", COMPILE_CACHE="/tmp/cc-a")),
    ("fast dynamic RO64 cold", "baseline", [sys.executable, "-c", PATCHED], FAST + ["--compile_blocks", "True"],
     dict(X_COMPILE_OPTIONS='{"mode": "reduce-overhead", "dynamic": true}', X_MULTIPLE="64", COMPILE_CACHE="/tmp/cc-c")),
    ("fast eager", "baseline", [sys.executable, "train.py"], FAST + ["--compile_blocks", "False"], {}),
    ("plain fast RO64 short", "baseline", [sys.executable, "train.py"], FAST + ["--compile_blocks", "True"] + SHORT,
     dict(COMPILE_CACHE="/tmp/cc-a")),
    ("ZeRO-0 fast RO64 short", "deepspeed-single-gpu", DS, ["--deepspeed", "ds_config.json"] + FAST + ["--compile_blocks", "True"] + SHORT,
     dict(COMPILE_CACHE="/tmp/cc-a")),
    ("ZeRO-1 fast RO64 short", "deepspeed-single-gpu", DS, ["--deepspeed", "ds_zero1.json"] + FAST + ["--compile_blocks", "True"] + SHORT,
     dict(COMPILE_CACHE="/tmp/cc-a")),
    ("ZeRO-2 fast RO64 short", "deepspeed-single-gpu", DS, ["--deepspeed", "ds_zero2.json"] + FAST + ["--compile_blocks", "True"] + SHORT,
     dict(COMPILE_CACHE="/tmp/cc-a")),
    ("ZeRO-2 big buckets fast RO64 short", "deepspeed-single-gpu", DS, ["--deepspeed", str(BIG_BUCKETS)] + FAST + ["--compile_blocks", "True"] + SHORT,
     dict(COMPILE_CACHE="/tmp/cc-a")),
]
only = sys.argv[4:]
rows = []
for name, stage, command, options, env in VARIANTS:
    if only and not any(o in name for o in only):
        continue
    folder = out / name.replace(" ", "_")
    shutil.rmtree(folder, ignore_errors=True)
    env = {**os.environ, **env, "JOB_STARTED_AT": f"{time.time():.3f}"}
    started = time.time()
    with open(out / f"{folder.name}.log", "w") as log:
        try:
            rc = subprocess.run(command + COMMON + options + ["--output_dir", str(folder)],
                                cwd=ROOT / stage, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=150).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    metrics = folder / "run_metrics.json"
    m = json.loads(metrics.read_text()) if metrics.is_file() else {}
    for path in folder.glob("*.safetensors"):
        path.unlink()  # 2.2 GB of random weights
    row = dict(name=name, rc=rc, seconds=time.time() - started, wall=m.get("wall_seconds"),
               steady=m.get("steady_train_samples_per_second"), parts=m.get("time_seconds"),
               compiling_steps=m.get("compiling_steps"),
               eval=[e["eval_loss"] for e in m.get("epochs", [])],
               peak=max(m.get("peak_gpu_memory_allocated_mib") or [0] ,key=lambda v: v or 0))
    rows.append(row)
    print(json.dumps(row), flush=True)
    (out / "explore.json").write_text(json.dumps(rows, indent=1))
print("\n| variant | rc | job s | steady samples/s | compiling steps | compiling s | training s | startup s | eval loss | peak MiB |")
for r in rows:
    p = r["parts"] or {}
    print(f"| {r['name']} | {r['rc']} | {r['wall'] or 0:.1f} | {r['steady'] or 0:.1f} | {r['compiling_steps']} | "
          f"{p.get('compiling', 0):.1f} | {p.get('training_steps', 0):.1f} | {p.get('startup', 0):.1f} | "
          f"{r['eval']} | {r['peak'] or 0:,.0f} |")
