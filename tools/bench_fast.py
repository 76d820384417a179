"""The workshop's configuration against the fast path, side by side on one GPU.

    python tools/bench_fast.py ARCH DATA [--epochs 3]

Each variant is a real run of a stage's train.py (random weights from ARCH, the same seed,
the same 16 sequences per optimizer step, the same epochs and learning rate). It prints, per
variant: steady training samples/s, its ratio to the workshop's, model FLOPs utilisation on
real (non-padding) tokens against the matrix rate measured here, peak GPU memory, the whole
run's training seconds (with the steps that compiled, which the steady speed leaves out), and
the eval loss of each epoch with its deviation from the workshop's.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--fast_path", "True"]  # on a GPU: with compiled blocks (config.py)
EAGER = ["--compile_blocks", "False"]
VARIANTS = {  # name: (stage, train.py options); one lever added at a time, then all of them
    "workshop (fp16, pad 512, bs 4 x ga 4, eager)": ("baseline", []),
    "+ bf16": ("baseline", ["--bf16", "True"]),
    "+ bf16, dynamic padding": ("baseline", ["--bf16", "True", "--pad_to_max_length", "False"]),
    "+ bf16, dynamic padding, bs 16 x ga 1": (
        "baseline", ["--bf16", "True", "--pad_to_max_length", "False",
                     "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1"]),
    "fast path without compiled blocks (the above, grouped lengths, SDPA, chunked loss)": (
        "baseline", FAST + EAGER),
    "fast path (and compiled blocks with CUDA graphs, compiled loss)": ("baseline", FAST),
    "ZeRO-2 workshop": ("deepspeed-single-gpu", ["--deepspeed", "ds_zero2.json"]),
    "ZeRO-2 fast path without compiled blocks": (
        "deepspeed-single-gpu", ["--deepspeed", "ds_zero2.json"] + FAST + EAGER),
    "ZeRO-2 fast path": ("deepspeed-single-gpu", ["--deepspeed", "ds_zero2.json"] + FAST),
}


def matmul_tflops(n=8192, repeats=20):
    """The bf16 matrix rate this GPU reaches (median of timed n x n x n products, random data)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def real_tokens_per_sample(arch, data, n_rows):
    """Mean tokens per training prompt, as data_loader.py builds them (no padding)."""
    sys.path.insert(0, str(ROOT / "baseline"))
    from config import WorkshopArguments
    from data_loader import load_split, tokenize
    dataset, _ = tokenize(load_split(str(data), "train", n_rows), AutoTokenizer.from_pretrained(arch),
                          WorkshopArguments().max_length, pad_to_max_length=False)
    return statistics.mean(len(ids) for ids in dataset["input_ids"])


def run(name, stage, options, args, out):
    """One variant through the stage's own train.py; returns its metrics (or None)."""
    output_dir = out / name.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "plus")
    launcher = ["deepspeed", "--num_gpus", "1"] if "--deepspeed" in options else [sys.executable]
    cmd = launcher + ["train.py", "--model_name_or_path", str(args.arch), "--random_weights", "True",
                      "--dataset_name_or_path", str(args.data), "--num_train_epochs", str(args.epochs),
                      "--save_strategy", "no", "--answer_quality", "False",  # random weights
                      "--output_dir", str(output_dir)] + options
    log = out / (output_dir.name + ".log")
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT / stage, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"{name}: failed (rc {proc.returncode}), see {log}", flush=True)
        return None
    return json.loads((output_dir / "run_metrics.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", type=Path, help="folder from tools/bloom_architecture.py")
    parser.add_argument("data", type=Path, help="folder with train/validation SQuAD rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-fast"))
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    args.arch, args.data, args.out = (p.resolve() for p in (args.arch, args.data, args.out))  # runs change folder
    args.out.mkdir(parents=True, exist_ok=True)

    peak = matmul_tflops()
    n_params = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.arch),
                                                dtype=torch.bfloat16).num_parameters()
    tokens = real_tokens_per_sample(args.arch, args.data, 500)
    print(f"{torch.cuda.get_device_name()}: bf16 matrix rate {peak:.0f} TFLOP/s; model "
          f"{n_params:,} parameters; {tokens:.1f} real tokens per sample", flush=True)

    results = {}
    for name, (stage, options) in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        results[name] = run(name, stage, options, args, args.out)
        if results[name]:
            print(f"{name}: {results[name]['steady_train_samples_per_second']:.1f} samples/s", flush=True)
        (args.out / "bench_fast.json").write_text(json.dumps(  # after each: a cut-off run keeps them
            dict(device=torch.cuda.get_device_name(), matmul_tflops=peak, parameters=n_params,
                 real_tokens_per_sample=tokens, results=results), indent=2))

    reference = next(iter(results.values()))
    print(f"\n| variant | samples/s | x workshop | MFU (real tokens) | peak GPU MiB | training s "
          f"(compiling steps, s) | eval loss by epoch (deviation from workshop) |\n"
          f"|---|---|---|---|---|---|---|")
    for name, m in results.items():
        if m is None:
            print(f"| {name} | failed | | | | | |")
            continue
        speed = m["steady_train_samples_per_second"]
        mfu = speed * tokens * 6 * n_params / (peak * 1e12)
        losses = ", ".join(
            f"{e['eval_loss']:.4f} ({(e['eval_loss'] / r['eval_loss'] - 1) * 100:+.2f}%)"
            for e, r in zip(m["epochs"], reference["epochs"])) if reference else ""
        print(f"| {name} | {speed:.1f} | {speed / reference['steady_train_samples_per_second']:.2f} "
              f"| {mfu:.1%} | {max(m['peak_gpu_memory_allocated_mib']):,.0f} "
              f"| {m['train_runtime']:.1f} ({m['compiling_steps']}, {m['compiling_seconds']:.1f}) "
              f"| {losses} |")

if __name__ == "__main__":
    main()
