"""The GPU path, run for real where there is a CUDA GPU (skipped elsewhere): fp16 and bf16
runs with their CUDA memory figures, DeepSpeed on NCCL, and compiled blocks with CUDA graphs
against the eager fast path. The rest of the suite asks for the CPU (--use_cpu True), so it
runs the same on both machines."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import DEEPSPEED, ROOT, free_port, tiny_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_run(stage, tiny, out, *extra, deepspeed=None, **overrides):
    """train.py on the GPU (no --use_cpu): the tiny model, 2 epochs; returns run_metrics.json."""
    args = tiny_args(tiny, output_dir=out, use_cpu=False, **overrides) + list(extra)
    cmd = [sys.executable, "train.py", *args]
    if deepspeed:
        cmd = [DEEPSPEED, "--num_gpus", "1", "--master_port",
               str(free_port()), "train.py", "--deepspeed", deepspeed, *args]
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}  # the GPU's, not the CPU's
    proc = subprocess.run(cmd, cwd=ROOT / stage, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "run_metrics.json").read_text())


def assert_trained_on_the_gpu(metrics, precision):
    assert metrics["status"] == "complete" and metrics["precision"] == precision
    assert metrics["gpu"] == torch.cuda.get_device_name()
    peak = max(metrics["peak_gpu_memory_allocated_mib"])
    assert 0 < peak < metrics["gpu_memory_mib"]
    losses = [e["eval_loss"] for e in metrics["epochs"]]
    assert len(losses) == 2 and losses[-1] < losses[0]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_the_gpu(tiny, tmp_path, precision):
    extra = [] if precision == "fp16" else ["--bf16", "True"]  # fp16 is the workshop's default
    assert_trained_on_the_gpu(gpu_run("baseline", tiny, tmp_path / "out", *extra), precision)


@pytest.mark.parametrize("config", ["ds_zero2.json", "ds_zero3.json"])
def test_deepspeed_on_nccl(tiny, tmp_path, config):
    metrics = gpu_run("deepspeed-single-gpu", tiny, tmp_path / "out", "--bf16", "True", deepspeed=config)
    assert_trained_on_the_gpu(metrics, "bf16")
    assert metrics["zero_stage"] == int(config[7])


def test_compiled_blocks_with_cuda_graphs_match_the_eager_fast_path(tiny, tmp_path):
    """In the same sample order, compiled blocks (CUDA graphs) and the eager fast path give the
    same losses to bf16's rounding; the compiled run counts its compiling steps apart."""
    same_order = ["--fast_path", "True", "--train_sampling_strategy", "random"]
    eager = gpu_run("baseline", tiny, tmp_path / "eager", *same_order, "--compile_blocks", "False")
    compiled = gpu_run("baseline", tiny, tmp_path / "compiled", *same_order, "--compile_blocks", "True")
    for run in (eager, compiled):
        assert_trained_on_the_gpu(run, "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert compiled["compile_blocks"] is True and compiled["compiling_steps"] >= 1
    assert eager["compile_blocks"] is False and eager["compiling_steps"] == 0
    for ours, theirs in zip(eager["epochs"], compiled["epochs"]):
        assert theirs["eval_loss"] == pytest.approx(ours["eval_loss"], rel=5e-3)
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=5e-3)
