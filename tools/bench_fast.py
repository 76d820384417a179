"""The workshop's job against the fast path's, whole jobs as a participant waits for them.

    python tools/bench_fast.py ARCH DATA [--epochs N] [--out bench-fast] [--deepspeed ds_zero1.json ...]
                                         [-- more train.py options for every job]

Each variant is its stage's own .slurm job run with bash on this machine's GPU: the job marks
its start, so a job's time is all of it (Python's start, imports, building the model,
compiling, training, evaluating, answering, saving). Random weights from ARCH
(tools/architecture.py), the workshop's rows of DATA (config.py), the same seed. In one call, in
this order: the workshop's configuration (the reference), the fast path as it chooses for
this many steps (workshop.settings.compiling_pays: compiled only where that pays), the fast
path with compiled blocks asked for, with an empty compile cache (COMPILE_CACHE: cold) and
again with the cache it left (warm); then the compiled fast path through DeepSpeed for each
--deepspeed config (warm cache, --deepspeed_steps steps: their steady speed only).

Prints a table: job seconds and their ratio to the workshop's job with the same cache, the
fixed cost (job minus training steps, evaluation and answer generation), compiling seconds,
steady samples/s and its ratio to the workshop's, and the eval loss's largest deviation from
the workshop's over the epochs. Exit status 1 when the workshop's run failed or a variant's
eval loss deviates by more than --tolerance (random weights: losses compare between
variants of one call, they mean nothing else).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from workshop.metrics import fixed_cost
from workshop.settings import workshop_defaults

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"baseline": "baseline/baseline.slurm",
        "deepspeed-single-gpu": "deepspeed-single-gpu/deepspeed-single-gpu.slurm"}
FAST = ["--fast_path", "True"]


def run_job(name, stage, options, env, args):
    """One job through bash; returns its run_metrics.json (or None). Laid out as a stage is,
    for tools/tables.py: OUT/<name>/runs/<name>/ and OUT/<name>/log/<name>.out and CSVs."""
    folder = args.out / name
    shutil.rmtree(folder, ignore_errors=True)
    run_dir = folder / "runs" / name
    env = {**os.environ, "OUTPUT_DIR": str(run_dir), **env}
    command = ["bash", JOBS[stage], "--model_name_or_path", str(args.arch), "--random_weights", "True",
               "--dataset_name_or_path", str(args.data), *options, *args.job_options]
    (folder / "log").mkdir(parents=True)
    log = folder / "log" / f"{name}.out"
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    for weights in run_dir.glob("*.safetensors"):  # random weights, GBs: not worth keeping
        weights.unlink()
    if run := re.search(r"^run (\S+) on ", log.read_text(errors="replace"), re.M):  # its memory logs
        for path in (ROOT / stage / "log").glob(f"{run[1]}-*.csv"):
            shutil.move(path, folder / "log" / path.name.replace(run[1], name, 1))
        (ROOT / stage / "log" / f"{run[1]}.out").unlink(missing_ok=True)  # the copy the job kept
    metrics = run_dir / "run_metrics.json"
    if proc.returncode != 0 or not metrics.is_file():
        print(f"{name}: failed (exit status {proc.returncode}), see {log}", flush=True)
        return None
    return json.loads(metrics.read_text())


def deviation(m, reference):
    """Largest relative deviation of the eval loss from the reference's, over the evaluations
    made after the same number of samples (a run cut short by --max_steps ends mid-epoch)."""
    seen = lambda run, e: e["step"] * run["per_device_train_batch_size"] * run["gradient_accumulation_steps"]
    theirs = {seen(reference, r): r["eval_loss"] for r in reference["epochs"]}
    return max((abs(e["eval_loss"] / theirs[seen(m, e)] - 1) for e in m["epochs"] if seen(m, e) in theirs),
               default=None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", type=Path, help="folder from tools/architecture.py")
    parser.add_argument("data", type=Path, help="folder with train/validation SQuAD rows")
    parser.add_argument("--epochs", type=float, default=workshop_defaults()["num_train_epochs"],
                        help="the workshop's (config.py) unless given")
    parser.add_argument("--out", type=Path, default=Path("bench-fast"))
    parser.add_argument("--deepspeed", nargs="*", default=[], metavar="CONFIG",
                        help="DeepSpeed configs of deepspeed-single-gpu/ to run the fast path through")
    parser.add_argument("--deepspeed_steps", type=int, default=30)
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="largest relative eval-loss deviation from the workshop's (default 1%%)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # after --: options for every job
    args = parser.parse_args(argv[:split])
    args.job_options = argv[split + 1:]
    args.arch, args.data, args.out = (p.resolve() for p in (args.arch, args.data, args.out))
    args.out.mkdir(parents=True, exist_ok=True)
    # The file cache: the first import of torch and transformers on a fresh machine takes about
    # twice as long as later ones; every job here starts after this one.
    subprocess.run([sys.executable, "-c", "import torch, transformers, deepspeed, datasets"], check=True)

    epochs = ["--num_train_epochs", f"{args.epochs:g}"]
    compiled, cache = FAST + ["--compile_blocks", "True"], {"COMPILE_CACHE": str(args.out / "cache")}
    shutil.rmtree(args.out / "cache", ignore_errors=True)
    variants = [("workshop", "baseline", epochs, {"COMPILE_CACHE": str(args.out / "cache-workshop")}),
                ("fast path", "baseline", FAST + epochs, {"COMPILE_CACHE": str(args.out / "cache-fast")}),
                ("fast path compiled cold", "baseline", compiled + epochs, cache),
                ("fast path compiled warm", "baseline", compiled + epochs, cache)]
    variants += [(f"{config.removesuffix('.json')} fast path compiled warm", "deepspeed-single-gpu",
                  compiled + ["--max_steps", str(args.deepspeed_steps), "--answer_quality", "False",
                              "--save_model", "False"], {**cache, "DS_CONFIG": config})
                 for config in args.deepspeed]
    for name, *_ in variants[:2]:
        shutil.rmtree(args.out / f"cache-{name.split()[0]}", ignore_errors=True)
    results = {}
    for name, stage, options, env in variants:
        started = time.time()
        results[name] = run_job(name.replace(" ", "-"), stage, options, env, args)
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
        (args.out / "bench.json").write_text(json.dumps(results, indent=1))  # kept if cut off

    reference, plain_fast = results.get("workshop"), results.get("fast path compiled warm")
    if not reference:
        sys.exit("bench_fast: the workshop's own job failed: no reference")
    print(f"\n{reference['gpu']}; torch {reference['versions']['torch']}; "
          f"{args.epochs:g} epochs of {reference['train_samples']} rows\n")
    rows, drifted = [], []
    for name, m in results.items():
        if m is None:
            rows.append({"variant": name, "job s": "failed"})
            continue
        parts, speed = m["time_seconds"], m["steady_train_samples_per_second"]
        dev = deviation(m, reference) if m["epochs"] else None
        if dev is not None and dev > args.tolerance:
            drifted.append(f"{name}: {dev:.2%}")
        rows.append({
            "variant": name, "job s": f"{m['wall_seconds']:.1f}",
            "job / workshop's": f"{m['wall_seconds'] / reference['wall_seconds']:.2f}",
            "fixed cost s": f"{fixed_cost(m):.1f}",
            "compiling s (steps)": f"{parts['compiling']:.1f} ({m['compiling_steps']})",
            "training steps s": f"{parts['training_steps']:.1f}", "steady samples/s": f"{speed:.1f}",
            "steady x workshop": f"{speed / reference['steady_train_samples_per_second']:.2f}",
            "steady / compiled fast path": f"{speed / plain_fast['steady_train_samples_per_second']:.2f}"
            if plain_fast else "",
            "eval loss deviation": "" if dev is None else f"{dev:.2%}"})
    print(pd.DataFrame(rows).fillna("").to_markdown(index=False))
    if drifted:
        sys.exit(f"bench_fast: eval loss beyond {args.tolerance:.0%} of the workshop's: {'; '.join(drifted)}")


if __name__ == "__main__":
    main()
