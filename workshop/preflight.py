"""The checks a run makes before it trains, from what it will hold and write: memory (the
plan's peak against the device's) and disk space (the model and checkpoints against the output
folder's disk); and validation rows that are train rows too. Each refusal is one line naming
the options to change (raised as ValueError)."""
import math
import os
import shutil
import sys
from pathlib import Path

import psutil
import torch

from workshop.metrics import checkpoints, mib
from workshop.squad import memorised, shared_rows


def check_memory(args, training_args, deepspeed, settings, longest):
    """Refuse, before training, a run whose peak the memory plan (workshop/memory_plan.py)
    puts above what this device can give: the GPU's memory, or the host's on the CPU."""
    from workshop.memory_plan import fits, predict
    cuda = training_args.device.type == "cuda"
    try:
        plan = predict(args.model_name_or_path, world_size=settings["world_size"],
                       nodes=int(os.environ.get("SLURM_NNODES", 1)),
                       per_device_train_batch_size=training_args.per_device_train_batch_size,
                       gradient_accumulation_steps=training_args.gradient_accumulation_steps,
                       max_length=args.max_length, zero_stage=deepspeed.stage,
                       precision=settings["precision"],
                       offload_optimizer=bool(deepspeed.offload("optimizer")),
                       offload_param=bool(deepspeed.offload("param")),
                       gradient_checkpointing=bool(training_args.gradient_checkpointing),
                       fast_path=args.fast_path, compile_blocks=bool(args.compile_blocks),
                       pad_to_max_length=args.pad_to_max_length, longest=longest,
                       length_multiple=args.length_multiple, save_model=args.save_model)
    except (ValueError, OSError):  # a model the plan cannot read: not checked
        return
    if cuda:
        need, capacity = plan["gpu_mib"], torch.cuda.get_device_properties(training_args.device).total_memory / 2**20
    else:  # the CPU's tensors and the process itself share the host's memory
        need, capacity = plan["gpu_mib"] + plan["host_mib"], psutil.virtual_memory().total / 2**20
    if fits(need, capacity, gpu=cuda) == "no":
        where = "this GPU's" if cuda else "this machine's"
        raise ValueError(
            f"the plan puts this run's peak at {need:,.0f} MiB per {'GPU' if cuda else 'process'} "
            f"(--max_length {args.max_length}, batch {training_args.per_device_train_batch_size}; "
            f"{plan['phase']}), above {where} {capacity:,.0f} MiB: lower --max_length or "
            f"--per_device_train_batch_size, or see what fits with `python tools/plan.py "
            f"{args.model_name_or_path}`")


def check_free_space(args, training_args, deepspeed, settings):
    """Refuse, before training, a run whose output folder's disk cannot hold what it writes
    there: its model at the end and the checkpoints it may keep at once, sized from the
    parameter count (workshop/models.py) and the precision the files are written in."""
    from workshop.models import architecture
    try:
        params = architecture(args.model_name_or_path).params
    except (ValueError, OSError):  # a model the plan cannot read: not checked
        return
    # bytes per parameter of the saved weights: fp32, but 16-bit where DeepSpeed's engine holds
    # the model in fp16/bf16; a checkpoint adds AdamW's two fp32 moments and, under DeepSpeed,
    # its fp32 master copy and (below ZeRO-3, which partitions them) its engine's copy of the weights
    weights = 2 if deepspeed.stage is not None and settings["precision"] != "fp32" else 4
    checkpoint = params * (weights + 8 if deepspeed.stage is None else
                           weights + 12 + (weights if deepspeed.stage < 3 else 0))
    model = params * weights if args.save_model else 0
    strategy = str(getattr(training_args.save_strategy, "value", training_args.save_strategy))
    steps = training_args.max_steps if training_args.max_steps > 0 else math.ceil(
        training_args.num_train_epochs * math.ceil(args.train_samples / (
            training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size)))
    every = training_args.save_steps if training_args.save_steps >= 1 else training_args.save_steps * steps
    saves = {"steps": steps // max(1, int(every)), "epoch": math.ceil(training_args.num_train_epochs)}.get(strategy, 1)
    output_dir = Path(training_args.output_dir)
    kept = len(checkpoints(output_dir)) if output_dir.is_dir() else 0
    limit = training_args.save_total_limit
    # at least one (the time limit's warning saves one); a new one is written before the oldest goes
    count = max(1, min(saves, limit + 1 - kept if limit else saves))
    need = model + count * checkpoint
    place = next(p for p in (output_dir.absolute(), *output_dir.absolute().parents) if p.exists())
    free = shutil.disk_usage(place).free
    if free < need:
        raise ValueError(
            f"--output_dir {training_args.output_dir}: its disk has {mib(free)} free, and this run "
            f"writes about {mib(need)} there ({f'the model, {mib(model)}, and ' if model else ''}"
            f"{count} checkpoint{'s' if count > 1 else ''} of {mib(checkpoint)}: weights and "
            f"optimizer state): free space there, or give an --output_dir on a disk with room"
            f"{' (--save_total_limit keeps fewer checkpoints)' if count > 1 else ''}")


def validation_rows_in_train(data, training_args):
    """How many validation rows are train rows too: their eval loss measures memory, not
    answering (said once, as a warning)."""
    count = shared_rows(data.train["input_ids"], data.validation["input_ids"])
    if count and training_args.process_index == 0:
        print(f"warning: {memorised(count, len(data.validation))}", file=sys.stderr)
    return count
