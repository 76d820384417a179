"""What the stages share and is not the lesson: the settings that are not the lesson and the
reading of a stage's (settings.py, arguments.py), the run's bookkeeping in its parts (run.py
composes them: compile_cache.py, exit_status.py, callbacks.py, output_folder.py,
metrics_file.py, preflight.py, resume.py, metrics.py), DeepSpeed's ops (build_ops.py), the
checks of every input (checks.py, squad.py, deepspeed_config.py), the fast path, answer quality, the memory plan
(models.py, memory_plan.py, plan_data.json) and the jobs' helpers (job.sh, job.py,
host_memory.py). Installed by the README's setup (`pip install -e .`); the stage folders, the
jobs and tools/ import it. Importing any of its modules changes nothing: no signal handler, no
environment variable, no process group."""
