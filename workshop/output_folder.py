"""The run's output folder: one run at a time holds it (its lock), it keeps the settings a
resumed run must share (run_settings.json), and it is left whole: a run refused before it wrote
anything leaves no folder, a full disk no half-written checkpoint or model."""
import contextlib
import json
import shutil
from pathlib import Path

from transformers import TrainerCallback

from workshop.exit_status import causes
from workshop.metrics import SETTINGS_FILE, checkpoints, is_complete, mib, newest_checkpoint
from workshop.resume import take_lock


class OutputFolder(TrainerCallback):
    """--output_dir, held (take) and released by the run; the Trainer tells it when training
    starts (the checkpoints there before it, the settings to resume with)."""

    def __init__(self, training_args, settings):
        self.path, self.settings = Path(training_args.output_dir), settings
        self.writes = training_args.process_index == 0  # rank 0 writes and cleans up
        self.lock = self.checkpoints_before = None
        self.made = self.saving = False

    def take(self):
        """Hold the folder for this run (resume.take_lock refuses one that another run holds)."""
        if self.writes:
            self.made = not self.path.exists()
            self.lock = take_lock(self.path)

    def release(self):
        if self.lock:
            self.lock.unlink(missing_ok=True)
            self.lock = None
        if self.made:  # a run refused before it wrote anything leaves no folder
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def on_train_begin(self, args, state, control, **kwargs):
        self.checkpoints_before = set(checkpoints(self.path))  # a full disk cuts only later ones
        if self.writes:  # what a resumed run is checked against
            (self.path / SETTINGS_FILE).write_text(json.dumps(self.settings, indent=2) + "\n")

    @contextlib.contextmanager
    def saving_model(self):
        """The final save writes the whole model or nothing: what a failed one wrote (a full
        disk) is removed, the checkpoints stay."""
        before = set(self.path.iterdir()) if self.path.is_dir() else None
        self.saving = True
        try:
            yield
        except BaseException:
            if before is not None and self.writes:
                for path in set(self.path.iterdir()) - before:
                    if path.is_file():
                        path.unlink(missing_ok=True)
            raise
        self.saving = False

    def full_disk(self, error):
        """A full disk, said in one line with the folder, its space and what was kept; the
        half-written checkpoint this run was saving goes, the complete ones stay."""
        filename = next((e.filename for e in causes(error) if getattr(e, "filename", None)), None)
        folder = self.path if filename is None or self.path.resolve() in Path(filename).resolve().parents \
            else Path(filename).parent
        if self.writes and self.checkpoints_before is not None:
            for cut in set(checkpoints(self.path)) - self.checkpoints_before:
                if not is_complete(cut):
                    shutil.rmtree(cut, ignore_errors=True)
        place = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        said = (f"no space left on the disk of {folder}{' while saving the model' if self.saving else ''} "
                f"({mib(shutil.disk_usage(place).free)} free now)")
        if folder != self.path:
            return f"{said}: free space there, or point TMPDIR, COMPILE_CACHE or HF_HOME elsewhere"
        newest = newest_checkpoint(self.path)
        kept = (f"its newest complete checkpoint, {newest.name}, is kept: run again into it to "
                f"resume" if newest else "no checkpoint was saved: a run again into it starts afresh")
        return f"{said}; {kept}; free space there, or give an --output_dir on a disk with room"
