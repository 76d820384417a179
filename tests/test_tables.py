"""tools/tables.py on what real tiny runs leave behind: a baseline run (python train.py) and
a DeepSpeed ZeRO-2 run (the deepspeed launcher), laid out as the job scripts lay them out,
plus nvidia-smi CSVs and host memory logs (no GPU here). Every number the tool prints is
checked against one computed here from the raw files."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_args

TOOL = ROOT / "tools" / "tables.py"
FIXTURES = Path(__file__).parent / "fixtures"
# HAND-WRITTEN in nvidia-smi's format (4 GPUs x 3 readings), to be replaced by a capture from
# a real H100 node: `nvidia-smi --query-gpu=timestamp,index,name,memory.used,memory.total,
# utilization.gpu --format=csv -l 1` (and --format=csv,nounits for the second file).
GPU_CSV = FIXTURES / "nvidia-smi-h100.csv"  # " 1234 MiB"
GPU_CSV_NOUNITS = FIXTURES / "nvidia-smi-h100-nounits.csv"  # " 1234"
HOST_RSS = [10, 219, 486, 512, 377]  # a host memory log as the job scripts write it, in MiB
BASELINE, ZERO2, MULTI = "baseline-101", "deepspeed-single-gpu-102", "deepspeed-multi-node-103"


def tool(*args, cwd):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def start_run(root, stage, name, tiny, deepspeed_config=None):
    """train.py, its output in log/<name>.out after the job script's first line, as a job does."""
    (root / stage / "log").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train.py"]
    if deepspeed_config:
        cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1", "--master_port", "0",
               "train.py", "--deepspeed", deepspeed_config]
    with (root / stage / "log" / f"{name}.out").open("w") as out:  # the child keeps its own handle
        out.write(f"run {name} on testhost, output in runs/{name}\n")
        out.flush()
        return subprocess.Popen(cmd + tiny_args(tiny, output_dir=root / stage / "runs" / name),
                                cwd=ROOT / stage, stdout=out, stderr=subprocess.STDOUT)


def state_of(run_dir):
    """The newest checkpoint's trainer_state.json, read independently of the tool."""
    newest = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((newest / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """Two real runs and the logs around them, then the tool once over all of it."""
    root = tmp_path_factory.mktemp("workshop")
    procs = [start_run(root, "baseline", BASELINE, tiny),  # both at once: ~20 s, not ~30
             start_run(root, "deepspeed-single-gpu", ZERO2, tiny, "ds_zero2.json")]
    for proc, stage, name in zip(procs, ["baseline", "deepspeed-single-gpu"], [BASELINE, ZERO2]):
        assert proc.wait(timeout=300) == 0, (root / stage / "log" / f"{name}.out").read_text()[-3000:]
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

    # Died mid-way: after epoch 1's checkpoint, with the metrics train.py writes on failure.
    died = root / "baseline" / "runs" / "baseline-died"
    shutil.copytree(root / "baseline" / "runs" / BASELINE / "checkpoint-2", died / "checkpoint-2")
    metrics = json.loads((root / "baseline" / "runs" / BASELINE / "run_metrics.json").read_text())
    metrics.update(complete=False, epochs=metrics["epochs"][:1], global_step=2, train_loss=None,
                   train_runtime=None, train_samples_per_second=None)
    (died / "run_metrics.json").write_text(json.dumps(metrics))
    (root / "baseline" / "log" / "baseline-died.out").write_text(  # its end, as a CUDA OOM leaves it
        "run baseline-died on gpu01, output in runs/baseline-died\nTraceback (most recent call last):\n"
        '  File "train.py", line 230, in <module>\ntorch.OutOfMemoryError: CUDA out of memory. '
        "Tried to allocate 1.91 GiB. GPU 0 has a total capacity of 79.19 GiB\n")
    # Stopped on the time limit's warning after step 2 (checkpointed), waiting for its requeue.
    stopped = root / "baseline" / "runs" / "baseline-stopped"
    shutil.copytree(root / "baseline" / "runs" / BASELINE / "checkpoint-2", stopped / "checkpoint-2")
    metrics.update(stopped_on_request_at_step=2)
    (stopped / "run_metrics.json").write_text(json.dumps(metrics))
    # Started by hand with another --output_dir, model a hub id that is not here (offline).
    by_hand = root / "elsewhere" / "my-run"
    by_hand.mkdir(parents=True)
    metrics = json.loads((root / "deepspeed-single-gpu" / "runs" / ZERO2 / "run_metrics.json").read_text())
    (by_hand / "run_metrics.json").write_text(json.dumps({**metrics, "model": "no-such-org/no-such-model"}))

    paths = [root / "baseline", root / "baseline" / "runs" / BASELINE,  # the same run twice
             root / "deepspeed-single-gpu", root / "deepspeed-multi-node" / "log", by_hand]
    proc = tool(*paths, "--csv", root / "csv", "--plots", root / "plots", cwd=root)
    assert proc.returncode == 0, proc.stderr
    tables = {name: list(csv.DictReader((root / "csv" / f"{name}.csv").read_text().splitlines()))
              for name in ("objective1", "objective2", "comparison")}
    return root, proc, tables


def row(table, run):
    rows = [r for r in table if r["run"] == run]
    assert len(rows) == 1, (run, table)
    return rows[0]


def number(value):
    return float(value) if value != "" else None


@pytest.mark.parametrize("stage, name", [("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)])
def test_objective1_matches_the_trainers_own_records(made, stage, name):
    root, _, tables = made
    run_dir = root / stage / "runs" / name
    state = state_of(run_dir)
    ours = row(tables["objective1"], name)
    assert ours["status"] == "complete" and ours["epochs"] == "2/2"
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert [number(ours[f"eval loss ep{i + 1}"]) for i in range(2)] == [e["eval_loss"] for e in evals]
    assert int(ours["steps/epoch"]) == state["max_steps"] // state["num_train_epochs"]
    step_losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert number(ours["train loss"]) == pytest.approx(sum(step_losses) / len(step_losses), rel=1e-4)
    mean_eval_speed = sum(e["eval_samples_per_second"] for e in evals) / len(evals)
    assert number(ours["eval samples/s"]) == pytest.approx(mean_eval_speed)
    printed = (root / stage / "log" / f"{name}.out").read_text()  # the Trainer's final dict, 4 digits
    printed_speed = float(printed.split("'train_samples_per_second': '")[1].split("'")[0])
    assert number(ours["train samples/s"]) == pytest.approx(printed_speed, rel=1e-3)
    assert number(ours["steady samples/s"]) > 0


def raw_gpu_stats(path):
    """(gpu index -> (peak, mean, min, samples)) from the CSV, by plain string handling."""
    readings = {}
    for line in path.read_text().splitlines()[1:]:
        fields = line.split(", ")
        readings.setdefault(int(fields[1]), []).append(int(fields[3].split()[0]))
    return {gpu: (max(v), sum(v) / len(v), min(v), len(v)) for gpu, v in readings.items()}


def test_objective2_per_gpu_and_node_with_and_without_units(made):
    _, proc, tables = made
    expected = raw_gpu_stats(GPU_CSV)
    assert expected == raw_gpu_stats(GPU_CSV_NOUNITS) and len(expected) == 4
    for run, nodes in [(BASELINE, ["gpu01"]), (ZERO2, ["gpu01"]), (MULTI, ["gpu01", "gpu02"])]:
        rows = [r for r in tables["objective2"] if r["run"] == run]
        assert sorted((r["node"], int(r["gpu"])) for r in rows) == [(n, g) for n in nodes for g in range(4)]
        for r in rows:
            peak, mean, low, samples = expected[int(r["gpu"])]
            assert (number(r["peak MiB"]), number(r["min MiB"]), int(r["samples"])) == (peak, low, samples)
            assert number(r["mean MiB"]) == pytest.approx(mean)
            assert number(r["total MiB"]) == 81559 and r["name"] == "NVIDIA H100 80GB HBM3"
    assert f"{ZERO2}-gpu-memory-gpu02.csv is empty" in proc.stdout  # a note; the run still reported
    assert row(tables["objective1"], MULTI)["status"] == "logs only"


def test_comparison_measured_memory_and_deepspeeds_estimate(made, tiny):
    _, proc, tables = made
    from transformers import AutoModelForCausalLM
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny / "model").parameters())
    base, zero2 = row(tables["comparison"], BASELINE), row(tables["comparison"], ZERO2)
    assert (base["ZeRO"], base["offload"], base["GPUs"], base["nodes"]) == ("-", "none", "1", "1")
    assert number(base["est. GPU MiB"]) == pytest.approx(16 * params / 2**20, abs=1e-6)
    assert base["estimate from"] == "16 B/param, AdamW without DeepSpeed" and base["est. host MiB"] == ""
    assert number(base["peak host MiB"]) == max(HOST_RSS)
    assert number(base["peak GPU MiB"]) == max(p for p, *_ in raw_gpu_stats(GPU_CSV).values())
    assert (zero2["ZeRO"], zero2["GPUs"], zero2["nodes"], zero2["precision"]) == ("2", "1", "1", "fp32")
    # DeepSpeed's ZeRO-2 formula for 1 GPU, no offload (stage_1_and_2.py): 2P + 18P/GPUs on
    # the GPU, 4P x GPUs per node x 1.5 on the host.
    assert number(zero2["est. GPU MiB"]) == pytest.approx((2 * params + 18 * params) / 2**20, abs=1e-5)
    assert number(zero2["est. host MiB"]) == pytest.approx(4 * params * 1.5 / 2**20, abs=1e-5)
    metrics = json.loads((made[0] / "deepspeed-single-gpu" / "runs" / ZERO2 / "run_metrics.json").read_text())
    assert number(zero2["samples/s"]) == pytest.approx(metrics["steady_train_samples_per_second"])
    assert number(zero2["samples/s/GPU"]) == pytest.approx(metrics["steady_train_samples_per_second"])
    assert number(zero2["host MiB/rank"]) == pytest.approx(max(metrics["peak_host_rss_mib"]))
    assert "DeepSpeed's estimate assumes fp16/bf16" in proc.stdout


def test_markdown_and_plots(made):
    root, proc, tables = made
    out = proc.stdout
    for heading in ("## Objective 1", "## Objective 2", "## Comparison across runs", "## Notes"):
        assert heading in out
    assert "[WARNING]" not in out and "| run " in out  # stdout is Markdown only
    assert sum(r["run"] == BASELINE for r in tables["objective1"]) == 1  # given twice, listed once
    for name in ("loss.png", "gpu-memory.png"):
        assert (root / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("stage, name", [("baseline", BASELINE), ("deepspeed-single-gpu", ZERO2)])
def test_answer_quality_before_and_after(made, stage, name):
    root, _, tables = made
    ours = row(tables["objective1"], name)
    quality = json.loads((root / stage / "runs" / name / "run_metrics.json").read_text())["answer_quality"]
    for when in ("before", "after"):
        assert number(ours[f"EM {when}"]) == pytest.approx(quality[when]["exact_match"])
        assert number(ours[f"F1 {when}"]) == pytest.approx(quality[when]["f1"])


def test_a_run_that_died_mid_way_says_so_and_reports_what_exists(made):
    root, proc, tables = made
    died = row(tables["objective1"], "baseline-died")
    assert died["status"] == "died mid-way" and died["epochs"] == "1/2"
    assert died["train loss"] == died["train samples/s"] == "" and number(died["steady samples/s"]) > 0
    first_eval = next(e for e in state_of(root / "baseline" / "runs" / BASELINE)["log_history"] if "eval_loss" in e)
    assert number(died["eval loss ep1"]) == first_eval["eval_loss"]
    assert died["eval loss ep2"] == ""
    note = next(line for line in proc.stdout.splitlines() if line.startswith("- baseline-died: died mid-way"))
    assert "run_metrics.json says complete=false; 1 of 2 epochs evaluated, step 2 of 4 checkpointed" in note
    assert "last error in baseline-died.out: torch.OutOfMemoryError: CUDA out of memory." in note


def test_a_run_stopped_on_the_time_limits_warning_says_it_will_resume(made):
    root, proc, tables = made
    stopped = row(tables["objective1"], "baseline-stopped")
    assert stopped["status"] == "stopped to resume" and stopped["epochs"] == "1/2"
    note = next(line for line in proc.stdout.splitlines() if line.startswith("- baseline-stopped:"))
    assert ("stopped on request (the time limit's warning) after step 2, checkpointed, to be "
            "resumed; 1 of 2 epochs evaluated, step 2 of 4 checkpointed") in note


def test_a_model_that_cannot_be_found_leaves_the_estimate_blank(made):
    _, proc, tables = made
    mine = row(tables["comparison"], "my-run")
    assert mine["est. GPU MiB"] == "" and mine["ZeRO"] == "2"
    notes = [line for line in proc.stdout.splitlines() if line.startswith("- my-run: no memory estimate")]
    assert len(notes) == 1 and "no-such-org/no-such-model" in notes[0]


def test_nothing_to_report_exits_non_zero_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("hello\n")
    for stage, name, text in [("a", "job-7-gpu-memory-gpu01.csv", ""),  # a logger that never wrote
                              ("b", "job-8-host-memory-gpu01.csv", "timestamp,rss_mib\n")]:
        (tmp_path / stage / "log").mkdir(parents=True)
        (tmp_path / stage / "log" / name).write_text(text)
    for path, says in [("missing", "missing does not exist"), ("empty", "no run in empty"),
                       ("unrelated", "no run in unrelated"),
                       ("a/log/job-7-gpu-memory-gpu01.csv", "job-7-gpu-memory-gpu01.csv is empty"),
                       ("b", "job-8-host-memory-gpu01.csv has a header but no readings")]:
        proc = tool(path, "--no-plots", cwd=tmp_path)
        assert proc.returncode == 1 and proc.stdout == "", path
        assert proc.stderr.startswith("tables: nothing to report") and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr, proc.stderr


def test_a_missing_path_beside_a_good_one_is_reported_but_not_fatal(made):
    root = made[0]
    proc = tool("missing", root / "baseline" / "runs" / BASELINE, "--no-plots", "--no-estimate", cwd=root)
    assert proc.returncode == 0 and "tables: missing does not exist" in proc.stderr
    assert BASELINE in proc.stdout


def test_help_explains_every_column(made):
    proc = tool("--help", cwd=ROOT)
    tables = made[2]
    columns = {c for t in tables.values() for c in t[0]} - {"run", "stage"}
    assert proc.returncode == 0
    for column in columns:
        assert column.replace("eval loss ep1", "eval loss epN").replace("ep2", "epN") in proc.stdout, column


README_ONE_LINERS = {  # the README's shell equivalents, run on the same CSV
    "peak": "tail -q -n +2 {f} | cut -d',' -f4 | sort -n | tail -1",
    "per GPU": ("awk -F', ' 'FNR > 1 {{ m = $4 + 0; n[$2]++; s[$2] += m; if (!($2 in lo) || m < lo[$2]) lo[$2] = m;"
                " if (m > hi[$2]) hi[$2] = m }} END {{ for (g in n) print g, hi[g], s[g] / n[g], lo[g] }}' {f}"),
}


@pytest.mark.parametrize("path", [GPU_CSV, GPU_CSV_NOUNITS])
def test_the_readmes_one_liners_agree(path, made):
    peak = subprocess.run(README_ONE_LINERS["peak"].format(f=path), shell=True, capture_output=True, text=True)
    per_gpu = subprocess.run(README_ONE_LINERS["per GPU"].format(f=path), shell=True, capture_output=True, text=True)
    ours = [r for r in made[2]["objective2"] if r["run"] == MULTI and r["node"] == "gpu01"]
    assert int(peak.stdout.split()[0]) == max(number(r["peak MiB"]) for r in ours)
    shell = {int(g): (float(hi), float(mean), float(lo))
             for g, hi, mean, lo in map(str.split, per_gpu.stdout.splitlines())}
    assert shell == {int(r["gpu"]): pytest.approx((number(r["peak MiB"]), number(r["mean MiB"]),
                                                   number(r["min MiB"])), rel=1e-5) for r in ours}


# Captured for real on an NVIDIA H100 80GB HBM3 (device tool, 2026-11-24) while the single-GPU
# matrix ran, `--format=csv` (with units), one reading in six; and the published results, whose
# GPU logs are the jobs' own `--format=csv,nounits` captures on that GPU.
REAL_GPU_CSV = FIXTURES / "nvidia-smi-h100-real.csv"
RESULTS = ROOT / "docs" / "results" / "h100-2026-11-24"


def test_real_h100_captures_with_and_without_units(tmp_path):
    """The published runs, and one of them again with the with-units capture as its GPU log."""
    stage = tmp_path / "baseline"
    shutil.copytree(RESULTS / "baseline", stage)
    run = sorted(p.name for p in (stage / "runs").iterdir())[0]
    for log in (stage / "log").glob(f"{run}-gpu-memory-*.csv"):
        shutil.copy(REAL_GPU_CSV, log)
    proc = tool(stage, RESULTS / "deepspeed-single-gpu", "--csv", tmp_path / "csv", "--no-plots",
                "--no-estimate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    objective2 = list(csv.DictReader((tmp_path / "csv" / "objective2.csv").read_text().splitlines()))
    checked = 0
    for r in objective2:
        source = (REAL_GPU_CSV if r["run"] == run else
                  next((RESULTS / "deepspeed-single-gpu" / "log").glob(f"{r['run']}-gpu-memory-*.csv"), None)
                  or next((RESULTS / "baseline" / "log").glob(f"{r['run']}-gpu-memory-*.csv")))
        peak, mean, low, samples = raw_gpu_stats(source)[int(r["gpu"])]
        assert (number(r["peak MiB"]), number(r["min MiB"]), int(r["samples"])) == (peak, low, samples)
        assert number(r["mean MiB"]) == pytest.approx(mean)
        checked += 1
    assert checked == len(list(RESULTS.glob("*/runs/*"))) >= 8
