"""A stage's settings (its config.py) under the command line, checked, and the run's processes
started: train.py's one call, parse_args(Settings).

Defaults come in layers, merged as data under what the command line gives, in any spelling
argparse accepts (an abbreviation, `--opt=value`): TrainingArguments' and RunOptions' own,
the workshop's (RUN_DEFAULTS, then the stage's Settings), the fast path's (`--fast_path
True`), then what this machine's device can do.
"""
import argparse
import difflib
import os
import sys
from dataclasses import MISSING, fields
from datetime import timedelta

from transformers import HfArgumentParser, TrainingArguments

from workshop.checks import check_deepspeed_config, check_values
from workshop.deepspeed_config import read_deepspeed_config
from workshop.settings import (COMPILED_LENGTH_MULTIPLE, FAST_PATH, LENGTH_MULTIPLE, RUN_DEFAULTS,
                               RunOptions, compiling_pays)


class Parser(HfArgumentParser):
    """HF's parser over a stage's Settings, RunOptions and TrainingArguments, listed by --help in
    that order (the Settings' options replace TrainingArguments' of the same name, with their
    defaults and why). Its errors are one line: a misspelled option gets the closest real one,
    not the 100-line usage."""

    def __init__(self, settings):
        super().__init__((TrainingArguments, RunOptions, settings), conflict_handler="resolve")
        order = [{"help"}] + [{f.name for f in fields(cls)} for cls in (settings, RunOptions)]
        self._optionals._group_actions.sort(
            key=lambda action: next((i for i, names in enumerate(order) if action.dest in names), len(order)))

    def error(self, message):
        unknown = message.split("unrecognized arguments: ")[-1].split() if "unrecognized" in message else []
        options = [o for action in self._actions for o in action.option_strings]
        hints = [f"{u}: did you mean {close[0]}?" for u in unknown if u.startswith("--")
                 and (close := difflib.get_close_matches(u.split("=")[0], options, n=1))]
        sys.exit(f"error: {'; '.join(hints) or message} (python train.py --help lists every option)")

    def given(self, argv=None):
        """The options given on the command line alone, as argparse understood them (an
        abbreviation, `--opt=value`): parsed once, with no default filled in. An option given
        twice is refused: argparse would keep the last value without a word."""
        for action in self._actions:
            if action.dest != "help":
                action.default = argparse.SUPPRESS
        parser = self

        class OnceEach(argparse.Namespace):
            """argparse sets each option it meets on its namespace: one set twice was given
            twice (also as an abbreviation, or in its --no_ form)."""
            def __setattr__(self, name, value):
                if name in vars(self):
                    parser.error(f"--{name} is given twice ({getattr(self, name)!r}, then "
                                 f"{value!r}): give it once")
                super().__setattr__(name, value)
        return vars(self.parse_args(argv, namespace=OnceEach()))


def device_defaults(asked, zero_stage):
    """What this machine's device changes in the defaults (reads the device, sets nothing up).

    A GPU job that sees no GPU is a broken install or a wrong partition, so it stops, unless
    the CPU was asked for (the CPU demo and the tests); the CPU trains in fp32."""
    import torch
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


def parse(settings, argv=None):
    """(the workshop's arguments, the TrainingArguments settings as a dict, the DeepSpeed
    config): the command line parsed once over the layered defaults (`settings`: a stage's
    Settings dataclass), every value checked. Nothing is set up (start() does)."""
    parser = Parser(settings)
    given = parser.given(argv)
    layers = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
              for cls in (TrainingArguments, RunOptions, settings) for f in fields(cls)
              if f.init and (f.default, f.default_factory) != (MISSING, MISSING)}  # dataclasses' own
    layers.update(RUN_DEFAULTS)
    if given.get("fast_path", False):
        layers.update(FAST_PATH)
    if given.get("bf16"):
        layers["fp16"] = False  # asking for bf16 replaces the workshop's fp16
    deepspeed = read_deepspeed_config({**layers, **given}["deepspeed"])
    layers.update(device_defaults(argparse.Namespace(**{**layers, **given}), deepspeed.stage))
    asked = argparse.Namespace(**{**layers, **given})
    if asked.length_multiple is None:
        asked.length_multiple = COMPILED_LENGTH_MULTIPLE if asked.compile_blocks else LENGTH_MULTIPLE
    check_values(asked, deepspeed)
    trainer = {f.name for f in fields(TrainingArguments)}
    return (argparse.Namespace(**{k: v for k, v in vars(asked).items() if k not in trainer}),
            {k: v for k, v in vars(asked).items() if k in trainer}, deepspeed)


def start(settings, deepspeed, clock=None):
    """HF's TrainingArguments, and with them the run's processes meeting: the one place where
    the distributed setup happens, and DeepSpeed's with it."""
    # --ddp_timeout for every collective: HF gives it to the default process group only, and
    # DeepSpeed's ZeRO-0/1/2 make their groups without one (torch's default then: 30 minutes
    # for gloo, 10 for NCCL), so a lost node would hang the job that long.
    import torch.distributed.distributed_c10d as c10d
    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timedelta(seconds=settings["ddp_timeout"])
    if settings["use_cpu"] and settings["deepspeed"]:  # DeepSpeed's ranks on gloo
        settings = {**settings, **start_cpu_ranks(settings["ddp_timeout"])}
    training_args = TrainingArguments(**settings)  # with a DeepSpeed config: the process group
    check_deepspeed_config(training_args)  # as HF filled in its "auto" values from the settings
    if deepspeed.offload("optimizer") == "cpu":  # DeepSpeed's CPU Adam, a C++ op compiled on
        # first use (make setup builds it): loaded here so that a build counts as compiling
        from workshop.build_ops import load_op
        load_op("CPUAdamBuilder", clock)
    return training_args


def start_cpu_ranks(timeout_seconds):
    """DeepSpeed's ranks on the CPU (the demo, the tests): its CPU accelerator on gloo (it would
    ask for oneCCL, HF for NCCL), started before HF's TrainingArguments, which then take it.
    Returns the TrainingArguments settings that go with it."""
    from workshop.build_ops import load_op
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    load_op("ShareMemCommBuilder")  # DeepSpeed loads it as it starts: said here if it builds
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=timeout_seconds))
    return dict(ddp_backend="gloo")


def parse_args(settings, argv=None, clock=None):
    """(the workshop's arguments, HF's TrainingArguments, the DeepSpeed config): a stage's
    Settings under the command line, checked (parse), then the run's processes started (start;
    `clock`: the run's, which counts an op that DeepSpeed has to build as compiling)."""
    args, training_settings, deepspeed = parse(settings, argv)
    return args, start(training_settings, deepspeed, clock), deepspeed
