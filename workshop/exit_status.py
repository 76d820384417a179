"""How a run ends: the exit status its job acts on, and one line saying why where it did not
complete. Signals while the run is on (Signals) end it through SystemExit, so that its metrics
are still written on the way out.

Exit statuses (the .slurm jobs act on them): 0 complete, STOPPED_TO_RESUME (75) stopped on
request with a checkpoint (the job requeues itself), 1 refused or failed (the reason is the
last line, `error: ...`), 128 + signal when killed (143: scancel, the time limit).
"""
import contextlib
import errno
import logging
import os
import re
import signal
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

from workshop.callbacks import is_distributed
from workshop.checks import deepspeed_refusal
from workshop.metrics import STOPPED_TO_RESUME


@dataclass
class Ending:
    """How the run ended: its status (run_metrics.json's), exit status and reason."""
    status: str  # complete, stopped_on_request, interrupted, failed
    code: int
    error: str | None = None
    out_of_memory: str | None = None  # "gpu" where the GPU's memory ran out
    refused: bool = False  # DeepSpeed refused its config as it started: nothing is written


def by_signal(error):
    """Whether an exception is the SystemExit that Signals raises (argparse's are others)."""
    return isinstance(error, SystemExit) and isinstance(error.code, int) and error.code >= 128


def ending(error, tb, stopped_to_resume, training, full_disk, deepspeed_config):
    """How a run that raised `error` (None: none) ended. `training`: after its first step;
    `full_disk(error)`: the output folder's line for a full disk, None where it is not the
    folder's to say (before training and outside a save: a refusal or load_op's own line)."""
    if error is None:
        return Ending("stopped_on_request", STOPPED_TO_RESUME) if stopped_to_resume else Ending("complete", 0)
    if by_signal(error):  # SIGTERM (scancel, time limit) or SIGINT
        return Ending("interrupted", error.code, f"stopped by signal {error.code - 128}")
    if disk_full(error) and (said := full_disk(error)):
        return Ending("failed", 1, said)
    deepspeed_frames = [f for f in traceback.extract_tb(tb) if f"{os.sep}deepspeed{os.sep}" in f.filename]
    if isinstance(error, CONFIG_ERRORS) and deepspeed_frames and not training:
        where = deepspeed_frames[-1]  # DeepSpeed checks its config by assertions as it starts
        said = " ".join(str(error).split()) or f"assert {where.line}"
        if not isinstance(error, AssertionError):
            said = f"{type(error).__name__}: {said}"
        place = f"{where.filename.split(f'{os.sep}site-packages{os.sep}')[-1]}:{where.lineno}"
        return Ending("failed", 1, deepspeed_refusal(deepspeed_config, f"{said[:300]}; {place}"), refused=True)
    if not isinstance(error, (ValueError, OSError)):  # a fault: its traceback, then why
        traceback.print_exception(type(error), error, tb)
    return Ending("failed", 1, one_line(error), "gpu" if isinstance(error, torch.OutOfMemoryError) else None)


class Signals:
    """SIGTERM and SIGINT while the run is on (scancel and the time limit send SIGTERM): the
    first ends the run through SystemExit(128 + signal); a SIGTERM during training ends it after
    the current step instead, saved if the job says it is a preemption (Checkpoints, once the
    run has them). Later ones are ignored: SLURM signals every process of the job and the
    deepspeed launcher passes it on to its ranks, and a second signal would cut the metrics
    file short. The handlers before are restored on exit."""

    def __init__(self):
        self.handlers, self.checkpoints = {}, None

    def __enter__(self):
        self.handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exception):
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        return False

    def _on_signal(self, signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if signum == signal.SIGTERM and self.checkpoints is not None and self.checkpoints.training:
            self.checkpoints.terminated = True
            return
        sys.exit(128 + signum)


def one_line(error):
    """The reason for a failure, in one line, with what to do where that is known."""
    text = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, torch.OutOfMemoryError):
        numbers = re.findall(r"(?:allocate|capacity of|memory) ([\d.]+ [GM]iB)", text)
        said = (f" (asked {numbers[0]} more with {numbers[2]} allocated, of {numbers[1]})"
                if len(numbers) >= 3 else "")
        return (f"out of GPU memory{said}: `python tools/plan.py MODEL --gpu A100-40GB` "
                f"says what fits; try --gradient_checkpointing True, a smaller "
                f"--per_device_train_batch_size with more --gradient_accumulation_steps, or ZeRO "
                f"with offload")
    if "timed out" in text.lower() or "timeout" in type(error).__name__.lower():
        return (f"a collective operation timed out ({text[:160]}): another rank or node stopped "
                f"answering; its own log says why (COLLECTIVE_TIMEOUT, --ddp_timeout, sets the wait)")
    return f"{type(error).__name__}: {text}" if not isinstance(error, (ValueError, OSError)) else text


# What DeepSpeed raises, as it sets up the model and the engine, on a config it cannot run
CONFIG_ERRORS = (AssertionError, TypeError, ValueError, KeyError, AttributeError, NotImplementedError)


def causes(error):
    """An exception and those it came from (raise ... from, or raised while handling)."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error):
    """Whether a failure comes down to a full disk or quota (safetensors and torch.save say so
    in their own exceptions' text)."""
    return any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
               or re.search(r"No space left on device|Disk quota exceeded|StorageFull", str(e))
               for e in causes(error))


def close_progress_bars():
    """The Trainer's progress bars that a failure or a signal left open, closed now: else they
    redraw as the process exits, after its summary and its reason."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def leave(code):
    """Exit with the run's exit status. With several ranks no rank goes through the
    interpreter's teardown, which can abort after the run has ended and said so (ZeRO-3 at 2
    ranks: "terminate called without an active exception", signal 6, after a success and after
    a cancelled job's summary): a rank that finished waits for the others, then leaves at once;
    a failed or stopped rank leaves at once (the launcher then ends the others)."""
    if is_distributed():
        if code in (0, STOPPED_TO_RESUME):
            dist.barrier()
            dist.destroy_process_group()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
