"""tools/tables.py on what real tiny runs leave behind: a baseline run (python train.py) and
a DeepSpeed ZeRO-2 run (the deepspeed launcher), on the CPU, laid out as the job scripts lay
them out, plus nvidia-smi CSVs and host memory logs (no GPU here), runs that failed, stopped
or were killed, and the published H100 runs (schema version 1). Every number the tool prints
is checked against one computed here from the raw files; the Trainer's printed dicts are
removed from the job logs first: the tool reads only what docs/metrics.md documents."""
import contextlib
import csv
import importlib
import io
import os
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEEPSPEED, ROOT, tiny_args

TOOL = ROOT / "tools" / "tables.py"
FIXTURES = Path(__file__).parent / "fixtures"
# HAND-WRITTEN in nvidia-smi's format (4 GPUs x 3 readings), to be replaced by a capture from
# a real H100 node: `nvidia-smi --query-gpu=timestamp,index,name,memory.used,memory.total,
# utilization.gpu --format=csv -l 1` (and --format=csv,nounits for the second file).
GPU_CSV = FIXTURES / "nvidia-smi-h100.csv"  # " 1234 MiB"
GPU_CSV_NOUNITS = FIXTURES / "nvidia-smi-h100-nounits.csv"  # " 1234"
HOST_RSS = [10, 219, 486, 512, 377]  # a host memory log as the job scripts write it, in MiB
BASELINE, ZERO2, MULTI = "baseline-101", "deepspeed-single-gpu-102", "deepspeed-multi-node-103"
# What the runs are; their model's type and size first because my-run's model is another.
LABELS = {BASELINE: "bloom 1.33e5 baseline fp32 1 CPU rank (job 101)",
          ZERO2: "bloom 1.33e5 ZeRO-2 fp32 1 CPU rank (job 102)"}
TIME_PARTS = ("startup", "compiling", "training_steps", "evaluation", "checkpoint_saving",
              "answer_generation", "final_save", "other")
LAUNCHER_END = (  # what DeepSpeed's launcher prints after a rank failed
    "[2026-11-24 10:47:06,664] [INFO] [launch.py:253:sigkill_handler] Killing subprocess 22279\n"
    "[2026-11-24 10:47:06,664] [ERROR] [launch.py:259:sigkill_handler] ['python', '-u', 'train.py', "
    "'--local_rank=0'] exits with return code = 1\n")


def tool(*args, cwd):
    """tools/tables.py run from `cwd` with these arguments, in this process (its main(), as its
    command line calls it): the exit status, stdout and stderr, as a subprocess would give them."""
    tables = tools_module("tables")
    out, err = io.StringIO(), io.StringIO()
    saved = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [str(TOOL), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                tables.main(sys.argv[1:])
                code = 0
            except SystemExit as e:  # sys.exit("message"): the message on stderr, status 1
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        os.chdir(saved[0])
        sys.argv = saved[1]
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def tools_module(name):
    """A module of tools/ (tables, run_files, table_plots) imported here, for the functions
    that need no files."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    return importlib.import_module(name)


def start_run(root, stage, name, tiny, deepspeed_config=None, **options):
    """train.py, its output in log/<name>.out after the job script's first line, as a job does."""
    (root / stage / "log").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train.py"]
    if deepspeed_config:
        cmd = [DEEPSPEED, "--num_gpus", "1", "--master_port", "0",
               "train.py", "--deepspeed", deepspeed_config]
    with (root / stage / "log" / f"{name}.out").open("w") as out:  # the child keeps its own handle
        out.write(f"run {name} on testhost, output in runs/{name}\n")
        out.flush()
        return subprocess.Popen(cmd + tiny_args(tiny, output_dir=root / stage / "runs" / name, use_cpu=True,
                                                **options),
                                cwd=ROOT / stage, stdout=out, stderr=subprocess.STDOUT)


def state_of(run_dir):
    """The run folder's trainer_state.json, read independently of the tool."""
    return json.loads((run_dir / "trainer_state.json").read_text())


def metrics_of(root, stage, name):
    return json.loads((root / stage / "runs" / name / "run_metrics.json").read_text())


def as_version_1(metrics):
    """A metrics file as train.py wrote it before schema version 2 (docs/metrics.md)."""
    v2_only = ("schema_version", "status", "error", "parameters", "architecture", "shortened_contexts",
               "max_steps", "gpu", "gpu_memory_mib", "host_memory_mib", "versions", "job_started_at",
               "time_seconds", "compile_blocks", "gradient_checkpointing", "compiling_steps")
    return {"complete": metrics["status"] == "complete",
            **{k: v for k, v in metrics.items() if k not in v2_only}}


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """Two real runs and the logs around them, then the tool once over all of it."""
    root = tmp_path_factory.mktemp("workshop")
    procs = [start_run(root, "baseline", BASELINE, tiny, save_strategy="epoch"),  # both at once
             start_run(root, "deepspeed-single-gpu", ZERO2, tiny, "ds_zero2.json")]
    for proc, stage, name in zip(procs, ["baseline", "deepspeed-single-gpu"], [BASELINE, ZERO2]):
        assert proc.wait(timeout=300) == 0, (root / stage / "log" / f"{name}.out").read_text()[-3000:]
    for stage, name in (("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)):  # no printed dicts
        out = root / stage / "log" / f"{name}.out"
        out.write_text(re.sub(r"\{'[^{}]*\}", "", out.read_text()))
        assert "train_samples_per_second" not in out.read_text()
    log = root / "baseline" / "log"
    shutil.copy(GPU_CSV, log / f"{BASELINE}-gpu-memory-gpu01.csv")
    (log / f"{BASELINE}-host-memory-gpu01.csv").write_text(
        "timestamp,rss_mib\n" + "".join(f"2026/11/24 09:14:0{i},{v}\n" for i, v in enumerate(HOST_RSS)))
    log = root / "deepspeed-single-gpu" / "log"
    shutil.copy(GPU_CSV_NOUNITS, log / f"{ZERO2}-gpu-memory-gpu01.csv")
    (log / f"{ZERO2}-gpu-memory-gpu02.csv").write_text("")  # a logger that never wrote
    log = root / "deepspeed-multi-node" / "log"  # a multi-node job whose run folder is elsewhere
    log.mkdir(parents=True)
    shutil.copy(GPU_CSV, log / f"{MULTI}-gpu-memory-gpu01.csv")
    shutil.copy(GPU_CSV_NOUNITS, log / f"{MULTI}-gpu-memory-gpu02.csv")

    # Failed after epoch 1's checkpoint (out of GPU memory), with the metrics train.py writes
    # then; its log ends with train.py's error line, then DeepSpeed's launcher's.
    runs, metrics = root / "baseline" / "runs", metrics_of(root, "baseline", BASELINE)
    died = runs / "baseline-died"
    shutil.copytree(runs / BASELINE / "checkpoint-2", died / "checkpoint-2")
    error = "out of GPU memory (CUDA out of memory. Tried to allocate 1.91 GiB.): try ZeRO with offload"
    metrics.update(status="failed", error=error, epochs=metrics["epochs"][:1], global_step=2, train_loss=None,
                   train_runtime=None, train_samples_per_second=None)
    (died / "run_metrics.json").write_text(json.dumps(metrics))
    (root / "baseline" / "log" / "baseline-died.out").write_text(
        "run baseline-died on gpu01, output in runs/baseline-died\nTraceback (most recent call last):\n"
        '  File "train.py", line 230, in <module>\ntorch.OutOfMemoryError: CUDA out of memory. '
        f"Tried to allocate 1.91 GiB.\nerror: {error}\n" + LAUNCHER_END)
    # Stopped on the time limit's warning after step 2 (checkpointed), waiting for its requeue.
    stopped = runs / "baseline-stopped"
    shutil.copytree(runs / BASELINE / "checkpoint-2", stopped / "checkpoint-2")
    metrics.update(status="stopped_on_request", error=None, stopped_on_request_at_step=2)
    (stopped / "run_metrics.json").write_text(json.dumps(metrics))
    # Killed before it could write its metrics (SIGKILL): a checkpoint and the launcher's last word.
    killed = runs / "baseline-killed"
    shutil.copytree(runs / BASELINE / "checkpoint-2", killed / "checkpoint-2")
    (root / "baseline" / "log" / "baseline-killed.out").write_text(
        "run baseline-killed on gpu01, output in runs/baseline-killed\n" + LAUNCHER_END)
    # A metrics file of a schema this tool does not know: refused, in one line.
    future = runs / "baseline-future"
    future.mkdir()
    (future / "run_metrics.json").write_text(json.dumps({**metrics, "schema_version": 3}))
    # Started by hand with another --output_dir, a version 1 file whose model is a hub id that
    # is not here (offline).
    by_hand = root / "elsewhere" / "my-run"
    by_hand.mkdir(parents=True)
    metrics = as_version_1(metrics_of(root, "deepspeed-single-gpu", ZERO2))
    (by_hand / "run_metrics.json").write_text(json.dumps({**metrics, "model": "no-such-org/no-such-model"}))

    paths = [root / "baseline", root / "baseline" / "runs" / BASELINE,  # the same run twice
             root / "deepspeed-single-gpu", root / "deepspeed-multi-node" / "log", by_hand]
    proc = tool(*paths, "--csv", root / "csv", "--plots", root / "plots", cwd=root)
    assert proc.returncode == 0, proc.stderr
    tables = {name: list(csv.DictReader((root / "csv" / f"{name}.csv").read_text().splitlines()))
              for name in ("objective1", "objective2", "time", "comparison")}
    return root, proc, tables


def row(table, run):
    rows = [r for r in table if r["run"] == run]
    assert len(rows) == 1, (run, table)
    return rows[0]


def number(value):
    return float(value) if value != "" else None


def note(proc, label):
    """The Notes' line about one run."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith(f"- {label}: ")]
    assert len(lines) == 1, (label, proc.stdout)
    return lines[0]


@pytest.mark.parametrize("stage, name", [("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)])
def test_objective1_matches_the_trainers_own_records(made, stage, name):
    root, _, tables = made
    state = state_of(root / stage / "runs" / name)
    ours = row(tables["objective1"], name)
    assert ours["status"] == "complete" and ours["epochs"] == "2/2" and ours["label"] == LABELS[name]
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert [number(ours[f"eval loss ep{i + 1}"]) for i in range(2)] == [e["eval_loss"] for e in evals]
    assert int(ours["steps/epoch"]) == state["max_steps"] // state["num_train_epochs"]
    step_losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert number(ours["train loss"]) == pytest.approx(sum(step_losses) / len(step_losses), rel=1e-4)
    mean_eval_speed = sum(e["eval_samples_per_second"] for e in evals) / len(evals)
    assert number(ours["eval samples/s"]) == pytest.approx(mean_eval_speed)
    final = next(e for e in state["log_history"] if "train_samples_per_second" in e)  # the Trainer's own
    assert number(ours["train samples/s"]) == pytest.approx(final["train_samples_per_second"])
    metrics = metrics_of(root, stage, name)
    assert number(ours["steady samples/s"]) == pytest.approx(metrics["steady_train_samples_per_second"])
    assert metrics["steady_train_samples_per_second"] > 0


def raw_gpu_stats(path):
    """(gpu index -> (peak, mean, min, samples)) from the CSV, by plain string handling; mean
    and min while the run held the GPU: from its first reading at half the peak to its last."""
    readings = {}
    for line in path.read_text().splitlines()[1:]:
        fields = line.split(", ")
        readings.setdefault(int(fields[1]), []).append(int(fields[3].split()[0]))
    stats = {}
    for gpu, values in readings.items():
        held = [i for i, v in enumerate(values) if v >= max(values) / 2]
        during = values[held[0]:held[-1] + 1]
        stats[gpu] = (max(values), sum(during) / len(during), min(during), len(values))
    return stats


def test_objective2_only_the_gpus_each_run_used_with_and_without_units(made):
    """A one-rank run on a node of four GPUs lists the one it used (the highest); a run that
    left only its logs (no metrics: how many it used is unknown) lists all of them."""
    _, proc, tables = made
    expected = raw_gpu_stats(GPU_CSV)
    assert expected == raw_gpu_stats(GPU_CSV_NOUNITS) and len(expected) == 4
    used = max(expected, key=lambda gpu: expected[gpu][0])
    for run, nodes, gpus in [(BASELINE, ["gpu01"], [used]), (ZERO2, ["gpu01"], [used]),
                             (MULTI, ["gpu01", "gpu02"], range(4))]:
        rows = [r for r in tables["objective2"] if r["run"] == run]
        assert sorted((r["node"], int(r["gpu"])) for r in rows) == [(n, g) for n in nodes for g in gpus]
        for r in rows:
            peak, mean, low, samples = expected[int(r["gpu"])]
            assert (number(r["peak MiB"]), number(r["min MiB"]), int(r["samples"])) == (peak, low, samples)
            assert number(r["mean MiB"]) == pytest.approx(mean)
            assert number(r["total MiB"]) == 81559 and r["name"] == "NVIDIA H100 80GB HBM3"
            assert number(r["min MiB"]) > 1  # not the idle GPU before the job
    # The empty CSV: one line on stderr; the run is still reported.
    assert f"{ZERO2}-gpu-memory-gpu02.csv is empty\n" in proc.stderr and "is empty" not in proc.stdout
    assert row(tables["objective1"], MULTI)["status"] == "logs only"


def test_comparison_measured_memory_and_deepspeeds_estimate(made, tiny):
    root, proc, tables = made
    from transformers import AutoModelForCausalLM
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny / "model").parameters())
    base, zero2 = row(tables["comparison"], BASELINE), row(tables["comparison"], ZERO2)
    assert (base["ZeRO"], base["offload"], base["GPUs"], base["nodes"]) == ("-", "none", "1", "1")
    assert number(base["est. GPU MiB"]) == pytest.approx(16 * params / 2**20, abs=1e-6)
    assert base["estimate from"] == "16 B/param, AdamW without DeepSpeed" and base["est. host MiB/node"] == ""
    assert number(base["peak host MiB/node"]) == max(HOST_RSS)
    assert number(base["peak GPU MiB"]) == max(p for p, *_ in raw_gpu_stats(GPU_CSV).values())
    assert (zero2["ZeRO"], zero2["GPUs"], zero2["nodes"], zero2["precision"]) == ("2", "1", "1", "fp32")
    # DeepSpeed's ZeRO-2 formula for 1 GPU, no offload (stage_1_and_2.py): 2P + 18P/GPUs on
    # the GPU, 4P x GPUs per node x 1.5 on the host.
    assert number(zero2["est. GPU MiB"]) == pytest.approx((2 * params + 18 * params) / 2**20, abs=1e-5)
    assert number(zero2["est. host MiB/node"]) == pytest.approx(4 * params * 1.5 / 2**20, abs=1e-5)
    metrics = metrics_of(root, "deepspeed-single-gpu", ZERO2)
    assert metrics["parameters"] == params  # what the estimate is built from: the metrics' architecture
    assert number(zero2["samples/s"]) == pytest.approx(metrics["steady_train_samples_per_second"])
    assert number(zero2["samples/s/GPU"]) == pytest.approx(metrics["steady_train_samples_per_second"])
    assert number(zero2["host MiB/rank"]) == pytest.approx(max(metrics["peak_host_rss_mib"]))
    # A caveat once, for the runs it concerns (the fp32 DeepSpeed runs whose estimate is shown).
    said = [line for line in proc.stdout.splitlines() if "DeepSpeed's estimate assumes fp16/bf16" in line]
    assert len(said) == 1 and said[0].endswith(f" — {LABELS[ZERO2]}"), said


@pytest.mark.parametrize("stage, name", [("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)])
def test_where_the_time_went_adds_up_to_the_wall_time(made, stage, name):
    root, _, tables = made
    ours, metrics = row(tables["time"], name), metrics_of(root, stage, name)
    parts = {part: number(ours[f"{part.replace('_', ' ')} s"]) for part in TIME_PARTS}
    assert parts == pytest.approx(metrics["time_seconds"]) and ours["label"] == LABELS[name]
    wall = number(ours["wall s"])
    assert wall == pytest.approx(metrics["wall_seconds"]) and sum(parts.values()) == pytest.approx(wall, rel=0.05)
    work = parts["training_steps"] + parts["evaluation"] + parts["answer_generation"]
    assert number(ours["fixed cost s"]) == pytest.approx(wall - work) and work > 0
    mine = row(tables["time"], "my-run")  # schema version 1: no parts, and its wall is not the job's
    assert all(mine[c] == "" for c in mine if c.endswith(" s"))


def test_markdown_labels_and_plots(made):
    root, proc, tables = made
    out = proc.stdout
    for heading in ("## Objective 1", "## Objective 2", "## Where the time went", "## Comparison across runs",
                    "## Notes"):
        assert out.count(heading) == 1
    assert "[WARNING]" not in out and "| run " in out  # stdout is Markdown only
    assert sum(r["run"] == BASELINE for r in tables["objective1"]) == 1  # given twice, listed once
    for name, label in LABELS.items():  # the Markdown shows what a run is; the CSV files both
        assert f"| {label} " in out and f"| {name} " not in out
    labels = [r["label"] for r in tables["objective1"]]
    assert len(set(labels)) == len(labels) and "bloom 1.33e5 baseline fp32 1 CPU rank (baseline-died)" in labels
    for name in ("loss.png", "gpu-memory.png", "time.png"):
        assert (root / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speeds_from_the_cpu_are_flagged_once(made):
    _, proc, tables = made
    warnings = [line for line in proc.stdout.splitlines() if "say nothing about GPU speed" in line]
    assert len(warnings) == 1
    with_metrics = [r["label"] for r in tables["objective1"] if r["status"] not in ("logs only", "killed or running")]
    assert all(label in warnings[0] for label in with_metrics) and "baseline-killed" not in warnings[0]
    # the Markdown says CPU where a speed would be; the CSV files keep the numbers
    baseline = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {LABELS[BASELINE]} "))
    assert baseline.count("| CPU ") == 3 and number(row(tables["objective1"], BASELINE)["steady samples/s"]) > 0


def test_each_run_has_its_own_colour_in_the_plots():
    Run, plots = tools_module("run_files").Run, tools_module("table_plots")
    for n in (2, 5, 10, 14, 20, 31):
        runs = [Run(f"run-{i}", label=f"label {i}") for i in range(n)]
        colours = plots.colours(runs)
        assert len({tuple(round(c, 3) for c in tables_colour(c)) for c in colours.values()}) == n


def tables_colour(colour):
    import matplotlib.colors
    return matplotlib.colors.to_rgb(colour)


@pytest.mark.parametrize("stage, name", [("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)])
def test_answer_quality_before_and_after(made, stage, name):
    root, _, tables = made
    ours = row(tables["objective1"], name)
    quality = metrics_of(root, stage, name)["answer_quality"]
    for when in ("before", "after"):
        assert number(ours[f"EM {when}"]) == pytest.approx(quality[when]["exact_match"])
        assert number(ours[f"F1 {when}"]) == pytest.approx(quality[when]["f1"])


def test_a_failed_run_says_why_in_train_pys_words_not_the_launchers(made):
    root, proc, tables = made
    died = row(tables["objective1"], "baseline-died")
    assert died["status"] == "failed" and died["epochs"] == "1/2"
    assert died["train loss"] == died["train samples/s"] == "" and number(died["steady samples/s"]) > 0
    first_eval = next(e for e in state_of(root / "baseline" / "runs" / BASELINE)["log_history"] if "eval_loss" in e)
    assert number(died["eval loss ep1"]) == first_eval["eval_loss"]
    assert died["eval loss ep2"] == ""
    said = note(proc, died["label"])
    assert said.startswith(f"- {died['label']}: failed: out of GPU memory (CUDA out of memory. Tried to "
                           "allocate 1.91 GiB.): try ZeRO with offload; ")
    assert said.endswith("1 of 2 epochs evaluated, step 2 of 4, newest checkpoint-2") and "return code" not in said


def test_a_run_killed_before_its_metrics_reports_its_checkpoint(made):
    root, proc, tables = made
    killed = row(tables["objective1"], "baseline-killed")
    assert (killed["status"], killed["epochs"], killed["label"]) == ("killed or running", "1/2", "baseline-killed")
    first_eval = next(e for e in state_of(root / "baseline" / "runs" / BASELINE)["log_history"] if "eval_loss" in e)
    assert number(killed["eval loss ep1"]) == first_eval["eval_loss"]
    said = note(proc, "baseline-killed")
    assert "1 of 2 epochs evaluated, step 2 of 4, newest checkpoint-2" in said
    assert said.endswith("the launcher: a rank exited with return code 1")  # all its log says


def test_a_run_stopped_on_the_time_limits_warning_says_it_will_resume(made):
    root, proc, tables = made
    stopped = row(tables["objective1"], "baseline-stopped")
    assert stopped["status"] == "stopped to resume" and stopped["epochs"] == "1/2"
    assert note(proc, stopped["label"]).endswith(
        ": stopped on request (the time limit's warning) after step 2, checkpointed, to be resumed; "
        "1 of 2 epochs evaluated, step 2 of 4, newest checkpoint-2")


def test_an_unknown_schema_version_is_refused_in_one_line(made):
    root, proc, tables = made
    refused = [line for line in proc.stderr.splitlines() if "baseline-future" in line]
    assert refused == [f"tables: refused {root / 'baseline' / 'runs' / 'baseline-future' / 'run_metrics.json'}: "
                       "schema_version 3 is unknown to this tool, which reads versions 1 and 2 (docs/metrics.md)"]
    assert "Traceback" not in proc.stderr and all(r["run"] != "baseline-future" for r in tables["objective1"])


def test_a_version_1_file_whose_model_cannot_be_found(made):
    _, proc, tables = made
    mine, theirs = row(tables["comparison"], "my-run"), row(tables["comparison"], ZERO2)
    assert row(tables["objective1"], "my-run")["status"] == "complete"  # `complete: true`
    assert mine["est. GPU MiB"] == "" and (mine["ZeRO"], mine["samples/s"]) == ("2", theirs["samples/s"])
    assert mine["label"] == "no-such-model ZeRO-2 fp32 1 CPU rank (my-run)"
    said = [line for line in proc.stdout.splitlines() if line.startswith("- No memory estimate")]
    assert len(said) == 1 and "no-such-org/no-such-model" in said[0] and said[0].endswith(f" — {mine['label']}")


def test_the_plan_beside_the_measurement(made):
    """The plan's columns are workshop.memory_plan's predict_run, as tests/test_plan.py calls it."""
    from workshop.memory_plan import predict_run, unrecorded
    root, proc, tables = made
    for stage, name in (("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)):
        m, ours = metrics_of(root, stage, name), row(tables["comparison"], name)
        expected = predict_run(m, **unrecorded(root / stage / "runs" / name, m))  # v2: its architecture
        assert (number(ours["plan GPU MiB"]), number(ours["plan host MiB/rank"]),
                number(ours["plan host MiB/node"])) == pytest.approx(
            (expected["gpu_mib"], expected["host_mib"], expected["host_node_mib"]))


def test_the_plan_is_called_with_the_runs_metrics(made):
    """The call the comparison makes, with a stand-in for predict_run."""
    root = made[0]
    tables, run_files = tools_module("tables"), tools_module("run_files")
    calls = []

    def predict_run(metrics, model=None, **settings):
        calls.append((metrics, model))
        return dict(gpu_mib=1000.0 + metrics["max_length"], host_mib=2000.0 + metrics["world_size"],
                    host_node_mib=3000.0)

    run = run_files.load(run_files.runs_in([root / "deepspeed-single-gpu" / "runs" / ZERO2])[0])
    columns = tables.estimate(run, predict_run).estimate
    m = metrics_of(root, "deepspeed-single-gpu", ZERO2)
    assert (columns["plan GPU MiB"], columns["plan host MiB/rank"]) == (1000.0 + m["max_length"], 2000.0 + 1)
    (metrics, model), = calls
    assert metrics == m and model == m["architecture"]

    def broken(*args, **kwargs):
        raise RuntimeError("no such GPU")
    assert ("no plan: workshop.memory_plan's predict_run failed (RuntimeError: no such GPU)"
            in tables.estimate(run, broken).caveats)


def test_why_a_run_failed_prefers_the_projects_own_words(tmp_path):
    """train.py's `error:` line, then SLURM's, then the metrics' error, then an exception's,
    then the launcher's; the last of the best kind found."""
    failure, out = tools_module("run_files").failure, tmp_path / "job.out"
    cancelled = "slurmstepd: error: *** JOB 7 ON gpu01 CANCELLED AT 2026-11-24T10:47:06 DUE TO TIME LIMIT ***"
    for log, recorded, says in [
            ("error: first\nValueError: x\nerror: out of GPU memory\n" + LAUNCHER_END, "recorded",
             "out of GPU memory"),
            ("Traceback\nRuntimeError: boom\n" + LAUNCHER_END, "stopped by signal 15", "stopped by signal 15"),
            ("Traceback\nRuntimeError: boom\n" + LAUNCHER_END, None, "RuntimeError: boom"),
            (LAUNCHER_END + cancelled + "\n", "stopped by signal 15",
             "SLURM: CANCELLED AT 2026-11-24T10:47:06 DUE TO TIME LIMIT"),
            (LAUNCHER_END, None, "the launcher: a rank exited with return code 1"),
            ("all went well\n", None, None)]:
        out.write_text(log)
        assert failure(out, recorded) == says, log


def test_nothing_to_report_exits_non_zero_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("hello\n")
    for stage, name, text in [("a", "log/job-7-gpu-memory-gpu01.csv", ""),  # a logger that never wrote
                              ("b", "log/job-8-host-memory-gpu01.csv", "timestamp,rss_mib\n"),
                              ("c", "runs/job-9/run_metrics.json", '{"status": "comp'),  # cut off
                              ("d", "runs/job-10/run_metrics.json", '{"schema_version": 99}')]:
        (tmp_path / stage / name).parent.mkdir(parents=True)
        (tmp_path / stage / name).write_text(text)
    for path, says in [("missing", "missing does not exist"), ("empty", "no run in empty"),
                       ("unrelated", "no run in unrelated"),
                       ("a/log/job-7-gpu-memory-gpu01.csv", "job-7-gpu-memory-gpu01.csv is empty"),
                       ("b", "job-8-host-memory-gpu01.csv has a header but no readings"),
                       ("c", "job-9/run_metrics.json cannot be read (JSONDecodeError"),
                       ("d", "job-10/run_metrics.json: schema_version 99 is unknown to this tool")]:
        proc = tool(path, "--no-plots", cwd=tmp_path)
        assert proc.returncode == 1 and proc.stdout == "", path
        assert proc.stderr.startswith("tables: nothing to report") and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr, proc.stderr


def test_a_missing_path_beside_a_good_one_is_reported_but_not_fatal(made):
    root = made[0]
    proc = tool("missing", root / "baseline" / "runs" / BASELINE, "--no-plots", "--no-estimate", cwd=root)
    assert proc.returncode == 0 and "tables: missing does not exist" in proc.stderr
    assert "| baseline fp32 1 CPU rank (job 101) |" in proc.stdout  # one model: not named


def test_a_log_folder_finds_a_run_folder_named_by_an_absolute_path(made, tmp_path):
    """OUTPUT_DIR=/scratch/... : the job's first line names the run folder absolutely."""
    run_dir = tmp_path / "scratch" / "mine"
    shutil.copytree(made[0] / "baseline" / "runs" / BASELINE, run_dir)
    (tmp_path / "stage" / "log").mkdir(parents=True)
    (tmp_path / "stage" / "log" / "baseline-7.out").write_text(f"run baseline-7 on gpu01, output in {run_dir}\n")
    proc = tool(tmp_path / "stage" / "log", "--no-plots", "--no-estimate", "--csv", tmp_path / "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = row(list(csv.DictReader((tmp_path / "csv" / "objective1.csv").read_text().splitlines())), "baseline-7")
    assert (ours["status"], ours["label"]) == ("complete", "baseline fp32 1 CPU rank (job 7)")


def test_help_explains_every_column(made):
    proc = tool("--help", cwd=ROOT)
    tables = made[2]
    columns = {c for t in tables.values() for c in t[0]} - {"run", "stage"}
    assert proc.returncode == 0
    for column in columns:
        assert column.replace("eval loss ep1", "eval loss epN").replace("ep2", "epN") in proc.stdout, column


# Captured for real on an NVIDIA H100 80GB HBM3 (device tool, 2026-11-24) while the single-GPU
# matrix ran, `--format=csv` (with units), one reading in six; and the published results, whose
# GPU logs are the jobs' own `--format=csv,nounits` captures on that GPU, and whose metrics are
# schema version 1 (no schema_version, `complete` instead of `status`).
REAL_GPU_CSV = FIXTURES / "nvidia-smi-h100-real.csv"
RESULTS = ROOT / "docs" / "results" / "h100-2026-11-24"


def test_real_h100_runs_of_schema_version_1(tmp_path):
    """The published runs, one of them with the with-units capture as its GPU log, and the
    architectures.json that says which BLOOM their model folders held."""
    for stage in ("baseline", "deepspeed-single-gpu"):
        shutil.copytree(RESULTS / stage, tmp_path / stage)
    shutil.copy(RESULTS / "architectures.json", tmp_path)  # the committed one
    run = sorted(p.name for p in (tmp_path / "baseline" / "runs").iterdir())[0]
    for log in (tmp_path / "baseline" / "log").glob(f"{run}-gpu-memory-*.csv"):
        shutil.copy(REAL_GPU_CSV, log)
    proc = tool("baseline", "deepspeed-single-gpu", "--csv", "csv", "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tables = {name: list(csv.DictReader((tmp_path / "csv" / f"{name}.csv").read_text().splitlines()))
              for name in ("objective1", "objective2", "time", "comparison")}
    checked = 0
    for r in tables["objective2"]:
        source = REAL_GPU_CSV if r["run"] == run else next(RESULTS.glob(f"*/log/{r['run']}-gpu-memory-*.csv"))
        peak, mean, low, samples = raw_gpu_stats(source)[int(r["gpu"])]
        assert (number(r["peak MiB"]), number(r["min MiB"]), int(r["samples"])) == (peak, low, samples)
        assert number(r["mean MiB"]) == pytest.approx(mean)
        checked += 1
    assert checked == len(list(RESULTS.glob("*/runs/*"))) >= 8
    # Version 1 read right: status from `complete`, labels from the settings, no time parts,
    # DeepSpeed's estimate from the architecture as published (computed when /tmp/arch560 existed).
    published = {r["run"]: r for r in csv.DictReader((RESULTS / "comparison.csv").read_text().splitlines())}
    for ours, comparison in zip(tables["objective1"], tables["comparison"]):
        m = json.loads(next(RESULTS.glob(f"*/runs/{ours['run']}/run_metrics.json")).read_text())
        assert "schema_version" not in m and m["complete"] and ours["status"] == "complete"
        what = f"ZeRO-{m['zero_stage']}" if m["deepspeed_config"] else "baseline"
        assert ours["label"].startswith(f"{what} ") and f" {m['precision']} 1 GPU (job " in ours["label"]
        for column, then in (("est. GPU MiB",) * 2, ("est. host MiB/node", "est. host MiB"),
                             ("estimate from",) * 2):  # the published file's names of the time
            assert comparison[column] == pytest.approx(published[ours["run"]][then])
    assert {r["label"] for r in tables["objective1"]} >= {"baseline fp16 1 GPU (job 888)",
                                                          "ZeRO-3 offload opt+param bf16 1 GPU (job 7015)"}
    assert all(r["wall s"] == "" for r in tables["time"]) and "version 1 has no time parts" in proc.stdout
    assert "say nothing about GPU speed" not in proc.stdout
    assert "- Random weights: speed and memory are real, losses are not — all runs" in proc.stdout


TWO_GPUS = ROOT / "docs" / "results" / "h200x2-2026-12-01"


def test_several_gpus_against_one_on_the_committed_two_gpu_runs(tmp_path):
    """The two-H200 runs (one GPU against two, 500 rows per GPU): every two-GPU run that has a
    one-GPU run of its configuration is beside it, as weak scaling, with the efficiencies its
    metrics give; a run without one (ZeRO-3 at one GPU only) is not in the table."""
    proc = tool(TWO_GPUS / "deepspeed-multi-gpu", "--csv", tmp_path, "--no-plots", "--no-estimate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "scaling.csv").read_text().splitlines()))
    metrics = {p.parent.name: json.loads(p.read_text()) for p in TWO_GPUS.glob("*/runs/*/run_metrics.json")}
    pairs = {r["run"].split("-local")[0]: r for r in rows}
    assert set(pairs) == {"zero1-2gpu-weak", "zero2-2gpu-weak", "fast-2gpu-weak", "fast-zero1-2gpu-weak"}
    for r in rows:
        two = metrics[r["run"]]
        one = metrics[next(name for name in metrics if name.startswith(r["run"].split("-2gpu")[0] + "-1gpu"))]
        assert (r["GPUs"], r["scaling"]) == ("2", "weak")
        assert number(r["steady efficiency"]) == pytest.approx(
            two["steady_train_samples_per_second"] / (2 * one["steady_train_samples_per_second"]))
        assert number(r["job efficiency"]) == pytest.approx(one["wall_seconds"] / two["wall_seconds"])
        assert number(r["saved MiB/GPU"]) == pytest.approx(
            max(one["peak_gpu_memory_allocated_mib"]) - max(two["peak_gpu_memory_allocated_mib"]))
    assert number(pairs["zero1-2gpu-weak"]["steady efficiency"]) == pytest.approx(1.02, abs=0.01)
    assert "## Several GPUs against one" in proc.stdout
    help_text = tool("--help", cwd=ROOT).stdout
    assert all(column in help_text for column in rows[0] if column != "run")


def test_against_the_reference_runs_flags_what_falls_outside_with_its_cause(tmp_path):
    """Copies of a committed two-H200 run as a participant's runs: one as it was (nothing
    flagged), one with a slow start, a slow GPU and another process's memory on its GPU."""
    reference = TWO_GPUS / "deepspeed-multi-gpu"
    name = "zero1-1gpu-local-20261201-091311-842"
    mine = tmp_path / "deepspeed-multi-gpu"
    for copy in ("same-1", "slow-2"):
        shutil.copytree(reference / "runs" / name, mine / "runs" / copy)
        (mine / "log").mkdir(parents=True, exist_ok=True)
        shutil.copy(reference / "log" / f"{name}-gpu-memory-vm.csv", mine / "log" / f"{copy}-gpu-memory-vm.csv")
    slow = mine / "runs" / "slow-2" / "run_metrics.json"
    m = json.loads(slow.read_text())
    m["time_seconds"]["startup"] += 30
    m["steady_train_samples_per_second"] *= 0.7
    slow.write_text(json.dumps(m))
    gpu_log = mine / "log" / "slow-2-gpu-memory-vm.csv"
    fields = gpu_log.read_text().splitlines()[-1].split(", ")  # a last reading: 140,000 MiB used
    fields[3] = "140000"
    gpu_log.write_text(gpu_log.read_text() + ", ".join(fields) + "\n")
    proc = tool(tmp_path, "--against", TWO_GPUS, "--no-plots", "--no-estimate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("## Against the reference runs of")[1].split("\n## ")[0]
    flagged = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert flagged and all("(job 2)" in line for line in flagged), section  # the copy as it was: none
    said = {line.split("|")[2].strip(): line for line in flagged}
    assert set(said) == {"steady samples/s", "startup s", "peak GPU MiB"}, section
    assert "below" in said["steady samples/s"] and "another job on the GPU" in said["steady samples/s"]
    assert "above" in said["startup s"] and "file system" in said["startup s"]
    assert "another process on the GPU" in said["peak GPU MiB"]
    assert all("ZeRO-1 fp16 1 H200 (job 842)" in line for line in flagged)  # its reference


def test_a_stage_submitted_from_the_repository_root_finds_its_logs_in_the_roots_log(made, tmp_path):
    """sbatch baseline/baseline.slurm from the root: SLURM writes log/baseline-55.out (and the
    memory logs) in the root's log/, the run goes to baseline/runs/; the log's first line names
    the run folder as it was on the machine that ran it."""
    shutil.copytree(made[0] / "baseline" / "runs" / BASELINE, tmp_path / "baseline" / "runs" / "baseline-55")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "baseline-55.out").write_text(
        "run baseline-55 on gpu01, output in /home/someone/workshop/baseline/runs/baseline-55\n")
    shutil.copy(GPU_CSV, tmp_path / "log" / "baseline-55-gpu-memory-gpu01.csv")
    (tmp_path / "log" / "deepspeed-single-gpu-56.out").write_text(  # another stage's job
        "run deepspeed-single-gpu-56 on gpu01, output in /home/someone/workshop/deepspeed-single-gpu/runs/x\n")
    proc = tool("baseline", "--no-plots", "--no-estimate", "--csv", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tables = {name: list(csv.DictReader((tmp_path / "csv" / f"{name}.csv").read_text().splitlines()))
              for name in ("objective1", "objective2")}
    assert [(r["run"], r["status"]) for r in tables["objective1"]] == [("baseline-55", "complete")]
    assert {r["run"] for r in tables["objective2"]} == {"baseline-55"}


H200 = ROOT / "docs" / "results" / "h200-2026-12-01"


def test_a_results_tree_copied_anywhere_ties_each_log_to_its_run(tmp_path):
    """The H200 results as committed, copied elsewhere: the logs' first lines name folders of
    the machine that ran them (/root/out/bench/workshop); every run is found at any depth with
    its GPU log, and only a log without any run stays "logs only"."""
    shutil.copytree(H200, tmp_path / "h200")
    proc = tool(tmp_path / "h200", "--no-plots", "--no-estimate", "--csv", tmp_path / "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "csv" / "objective1.csv").read_text().splitlines()))
    with_gpu_logs = {r["run"] for r in csv.DictReader((tmp_path / "csv" / "objective2.csv").read_text().splitlines())}
    assert [r["run"] for r in rows if r["status"] == "logs only"] == ["two-nodes-on-one-gpu"]
    metrics = {p.parent for p in H200.rglob("run_metrics.json")}
    assert len([r for r in rows if r["status"] == "complete"]) >= len(metrics) - 1  # the 7b1 OOM failed
    for name in ("workshop", "fast-path", "fast-path-compiled-cold", "ds_zero1-fast-path-compiled-warm"):
        assert name in with_gpu_logs, name
    # --max_steps runs (3 steps of bloom-7b1) have no epoch column; their eval loss is the last
    short = next(r for r in rows if r["status"] == "complete" and r["last eval step"] == "3")
    assert "eval loss ep0" not in rows[0] and short["eval loss ep1"] == "" and short["last eval loss"]


def test_plan_columns_say_per_rank_and_per_node_on_two_gpu_runs(tmp_path):
    from workshop.memory_plan import predict_run, unrecorded
    proc = tool(TWO_GPUS / "deepspeed-multi-gpu", "--csv", tmp_path, "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for r in csv.DictReader((tmp_path / "comparison.csv").read_text().splitlines()):
        run_dir = next(TWO_GPUS.glob(f"*/runs/{r['run']}"))
        m = json.loads((run_dir / "run_metrics.json").read_text())
        p = predict_run(m, **unrecorded(run_dir, m))
        assert (number(r["plan host MiB/rank"]), number(r["plan host MiB/node"])) == pytest.approx(
            (p["host_mib"], p["host_node_mib"]))
        if m["world_size"] == 2:
            assert number(r["plan host MiB/node"]) > 1.5 * number(r["plan host MiB/rank"])


def test_plots_stay_a_page_at_thirty_runs(tmp_path):
    """The H100 results (30 runs): panels by stage, a page high at most; identical curves said."""
    import matplotlib.image
    proc = tool(RESULTS, "--plots", tmp_path, "--no-estimate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("loss.png", "gpu-memory.png"):
        height, width = matplotlib.image.imread(tmp_path / name).shape[:2]
        assert height <= 2400 and width <= 1400, (name, width, height)
    Run, plots = tools_module("run_files").Run, tools_module("table_plots")
    runs = [Run(f"r{i}", label=f"same {i}", losses=[(1, 2.0), (2, 1.5)]) for i in range(2)]
    assert len(plots.same_curves(runs, lambda r: r.losses)) == 1



def test_the_roots_log_folder_alone_finds_runs_named_from_another_machine(made, tmp_path):
    """`tools/tables.py log` in a repository whose jobs ran elsewhere (copied back): the first
    line's path ends in baseline/runs/<run>, which is found below the folder above log/."""
    shutil.copytree(made[0] / "baseline" / "runs" / BASELINE, tmp_path / "baseline" / "runs" / "baseline-57")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "baseline-57.out").write_text(
        "run baseline-57 on gpu01, output in /scratch/someone/baseline/runs/baseline-57\n")
    proc = tool("log", "--no-plots", "--no-estimate", "--csv", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "csv" / "objective1.csv").read_text().splitlines()))
    assert [(r["run"], r["status"]) for r in rows] == [("baseline-57", "complete")]


def test_against_a_tree_without_their_configuration_says_nothing_was_compared(tmp_path):
    """The two-H200 runs against the H100 tree: no run has a reference of its GPU and count
    there, so nothing is compared, and the section says so rather than "within its spread"."""
    proc = tool(TWO_GPUS / "deepspeed-multi-gpu", "--against", RESULTS, "--no-plots", "--no-estimate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("## Against the reference runs of")[1].split("\n## ")[0]
    assert "_nothing compared: no run has a complete reference run of its configuration" in section
    assert "within its" not in section and section.count("no reference run of its configuration") >= 9


def test_a_one_gpu_run_on_a_two_gpu_machine_lists_the_gpu_it_used(tmp_path):
    """nvidia-smi on the two-H200 machine logged both GPUs for every run: a one-GPU run's
    tables and plot name one GPU (the one its memory rose on), a two-GPU run's both."""
    tables = tools_module("tables")
    problems = []
    runs = tables.read_runs([TWO_GPUS / "deepspeed-multi-gpu"], problems)
    rows = tables.objective2(runs)
    for run in runs:
        logged = run.gpu["index"].nunique() if run.gpu is not None else 0
        assert logged == run.m["world_size"], (run.name, logged)
        assert sorted(rows[rows["run"] == run.name]["gpu"]) == list(range(run.m["world_size"]))
        assert rows[rows["run"] == run.name]["min MiB"].min() > 1000  # while training, not idle
    one = next(r for r in runs if r.name.startswith("zero1-1gpu"))
    assert one.label == "arch560 5.59e8 ZeRO-1 fp16 1 H200 (job 842)"  # beside bloom-7b1 runs


def test_a_model_of_another_family_is_labelled_by_its_name_and_size(tmp_path):
    """A run of a Llama-shaped model (its architecture as the metrics record any model's: the
    config's own keys) beside a BLOOM run: labels name each model by its folder and size, and
    nothing assumes BLOOM's config keys."""
    source = next(TWO_GPUS.glob("deepspeed-multi-gpu/runs/zero1-1gpu-*"))
    for name, model, parameters, architecture in (
            ("bloom-1", "/tmp/arch560", 559214592, None),
            ("llama-2", "/data/Llama-3.2-1B", 1235814400,
             dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                  num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  tie_word_embeddings=True))):
        run = tmp_path / "deepspeed-single-gpu" / "runs" / name
        shutil.copytree(source, run)
        m = json.loads((run / "run_metrics.json").read_text())
        m.update(model=model, parameters=parameters, architecture=architecture or m["architecture"])
        (run / "run_metrics.json").write_text(json.dumps(m))
    proc = tool("deepspeed-single-gpu", "--csv", "csv", "--plots", "plots", "--against", TWO_GPUS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    labels = [r["label"] for r in csv.DictReader((tmp_path / "csv" / "objective1.csv").read_text().splitlines())]
    assert labels == ["arch560 5.59e8 ZeRO-1 fp16 1 H200 (job 1)", "Llama-3.2-1B 1.24e9 ZeRO-1 fp16 1 H200 (job 2)"]
    section = proc.stdout.split("## Against the reference runs of")[1]
    assert "Llama-3.2-1B 1.24e9 ZeRO-1 fp16 1 H200 (job 2): no reference run of its configuration" in section
    assert (tmp_path / "plots" / "loss.png").is_file()
