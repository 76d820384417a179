"""What the stages share and is not the lesson: the workshop's settings, the run's bookkeeping
(time, checkpoints, resuming, run_metrics.json, exit statuses), the checks of every input, the
fast path, answer quality and the jobs' helpers. Installed by the README's setup
(`pip install -e .`); the stage folders, the jobs and tools/ import it. Importing any of its
modules changes nothing: no signal handler, no environment variable, no process group."""
