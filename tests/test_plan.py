"""The memory plan (workshop/memory_plan.py) against every committed GPU run, against BLOOM's
own code replayed on fake tensors, and tools/plan.py's command line. CPU only, no training;
`pytest -s` prints the comparison."""
import dataclasses
import functools
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

from workshop import memory_plan as plan
from workshop.memory_plan import SIDECARS, unrecorded
from workshop.models import BLOOM, architecture, hub_id
from workshop.step_trace import traced_step

sys.path.insert(0, str(ROOT / "tools"))
import plan as plan_cli  # noqa: E402

RESULTS = ROOT / "docs" / "results"


def sidecar(path):
    """(folder, dict) of the nearest sidecar above a run's file, or (None, {})."""
    for folder in path.parents:
        for name in SIDECARS:
            if (folder / name).is_file():
                return folder, json.loads((folder / name).read_text())
        if folder == RESULTS:
            break
    return None, {}


def by_prefix(table, name, default=None):
    return next((v for k, v in (table or {}).items() if name.startswith(k)), default)


def committed_runs():
    """([run], [(name, why it is skipped)]) for every run under docs/results, both dates: each
    run folder (run_metrics.json, or run_settings.json alone when cut off before writing its
    metrics) and each run of a bench_fast.json (tools/bench_fast.py's output). A run: its name,
    metrics, the memory of its machine, how it ended, and predict()'s keywords for what it does
    not record itself (from the sidecar of its folder)."""
    folders = {f.parent for f in RESULTS.rglob("run_settings.json")} | {
        f.parent for f in RESULTS.rglob("run_metrics.json")}
    found = [(d / "run_metrics.json", d) for d in sorted(folders)]
    for f in sorted(RESULTS.rglob("bench_fast.json")):
        found += [(f, m) for m in json.loads(f.read_text())["results"].values()]
    runs, skipped = [], []
    for f, m in found:
        folder, side = sidecar(f)
        key, name = str(f.parent.relative_to(folder or RESULTS)), str(f.parent.relative_to(RESULTS))
        if isinstance(m, Path):
            if not f.is_file():
                skipped.append((name, "no run_metrics.json: cut off before it wrote one"))
                continue
            m = json.loads(f.read_text())
        else:
            name += f" ({m['stage']}, fast path {m['fast_path']}, compiled {m.get('compile_blocks')})"
        if not m.get("peak_gpu_memory_allocated_mib") or m["peak_gpu_memory_allocated_mib"][0] is None:
            skipped.append((name, "not a GPU run"))
            continue
        new = "schema_version" in m  # version 2 records these itself
        ended = m["status"] if new else "complete" if m["complete"] else "incomplete"
        oom = m.get("out_of_memory") if new else side.get("out_of_memory", {}).get(key)
        if ended != "complete" and not oom:
            skipped.append((name, f"{ended}, not for lack of memory: {m.get('error')}"))
            continue
        known = unrecorded(f.parent, m)  # what tools/tables.py gives predict_run too
        runs.append(dict(
            name=name, metrics=m, ended=oom and f"out of {oom} memory" or ended, out_of_memory=oom,
            model=known.pop("model"), settings=known,
            gpu_memory_mib=m.get("gpu_memory_mib") or side.get("gpu_memory_mib"),
            host_memory_mib=m.get("host_memory_mib") or side.get("host_memory_mib"),
            trainer_state=f.parent / "trainer_state.json"))
    return runs, skipped


RUNS, SKIPPED = committed_runs()


def prediction(run):
    return plan.predict_run(run["metrics"], model=run["model"], **run["settings"])


def test_committed_runs_are_found_and_known():
    assert len(RUNS) >= 59 and len({r["name"] for r in RUNS}) == len(RUNS)
    assert any("h200-2026-12-01" in r["name"] for r in RUNS)
    for run in RUNS:
        assert run["model"], f"{run['name']}: architecture unknown (add it to its sidecar)"
        assert run["gpu_memory_mib"] and run["host_memory_mib"], f"{run['name']}: machine unknown"
    assert [name for name, _ in SKIPPED] == ["h200-2026-12-01/explore/ZeRO-2_fast_RO64_short"], SKIPPED


def test_committed_results_hide_nothing_from_git():
    """A stage's log/.gitignore (everything but itself) copied into docs/results with its runs
    keeps git from committing their logs, as it did once."""
    assert not list(RESULTS.rglob(".gitignore"))


def test_every_run_within_10_percent_and_fits_as_it_ran():
    """GPU within 10%, host memory per node (its ranks' peaks together) within 10%; "no" for
    every run that ran out of that memory, never "no" for one that completed."""
    rows, worst = [], 0
    for run in RUNS:
        m, p = run["metrics"], prediction(run)
        gpu = max(m["peak_gpu_memory_allocated_mib"])
        host = sum(r for r in m["peak_host_rss_mib"] if r) / (m.get("nodes") or 1)  # a node's ranks
        error = p["gpu_mib"] / gpu - 1
        fits_gpu = plan.fits(p["gpu_mib"], run["gpu_memory_mib"])
        fits_host = plan.fits(p["host_node_mib"], run["host_memory_mib"], gpu=False)
        worst = max(worst, abs(error))
        later = run["settings"]["later_longest"]
        rows.append(f"| {run['name']} | {architecture(run['model']).params / 1e9:.2f}e9 | "
                    f"{m['zero_stage']} | {m['offload_optimizer']}/{m['offload_param']} | "
                    f"{m['precision']} | {'GC ' * bool(m.get('gradient_checkpointing'))}"
                    f"{'fast' * bool(m.get('fast_path'))}{' compiled' * bool(m.get('compile_blocks'))} | "
                    f"{m['per_device_train_batch_size']}x{m['gradient_accumulation_steps']}"
                    f"{f', {later} after step 1' if later else ''} | {p['gpu_mib']:,.0f} | {gpu:,.0f} | "
                    f"{error:+.1%} | {p['phase']} | {p['host_node_mib']:,.0f} | {host:,.0f} | "
                    f"{p['host_node_mib'] / host - 1:+.1%} | {fits_gpu} / {fits_host} | {run['ended']} |")
        if "compiled: at most" in p["phase"]:  # another family's compiled blocks: an upper bound
            assert 0 <= error <= 0.20, f"{run['name']}: predicted {p['gpu_mib']:.0f} MiB, measured {gpu:.0f}"
        else:
            assert abs(error) <= 0.10, f"{run['name']}: predicted {p['gpu_mib']:.0f} MiB, measured {gpu:.0f}"
        assert abs(p["host_node_mib"] / host - 1) <= 0.10, \
            f"{run['name']}: host per node {p['host_node_mib']:.0f} vs {host:.0f} MiB"
        if run["out_of_memory"] == "host":
            assert fits_host == "no", f"{run['name']} ran out of host memory; the plan says {fits_host}"
        elif run["out_of_memory"] == "gpu":
            assert fits_gpu == "no", f"{run['name']} ran out of GPU memory; the plan says {fits_gpu}"
        else:
            assert "no" not in (fits_gpu, fits_host), f"{run['name']} ran; the plan says it does not fit"
    print("\n| run | parameters | ZeRO | offload opt/param | precision | levers | batch | predicted "
          "alloc MiB | measured | error | peak at | predicted host MiB/node | measured (ranks' ru_maxrss) | "
          "error | fits GPU / host | ended |\n|" + "---|" * 16)
    print("\n".join(rows))
    print(f"largest GPU error: {worst:.1%} over {len(RUNS)} runs; skipped: "
          + "; ".join(f"{name} ({why})" for name, why in SKIPPED))


def test_the_replay_alone_predicts_blooms_runs():
    """The way the plan counts any other family (its step replayed on fake tensors,
    workshop/step_trace.py), applied to BLOOM as if its formula did not exist: the committed
    bloom-560m runs of the single-GPU stages on the H100 (every ZeRO stage and offload) and
    of the H200's whole jobs (the fast path, eager and compiled, through ZeRO-1 too) within 3%
    (`pytest -s` prints each)."""
    rows = []
    for run in (r for r in RUNS if r["name"].startswith(("h100-2026-11-24/deepspeed-single-gpu/",
                                                         "h200-2026-12-02/bench-jobs/"))):
        m, a = run["metrics"], architecture(run["model"])
        anonymous = dataclasses.replace(a, model_type="bloom (as any model)")
        p = plan.predict_run({k: v for k, v in m.items() if k != "architecture"}, model=anonymous,
                             **run["settings"])
        rows.append((p["gpu_mib"] / max(m["peak_gpu_memory_allocated_mib"]) - 1, run["name"]))
    print("\n".join(f"{error:+.1%} {name}" for error, name in sorted(rows)))
    assert len(rows) >= 15 and max(abs(e) for e, _ in rows) <= 0.03, sorted(rows)[::len(rows) - 1]


def test_batch_lengths_add_up_to_each_runs_total_flos():
    """The sidecar's batch lengths are those the runs trained on: padded as each run padded,
    their tokens make the Trainer's total_flos (6 x non-embedding parameters x input tokens)."""
    checked = 0
    for run in RUNS:
        m, (_, side) = run["metrics"], sidecar(run["trainer_state"])
        batches = by_prefix(side.get("batch_longest_tokens"), str(run["trainer_state"].parent.relative_to(RESULTS)).split("/", 1)[-1])
        if not batches or m["zero_stage"] == 3 or not run["trainer_state"].is_file():
            continue  # ZeRO-3's partitioned parameters count as none
        a, batch = architecture(run["model"]), m["per_device_train_batch_size"] * m["gradient_accumulation_steps"]
        multiple = run["settings"]["length_multiple"] or (64 if m["compile_blocks"] else 8)
        tokens = sum(min(batch, m["train_samples"] - i * batch) * (
            m["max_length"] if m["pad_to_max_length"] else -(-longest // multiple) * multiple)
            for i, longest in enumerate(batches[:m["global_step"]]))
        flos = json.loads(run["trainer_state"].read_text())["total_flos"]
        assert flos / 6 / (a.params - a.vocab * a.hidden) == pytest.approx(tokens), run["name"]
        checked += 1
    assert checked >= 15


def test_the_peak_comes_where_the_plan_says_on_the_h200():
    """bloom-7b1's eager fast path, step by step (h200-2026-12-01/step-peaks): 432 tokens before
    AdamW's moments exist, 272 with them (the committed 3-step run's peak), then 432 with them
    (a second epoch's, which the plan shows)."""
    steps = json.loads((RESULTS / "h200-2026-12-01" / "step-peaks" / "step_peaks.json").read_text())["steps"]
    predict = functools.partial(plan.predict, "bloom-7b1", per_device_train_batch_size=16,
                                gradient_accumulation_steps=1, precision="bf16", fast_path=True)
    states = plan.model_states(architecture("bloom-7b1"), dict(
        world_size=1, b=2, gradient_accumulation_steps=1, zero_stage=None))
    # step 1 peaks where AdamW makes its moments: weights, gradients and moments, 16 B/parameter
    assert states["step"] / plan.MIB + plan.WORKSPACE_MIB == pytest.approx(steps[0]["peak"], rel=0.001)
    assert predict(longest=432, later_longest=272)["gpu_mib"] == pytest.approx(steps[1]["peak"], rel=0.01)
    assert predict(longest=432)["gpu_mib"] == pytest.approx(steps[2]["peak"], rel=0.01)


def test_newer_runs_record_their_architecture():
    """A run_metrics.json with schema_version 2 names its architecture itself."""
    run = next(r for r in RUNS if r["model"] == "bloom-560m" and r["metrics"]["zero_stage"] == 2)
    hidden, layers, heads = BLOOM["bloom-560m"]
    newer = dict(run["metrics"], schema_version=2, model="/somewhere/else", architecture=dict(
        vocab_size=250_880, hidden_size=hidden, n_layer=layers, n_head=heads))
    assert plan.predict_run(newer, **run["settings"])["gpu_mib"] == prediction(run)["gpu_mib"]


# --- the activation and loss terms against BLOOM's code, replayed on fake tensors ------------

def load_fast_path():
    from workshop import fast_path
    return fast_path


def test_the_plans_loss_chunk_is_the_fast_paths():
    chunk = inspect.signature(load_fast_path().enable_fast_path).parameters["chunk_size"].default
    assert plan.LOSS_CHUNK == chunk


def replay(arch, batch, length, *, amp=False, fp32=False, fast=False, checkpointing=False):
    """Peak MiB of what one micro-batch's forward and backward allocate (weights and existing
    gradients excluded), running BLOOM's code on fake tensors (no memory, no arithmetic)."""
    a = architecture(arch)
    return traced_step(a.config, batch, length, weights="amp" if amp else "fp32" if fp32 else "16bit",
                       gradient_checkpointing=checkpointing, fast_path=fast).peak / plan.MIB


@pytest.mark.parametrize("case", [
    dict(),  # DeepSpeed's 16-bit model, eager attention, the stock loss
    dict(amp=True),  # the Trainer: fp32 weights under autocast
    dict(fp32=True),  # fp32 training (the CPU runs)
    dict(amp=True, checkpointing=True),
    dict(fast=True),  # SDPA attention, the fast path's loss (one chunk)
])
def test_activation_and_loss_terms_match_blooms_code(case):
    batch, length = (2, 512) if case.get("fast") else (4, 512)
    replayed = replay("bloom-560m", batch, length, **case)
    p = plan.predict("bloom-560m", per_device_train_batch_size=batch, max_length=length,
                     precision="fp32" if case.get("fp32") else "bf16",
                     zero_stage=None if case.get("amp") else 2,
                     gradient_checkpointing=case.get("checkpointing", False),
                     fast_path=case.get("fast", False), pad_to_max_length=True)
    a = architecture("bloom-560m")
    states = plan.model_states(a, dict(world_size=1, b=4 if case.get("fp32") else 2,
                                       gradient_accumulation_steps=4, zero_stage=None
                                       if case.get("amp") else 2, offload_optimizer=False, offload_param=False))
    counted = p["gpu_mib"] - p["workspace_mib"] - states["fb"] / plan.MIB  # the replay has no
    # optimizer, and its weights and gradients exist before it starts
    assert counted == pytest.approx(replayed, rel=0.02), (case, p["phase"])


@pytest.mark.parametrize("attention, batch, length", [("sdpa", 16, 432), ("eager", 4, 512)])
def test_a_bloom_7b1_block_saves_what_the_plan_counts(attention, batch, length):
    """What one block keeps for its backward under bf16 autocast (the Trainer), counted on fake
    tensors: the fast path's SDPA attention at the bloom-7b1 run's 16 x 432 tokens, and eager
    attention at the workshop's 4 x 512. Activations as block_activations counts them; the
    16-bit copies of its four weight matrices (2 bytes x 12 hidden^2) on top."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import BloomConfig
    from transformers.models.bloom.modeling_bloom import BloomBlock
    fast_path = load_fast_path()
    hidden, _, heads = BLOOM["bloom-7b1"]
    with FakeTensorMode(allow_non_fake_inputs=True):
        block = BloomBlock(BloomConfig(hidden_size=hidden, n_head=heads), layer_idx=0)
        if attention == "sdpa":
            fast_path.use_sdpa_attention(block)
        shapes = {tuple(p.shape) for p in block.parameters()}
        saved = {}

        def pack(t):  # every storage once: weight copies (stored transposed) apart from the rest
            kind = "copy" if t.dim() == 2 and tuple(t.shape)[::-1] in shapes else "activation"
            saved[t.untyped_storage()._cdata] = (kind, t.untyped_storage().nbytes())
            return t
        x = torch.zeros(batch, length, hidden, requires_grad=True)  # the fp32 residual stream
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            block(x, torch.zeros(batch * heads, 1, length), torch.zeros(batch, 1, length, length))
    total = {kind: sum(n for k, n in saved.values() if k == kind) for kind in ("copy", "activation")}
    a = architecture("bloom-7b1")
    assert total["activation"] == pytest.approx(
        plan.block_activations(a, batch, length, 2, True, attention), rel=0.001)
    assert total["copy"] == 2 * 12 * hidden ** 2


# --- the command line ---------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "plan.py"), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, says", [
    (["bloom-7b1", "--gpus_per_node", "0"], "--gpus_per_node"),
    (["bloom-7b1", "--precision", "fp8"], "--precision"),
    (["bloom-7b1", "--nodes", "two"], "--nodes"),
    (["/no/such/folder"], "does not exist"),
    (["no-such-org/no-such-model"], "hub"),
])
def test_bad_input_is_one_line(args, says, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_:
        plan_cli.main(args)
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message and says in message


def test_bad_input_from_the_shell_is_one_line_without_traceback(tmp_path):
    proc = run_cli(str(tmp_path))  # a folder without config.json
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "config.json" in proc.stderr


@pytest.mark.parametrize("args", [
    ["--gpus_per_node", "4"], ["--gpus_per_node", "8"], ["--nodes", "2", "--gpus_per_node", "4"]])
def test_cli_answers_for_bloom_7b1_on_several_80gb_gpus(args, capsys):
    plan_cli.main(["bloom-7b1", *args])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 14, out  # header + 6 configurations x 2 + the fast path x 2
    assert "Recommended: " in out and "DS_CONFIG=" in out
    print(out)


def test_the_cli_runs_as_a_script():
    proc = run_cli("bloom-560m")
    assert proc.returncode == 0, proc.stderr
    assert "Recommended: fast path" in proc.stdout


@pytest.mark.parametrize("gpu", ["A100-40GB", "a100_40gb", "40GB", "40G"])
def test_a_card_by_its_marketed_size(gpu, capsys):
    plan_cli.main(["bloom-560m", "--gpu", gpu])
    assert "A100-40GB's 39.4 GiB as torch reports it" in capsys.readouterr().out


def test_typing_the_marketed_size_or_torchs_figure_gives_the_same_advice(capsys):
    said = []
    for gib in ("40", "39.4"):
        plan_cli.main(["bloom-7b1", "--gpus_per_node", "4", "--gpu_memory_gib", gib])
        said.append(capsys.readouterr().out.split("\n", 1)[1])  # the table onwards
    assert said[0] == said[1]


def test_an_ambiguous_card_is_one_line():
    with pytest.raises(SystemExit) as exit_:
        plan_cli.main(["bloom-560m", "--gpu", "A100"])
    assert str(exit_.value.code) == "error: --gpu A100: A100-40GB or A100-80GB?"


def test_help_shows_the_defaults_and_whole_sentences():
    proc = run_cli("--help")
    text = " ".join(proc.stdout.split())  # argparse wraps the options' help where it likes
    assert proc.returncode == 0 and "(default: H100-80GB)" in text and "(default: 4)" in text
    assert "the measured speeds and the fitted constants are in workshop/plan_data.json, each with the\n" \
           "runs under docs/results it comes from.\n" in proc.stdout  # the description as written


def test_the_recommendation_comes_with_its_sbatch_line(capsys):
    plan_cli.main(["bloom-7b1", "--gpus_per_node", "4"])
    out = capsys.readouterr().out
    commands = [line.strip() for line in out.split("From the repository root:")[1].splitlines() if line.strip()]
    assert commands[-1].startswith(("DS_CONFIG=", "PREPARED=")) and " sbatch " in commands[-1]
    assert "deepspeed-multi-gpu/deepspeed-multi-gpu.slurm" in commands[-1]
    if not (ROOT / "prepared" / "model").is_dir():  # not prepared here: tools/prepare.py first
        assert commands[0].startswith("python tools/prepare.py --model_name_or_path bigscience/bloom-7b1")


def test_an_unmeasured_speed_is_recommended_as_an_estimate(capsys):
    """bloom-3b's fast path was never measured; on an H200 it fits and is the fastest."""
    plan_cli.main(["bloom-3b", "--gpu", "H200"])
    recommended = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Recommended"))
    assert recommended.startswith("Recommended: fast path") and "an estimate" in recommended


def test_two_gpus_say_what_was_measured_and_nodes_are_not_rated_as_one(capsys):
    plan_cli.main(["bloom-560m", "--gpus_per_node", "2"])
    two = capsys.readouterr().out
    assert "docs/results/h200x2-2026-12-01" in two and "Several nodes" not in two
    plan_cli.main(["bloom-560m", "--gpus_per_node", "1", "--nodes", "2"])
    nodes = capsys.readouterr().out
    assert "Several nodes: nothing was measured" in nodes and "~x" in nodes.split("Recommended")[1]


def test_the_prepare_step_the_plan_prints_says_in_one_line_what_to_do_offline(tmp_path):
    """tools/prepare.py where the hub cannot be reached (the tests run with HF_HUB_OFFLINE=1):
    one line saying what to do instead, not the hub client's traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare.py"), "--model_name_or_path",
                           "bigscience/bloom-560m", "--prepared_dir", str(tmp_path / "prepared")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: bigscience/bloom-560m cannot be fetched: the hub is off here")
    assert "on a machine with internet" in proc.stderr


def test_a_model_folder_goes_into_the_sbatch_line_as_its_path(tiny, capsys):
    plan_cli.main([str(tiny / "model")])
    commands = capsys.readouterr().out.split("From the repository root:")[1].split()
    assert "tools/prepare.py" not in commands and "sbatch" in commands
    assert commands[commands.index("--model_name_or_path") + 1] == str((tiny / "model").resolve())


def test_the_plan_of_another_family(capsys, tmp_path):
    """Another family's model folder: the plan replays its step, recommends, and the sbatch
    line takes the folder; a named size names the hub id tools/prepare.py fetches."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny import tiny_model
    tiny_model("qwen2").config.save_pretrained(tmp_path / "qwen2")
    plan_cli.main([str(tmp_path / "qwen2"), "--max_length", "64"])
    out = capsys.readouterr().out
    assert out.startswith(f"Plan for {tmp_path / 'qwen2'}: 0.00e9 parameters (2 layers, hidden 64")
    assert "Recommended: " in out and f"--model_name_or_path {tmp_path / 'qwen2'}" in out
    assert [hub_id(name) for name in ("qwen2.5-0.5b", "Llama-3.2-1B", "bloom-560m", "org/model")] == [
        "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "bigscience/bloom-560m", "org/model"]


@pytest.mark.parametrize("config, says", [
    ({"model_type": "no-such-family"}, "transformers cannot build a config"),
    ({"hidden_size": 64}, "transformers cannot build a config"),
    ({"model_type": "t5", "vocab_size": 100, "d_model": 64}, "is not a causal language model"),
])
def test_a_config_the_plan_cannot_read_is_one_line(config, says, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_:
        plan_cli.main([str(tmp_path)])
    message = str(exit_.value.code)
    assert message.startswith("error: MODEL ") and "\n" not in message and says in message, message
