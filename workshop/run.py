"""The run around train.py's lesson: one context (Run), composed of parts that each do one job,
and exited like any other context, its exit status kept for train.py to leave with (leave):

    its compile caches        compile_cache.py    set for the run, as they were after
    its signals               exit_status.py      SIGTERM/SIGINT end the run, its metrics written
    its time                  callbacks.Clock     where the job's seconds go
    its checkpoints           callbacks.Checkpoints   on time and on request
    its output folder         output_folder.py    one run at a time; left whole
    its metrics file          metrics_file.py     run_metrics.json, however the run ends
    its exit status           exit_status.py      0, 75, 1 or 128 + signal, with the reason last
    the checks before training    preflight.py    memory, disk space

Nothing happens on import; nothing process-wide changes that the run does not own.
"""
import contextlib
import os
import sys

from transformers import AutoConfig

from workshop.callbacks import AnswerQualityBeforeTraining, Checkpoints, Clock, StepProfiler, TrainingLog
from workshop.compile_cache import compile_caches
from workshop.exit_status import Signals, by_signal, close_progress_bars, ending, leave
from workshop.metrics import checkpoint_step
from workshop.metrics_file import MetricsFile
from workshop.output_folder import OutputFolder
from workshop.preflight import check_free_space, check_memory, validation_rows_in_train
from workshop.resume import resume_point, run_settings

__all__ = ["Run", "leave"]  # what train.py takes: the context, and the exit with its status


def job_started_at():
    """When the job started: JOB_STARTED_AT (epoch seconds, set by the .slurm job first thing),
    else this process's start."""
    if "JOB_STARTED_AT" in os.environ:
        return float(os.environ["JOB_STARTED_AT"])
    import psutil
    return psutil.Process().create_time()


class Run:
    """The context around train.py. What train.py tells it: what the run is (begin), the data
    (callbacks), the parts it times (timing), the answers (record_answers). However the run
    ends, it writes run_metrics.json and sets exit_status; a failure's reason is the last line."""

    def __init__(self):
        self.clock = Clock(job_started_at())
        self.signals, self.parts = Signals(), contextlib.ExitStack()
        self.args = self.training_args = self.deepspeed = self.settings = None
        self.folder = self.checkpoints = self.metrics = self.exit_status = None

    def __enter__(self):
        self.parts.enter_context(self.signals)  # scancel and the time limit: the metrics are still written
        self.parts.enter_context(compile_caches())  # what is compiled is kept for the next job
        return self

    def __exit__(self, kind, error, tb):
        self.parts.close()
        if isinstance(error, SystemExit) and not by_signal(error):
            self._release()
            return False  # argparse's own exits (--help, a misspelled option) pass
        end = self._ending(error, tb)
        close_progress_bars()
        if self.metrics is not None and self.metrics.model is not None and not end.refused:
            try:
                self.metrics.write(end)
            except Exception as e:  # after a failure, its reason is what matters
                if error is None:  # a full disk, say: the run is not complete without its metrics
                    end = self._ending(e, e.__traceback__)
        self._release()
        if end.error and end.status != "interrupted":
            print(f"error: {end.error}", file=sys.stderr, flush=True)
        self.exit_status = end.code
        return True

    def _ending(self, error, tb):
        training = self.clock.first_step_at is not None
        folder = self.folder
        return ending(error, tb, self.stopped_to_resume, training,
                      lambda e: folder.full_disk(e) if folder and (folder.saving or training) else None,
                      getattr(self.training_args, "deepspeed", None))

    def _release(self):
        if self.folder is not None:
            self.folder.release()

    def begin(self, args, training_args, deepspeed):
        """Note what the run is; refuse a finished run, a folder another run holds, a checkpoint
        that cannot be resumed, a disk too small; returns the checkpoint to resume from, or None."""
        self.args, self.training_args, self.deepspeed = args, training_args, deepspeed
        self.settings = run_settings(args, training_args, deepspeed)
        resume_from = resume_point(training_args.output_dir, training_args.resume_from_checkpoint,
                                   AutoConfig.from_pretrained(args.model_name_or_path), self.settings)
        check_free_space(args, training_args, deepspeed, self.settings)
        self.folder = OutputFolder(training_args, self.settings)
        self.folder.take()
        if resume_from:
            print(f"resuming from {resume_from} (step {checkpoint_step(resume_from)})")
        return resume_from

    def callbacks(self, tokenizer, data):
        """The Trainer's callbacks: the parts that watch the training. First, a run the memory
        plan says cannot fit is refused."""
        args, training_args = self.args, self.training_args
        check_memory(args, training_args, self.deepspeed, self.settings, data.longest)
        self.checkpoints = self.signals.checkpoints = Checkpoints(
            training_args.output_dir, args.save_minutes, self.clock.started)
        self.metrics = MetricsFile(args, training_args, self.deepspeed, self.settings, self.clock,
                                   self.checkpoints, data, validation_rows_in_train(data, training_args))
        callbacks = [self.clock, self.checkpoints, self.folder, TrainingLog(), self.metrics]
        if args.profile_steps and training_args.device.type == "cuda":
            callbacks.append(StepProfiler(training_args.output_dir, args.profile_steps))
        if args.answer_quality:
            callbacks.append(AnswerQualityBeforeTraining(tokenizer, data.questions, args.max_length, self.clock))
        return callbacks

    @contextlib.contextmanager
    def timing(self, part):
        """Time a part of the job (Clock); the final save writes the whole model or nothing."""
        with self.clock.timing(part), self.folder.saving_model() if part == "final_save" else contextlib.nullcontext():
            yield

    @property
    def stopped_to_resume(self):
        return self.checkpoints is not None and self.checkpoints.stopped_at is not None

    def record_answers(self, rows, answers, scores):
        """The answers after training: in run_metrics.json, and answers.jsonl (rank 0)."""
        from workshop.answers import write_answers
        self.metrics.answers_after = scores
        if self.training_args.process_index == 0:
            write_answers(self.training_args.output_dir, rows, answers)
