"""What the stages share and is not the lesson: the workshop's settings (settings.py), the run's
bookkeeping (run.py, callbacks.py, resume.py, metrics.py), the checks of every input
(checks.py, squad.py, deepspeed_config.py), the fast path, answer quality, the memory plan
(models.py, memory_plan.py, plan_data.json) and the jobs' helpers (job.sh, job.py,
host_memory.py). Installed by the README's setup (`pip install -e .`); the stage folders, the
jobs and tools/ import it. Importing any of its modules changes nothing: no signal handler, no
environment variable, no process group."""
