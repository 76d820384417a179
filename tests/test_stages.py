"""Every stage's train.py, run for real on the tiny BLOOM: baseline with python, DeepSpeed
ZeRO 0-3 and offload with the deepspeed launcher at one and two ranks (gloo on CPU)."""
import filecmp
import json
import re
import subprocess
import sys

import pytest

from conftest import DEEPSPEED_STAGES, EPOCHS, ROOT, RUNS, STAGES, metrics_of
from workshop.answers import squad_scores

LESSON = ["model.py", "data_loader.py", "train.py", "config.py"]
SHARED_BY_DEEPSPEED = ["config.py", "ds_config.json", "ds_zero1.json", "ds_zero2.json",
                       "ds_zero3.json", "ds_zero2_offload.json", "ds_zero3_offload.json"]
# every field docs/metrics.md documents for schema version 2: the names in its table's first column
METRICS_FIELDS = {name for cell in re.findall(r"^\| ([^|]+) \|", (ROOT / "docs" / "metrics.md").read_text(), re.M)
                  for name in re.findall(r"`([a-z_0-9]+)`", cell)}


def test_lesson_files_are_identical_copies_and_the_stage_holds_nothing_else():
    """`diff -r baseline deepspeed-single-gpu` shows what a stage teaches: the lesson's four
    files are copies (config.py differs in the DeepSpeed default alone); the rest of a stage
    folder is its DeepSpeed configs and its job; everything else is the workshop package's."""
    for name in LESSON[:3]:
        for stage in STAGES[1:]:
            assert filecmp.cmp(ROOT / "baseline" / name, ROOT / stage / name, shallow=False), (stage, name)
    for name in SHARED_BY_DEEPSPEED:
        for stage in DEEPSPEED_STAGES[1:]:
            assert filecmp.cmp(ROOT / DEEPSPEED_STAGES[0] / name, ROOT / stage / name, shallow=False), (stage, name)
    for stage in STAGES:
        files = {p.name for p in (ROOT / stage).iterdir() if p.is_file() and p.name != ".gitignore"}
        assert files - set(LESSON) - set(SHARED_BY_DEEPSPEED) <= {f"{stage}.slurm", "run_node.sh"}, files
        python = sum(len((ROOT / stage / name).read_text().splitlines()) for name in LESSON)
        assert python <= 450 and len((ROOT / stage / "train.py").read_text().splitlines()) <= 80


def test_importing_train_py_changes_nothing():
    """No signal handler, no environment variable, no process group: the run's context does
    that when train.py runs. (torch's compiler notes its default cache folder in the
    environment as it is imported: the libraries are imported first.)"""
    probe = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import deepspeed, torch, transformers.trainer
handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
environment = dict(os.environ)
import train
import torch.distributed as dist
assert handlers == {s: signal.getsignal(s) for s in handlers}, "signal handlers changed"
assert environment == dict(os.environ), set(os.environ.items()) ^ set(environment.items())
assert not dist.is_initialized()
print("unchanged")
"""
    # one stage's: train.py is the same file in every stage (above), config.py differs in a default
    stage = "deepspeed-single-gpu"
    proc = subprocess.run([sys.executable, "-c", probe, str(ROOT / stage)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT / stage)
    assert proc.stdout.strip().splitlines()[-1:] == ["unchanged"], proc.stderr[-2000:]


def test_deepspeed_stage_config_differs_from_baseline_only_in_the_deepspeed_default():
    baseline = (ROOT / "baseline" / "config.py").read_text().splitlines()
    deepspeed = (ROOT / "deepspeed-single-gpu" / "config.py").read_text().splitlines()
    changed = [(a, b) for a, b in zip(baseline, deepspeed) if a != b]
    assert len(baseline) == len(deepspeed) and len(changed) == 1
    assert changed[0][1].startswith('DEEPSPEED_CONFIG = "ds_config.json"'), changed


def load_config(name):
    return json.loads((ROOT / "deepspeed-single-gpu" / name).read_text())


@pytest.mark.parametrize("name", SHARED_BY_DEEPSPEED[1:])
def test_deepspeed_configs_load_and_differ_only_where_they_teach(name):
    """A ZeRO variant differs from ds_config.json only under zero_optimization, and offload
    also names DeepSpeed's optimizer (its CPU Adam runs the step on the CPU); the others leave
    the optimizer to the Trainer (fused AdamW: no DeepSpeed op to compile)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    HfTrainerDeepSpeedConfig(str(ROOT / "deepspeed-single-gpu" / name))  # HF's own loader
    config, base = load_config(name), load_config("ds_config.json")
    assert {k: v for k, v in config.items() if k not in ("zero_optimization", "optimizer")} == \
           {k: v for k, v in base.items() if k != "zero_optimization"}
    zero = config["zero_optimization"]
    assert ("optimizer" in config) == ("offload_optimizer" in zero)
    if "optimizer" in config:
        assert config["optimizer"] == {"type": "AdamW", "params": dict.fromkeys(
            ("lr", "betas", "eps", "weight_decay"), "auto")}
    if zero["stage"] == 3:  # without it ZeRO-3 writes no model file on save
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    for offload in ("offload_optimizer", "offload_param"):
        if offload in zero:  # pinning stated, not left to a default
            assert zero[offload] == {"device": "cpu", "pin_memory": True}
    # Filled in as the Trainer would for one fp32 rank, micro-batch 1, no accumulation.
    resolved = json.loads(json.dumps(config).replace('"enabled": "auto"', '"enabled": false')
                          .replace('"auto"', "1"))
    DeepSpeedConfig(resolved)  # DeepSpeed's own validation of every key


def epoch_pairs(reference, other):
    """The two runs' epochs side by side, each run having all of them."""
    assert len(reference["epochs"]) == len(other["epochs"]) == EPOCHS, (reference["epochs"], other["epochs"])
    return zip(reference["epochs"], other["epochs"])


def deepspeed_config(name):
    extra = RUNS[name][2]
    return extra[extra.index("--deepspeed") + 1] if "--deepspeed" in extra else None


@pytest.mark.parametrize("name", list(RUNS))
def test_run_logs_eval_loss_each_epoch_and_loss_falls(runs, name):
    metrics = metrics_of(runs(name))
    assert metrics.keys() == METRICS_FIELDS and metrics["status"] == "complete"
    assert metrics["schema_version"] == 2 and metrics["parameters"] == 132_992
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, EPOCHS + 1))
    eval_losses = [e["eval_loss"] for e in metrics["epochs"]]
    train_losses = [e["train_loss"] for e in metrics["epochs"]]
    assert eval_losses[-1] < eval_losses[0] and train_losses[-1] < train_losses[0]
    stage, ranks, _ = RUNS[name]
    config = deepspeed_config(name)
    assert metrics["world_size"] == (ranks or 1)
    assert metrics["zero_stage"] == (load_config(config)["zero_optimization"]["stage"] if config else None)
    assert metrics["precision"] == "fp32"  # fp16 is turned off on the CPU, with a notice
    assert "notice: --use_cpu: fp16/bf16 are off, this run trains in fp32 on the CPU" in runs(name)[1].stderr
    assert metrics["steps_per_epoch"] == 32 // (16 * (ranks or 1))  # 16 sequences per rank and step
    # where the time went: the parts add up to the wall time, and little is left unnamed
    parts = metrics["time_seconds"]
    assert sum(parts.values()) == pytest.approx(metrics["wall_seconds"], rel=1e-6)
    assert 0 <= parts["other"] < 0.05 * metrics["wall_seconds"], parts
    assert parts["training_steps"] > 0 and parts["evaluation"] > 0 and parts["startup"] > 0
    assert parts["checkpoint_saving"] == 0  # checkpoints by time: none in a run of seconds
    assert not list(runs(name)[0].glob("checkpoint-*"))


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3"])
def test_fp32_deepspeed_at_one_rank_matches_the_plain_trainer(runs, name):
    """Without mixed precision, ZeRO only moves state around: the losses are the baseline's."""
    baseline, deepspeed = metrics_of(runs("baseline")), metrics_of(runs(name))
    for ours, theirs in epoch_pairs(baseline, deepspeed):
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=1e-5)
        assert theirs["eval_loss"] == pytest.approx(ours["eval_loss"], rel=1e-5)


RELOAD = """
import sys, json
from transformers import Trainer, TrainingArguments, default_data_collator
from config import Settings
from data_loader import build_datasets
from model import load_model
out, model_dir, data = sys.argv[1:4]
model, tokenizer = load_model(model_dir)
args = Settings(model_name_or_path=model_dir, dataset_name_or_path=data,
                train_samples=32, eval_samples=8, max_length=64)
training_args = TrainingArguments(out, use_cpu=True, report_to="none", per_device_eval_batch_size=4)
eval_dataset = build_datasets(args, tokenizer, training_args).validation
trainer = Trainer(model=model, args=training_args, eval_dataset=eval_dataset,
                  data_collator=default_data_collator)
print(json.dumps(trainer.evaluate()))
"""


@pytest.mark.parametrize("name", ["baseline", "zero3_2ranks"])
def test_saved_model_reloads_in_a_fresh_process_with_the_logged_eval_loss(runs, tiny, name, tmp_path):
    out, _ = runs(name)
    logged = metrics_of(runs(name))["epochs"][-1]["eval_loss"]
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path), str(out), str(tiny / "data")],
                          cwd=ROOT / RUNS[name][0], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])["eval_loss"]
    assert reloaded == pytest.approx(logged, rel=1e-4)


@pytest.mark.parametrize("name", ["baseline", "zero3_2ranks"])
def test_answer_quality_before_and_after_matches_the_answers_and_the_saved_model(runs, tiny, name):
    """Every rank generates together under ZeRO-3; rank 0 writes the answers. The saved
    folder, scored on its own by answer_quality.py, gives the same answers."""
    out, _ = runs(name)
    quality = metrics_of(runs(name))["answer_quality"]
    assert quality["before"]["samples"] == quality["after"]["samples"] == 8
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8
    em, f = squad_scores([a["answer"] for a in answers], [a["references"] for a in answers])
    assert (em, f) == (quality["after"]["exact_match"], quality["after"]["f1"])
    proc = subprocess.run([sys.executable, "-m", "workshop.answers", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in (out / "answers-rescored.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in again] == [a["answer"] for a in answers]


@pytest.mark.parametrize("name, reference, tolerance", [
    ("fast_same_order", "baseline", 1e-3), ("zero2_fast_same_order", "zero2", 1e-3),
    ("fast", "baseline", 1e-2), ("zero2_fast_compiled_same_order", "zero2_fast_same_order", 1e-5)])
def test_fast_path_gives_the_workshop_loss(runs, name, reference, tolerance):
    """Dropping padding changes no loss (padding has no labels); SDPA and the chunked loss
    compute the same function. In the same sample order the train losses agree to rounding;
    eval loss is a mean over batches, so other eval batch sizes move it a little; batches
    grouped by length see the samples in another order (within 1%, as the README says). Compiled
    blocks and loss fuse kernels, which rounds differently, and pad lengths to 64 instead of 8."""
    fast, workshop = metrics_of(runs(name)), metrics_of(runs(reference))
    assert fast["fast_path"] and fast["pad_to_max_length"] is False
    assert fast["compile_blocks"] == ("compiled" in name)
    assert fast["compiling_steps"] == (1 if "compiled" in name else 0)  # one shape: 16 x 64
    for ours, theirs in epoch_pairs(workshop, fast):
        assert theirs["eval_loss"] == pytest.approx(ours["eval_loss"], rel=tolerance)
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=tolerance)
