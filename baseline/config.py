"""Every setting of a run: the workshop's values (workshop/settings.py, each with why as its
--help text), changed on the command line, e.g.
    python train.py --num_train_epochs 1 --train_samples 100
(`python train.py --help` lists them all: these and every HF TrainingArguments option).

Defaults come in layers, merged as data under what the command line gives, in any spelling
argparse accepts (an abbreviation, `--opt=value`): the workshop's, then the fast path's
(`--fast_path True`), then what this machine's GPU can do.
"""
import os
import sys
from dataclasses import MISSING, fields
from datetime import timedelta
from types import SimpleNamespace

import torch
from transformers import TrainingArguments

from workshop.checks import Parser, check_deepspeed_config, check_values
from workshop.deepspeed_config import read_deepspeed_config
from workshop.run import start_cpu_ranks
from workshop.settings import (COMPILED_LENGTH_MULTIPLE, FAST_PATH, LENGTH_MULTIPLE,
                               TRAINING_DEFAULTS, WorkshopArguments, compiling_pays)

DEEPSPEED_CONFIG = None  # the baseline trains without DeepSpeed


def device_defaults(asked, zero_stage):
    """What this machine's device changes in the defaults (reads the device, sets nothing up).

    A GPU job that sees no GPU is a broken install or a wrong partition, so it stops, unless
    the CPU was asked for (the CPU demo and the tests); the CPU trains in fp32."""
    if asked.use_cpu:
        print("notice: --use_cpu: fp16/bf16 are off, this run trains in fp32 on the CPU", file=sys.stderr)
        return dict(fp16=False, bf16=False, compile_blocks=False)
    if not torch.cuda.is_available():
        raise ValueError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}): check that the job asked for a GPU "
            "(--gres=gpu:1 or --gpus=1, a GPU partition), that `nvidia-smi` works on the node and "
            "that the environment has a CUDA build of torch; to train on the CPU on purpose "
            "add --use_cpu True")
    if asked.fp16 and torch.cuda.get_device_capability() < (6, 0):
        raise ValueError(f"fp16 needs a GPU of compute capability 6.0 or newer; "
                         f"{torch.cuda.get_device_name()} has "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability()))}: use --fp16 False")
    defaults = {}
    if asked.bf16 and not torch.cuda.is_bf16_supported():
        print(f"notice: {torch.cuda.get_device_name()} has no bf16: fp16 instead", file=sys.stderr)
        defaults.update(bf16=False, fp16=True)
    if asked.fast_path and asked.compile_blocks is None:
        defaults["compile_blocks"] = compiling_pays(
            zero_stage, asked.per_device_train_batch_size, asked.gradient_accumulation_steps,
            asked.train_samples, asked.num_train_epochs, asked.max_steps,
            int(os.environ.get("WORLD_SIZE", 1)))
    return defaults


def parse_args(argv=None):
    """(WorkshopArguments, the TrainingArguments settings as a dict, the DeepSpeed config):
    the command line parsed once, over the layered defaults; every value checked. Nothing is
    set up: training_arguments() below starts the run's processes."""
    parser = Parser((WorkshopArguments, TrainingArguments))
    given = parser.given(argv)
    every = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
             for cls in (WorkshopArguments, TrainingArguments) for f in fields(cls)
             if f.init and (f.default, f.default_factory) != (MISSING, MISSING)}  # dataclasses' own
    layers = {**every, **TRAINING_DEFAULTS, "deepspeed": DEEPSPEED_CONFIG}
    if given.get("fast_path", False):
        layers.update(FAST_PATH)
    if given.get("bf16"):
        layers["fp16"] = False  # asking for bf16 replaces the workshop's fp16
    deepspeed = read_deepspeed_config({**layers, **given}["deepspeed"])
    layers.update(device_defaults(SimpleNamespace(**{**layers, **given}), deepspeed.stage))
    asked = SimpleNamespace(**{**layers, **given})
    if asked.length_multiple is None:
        asked.length_multiple = COMPILED_LENGTH_MULTIPLE if asked.compile_blocks else LENGTH_MULTIPLE
    check_values(asked, deepspeed)
    workshop = {f.name for f in fields(WorkshopArguments)}
    return (WorkshopArguments(**{k: v for k, v in vars(asked).items() if k in workshop}),
            {k: v for k, v in vars(asked).items() if k not in workshop}, deepspeed)


def training_arguments(settings):
    """HF's TrainingArguments, and with them the run's processes meeting: the one place where
    the distributed setup happens."""
    # --ddp_timeout for every collective: HF gives it to the default process group only, and
    # DeepSpeed's ZeRO-0/1/2 make their groups without one (torch's default then: 30 minutes
    # for gloo, 10 for NCCL), so a lost node would hang the job that long.
    import torch.distributed.distributed_c10d as c10d
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timedelta(seconds=settings["ddp_timeout"])
    if settings["use_cpu"] and settings["deepspeed"]:  # DeepSpeed's ranks on gloo
        settings = {**settings, **start_cpu_ranks(settings["ddp_timeout"])}
    training_args = TrainingArguments(**settings)  # with a DeepSpeed config: the process group
    check_deepspeed_config(training_args)  # as HF filled in its "auto" values from the settings
    return training_args
