"""Named sizes of other families through the stages' own jobs (bash, no SLURM), random weights,
the first 500 SQuAD rows: each run laid out as tools/bench_fast.py lays out its variants."""
import sys, time
from pathlib import Path
from types import SimpleNamespace
sys.path.insert(0, "tools")
from bench_fast import run_job

out, data, which = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3:]
short = ["--answer_quality", "False", "--save_model", "False"]
RUNS = {  # name: (architecture, stage, DeepSpeed config, options)
    "mistral-7b-zero3-gc": ("mistral-7b", "deepspeed-single-gpu", "ds_zero3.json", ["--max_steps", "3", "--gradient_checkpointing", "True", "--bf16", "True"]),
    "mistral-7b-fast-gc": ("mistral-7b", "baseline", None, ["--max_steps", "3", "--fast_path", "True", "--gradient_checkpointing", "True"]),
    "qwen2.5-1.5b-zero3": ("qwen2.5-1.5b", "deepspeed-single-gpu", "ds_zero3.json", ["--max_steps", "5"]),
    "qwen2.5-1.5b-fast": ("qwen2.5-1.5b", "baseline", None, ["--num_train_epochs", "1", "--fast_path", "True"]),
    "llama-3.2-1b-zero2": ("llama-3.2-1b", "deepspeed-single-gpu", "ds_zero2.json", ["--max_steps", "5"]),
    "llama-3.2-1b-gc": ("llama-3.2-1b", "baseline", None, ["--max_steps", "5", "--gradient_checkpointing", "True"]),
    "gemma-2-2b-zero2-offload": ("gemma-2-2b", "deepspeed-single-gpu", "ds_zero2_offload.json", ["--max_steps", "5"]),
    "gemma-2-2b-fast": ("gemma-2-2b", "baseline", None, ["--num_train_epochs", "1", "--fast_path", "True"]),
}
for name in which:
    arch, stage, config, options = RUNS[name]
    started = time.time()
    args = SimpleNamespace(out=out, arch=Path(f"/tmp/arch/{arch}"), data=data, job_options=[])
    m = run_job(name, stage, options + short, {"DS_CONFIG": config} if config else {}, args)
    print(f"{name}: {time.time() - started:.0f} s, " + (f"peak {max(m['peak_gpu_memory_allocated_mib']):,.0f} MiB, "
          f"host {max(m['peak_host_rss_mib']):,.0f} MiB, steady {m['steady_train_samples_per_second']}" if m else "failed"), flush=True)
