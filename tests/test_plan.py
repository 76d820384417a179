"""tools/plan.py against every committed GPU run, against BLOOM's own code replayed on fake
tensors, and its command line. CPU only, no training; `pytest -s` prints the comparison."""
import importlib.util
import json
import subprocess
import sys
import weakref

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import plan  # noqa: E402

RESULTS = ROOT / "docs" / "results"
SIDECAR = "architectures.json"  # what old runs do not record themselves (see the file's note)


def sidecar(path):
    """The nearest architectures.json above a run's file, or {}."""
    for folder in path.parents:
        if (folder / SIDECAR).is_file():
            return folder, json.loads((folder / SIDECAR).read_text())
        if folder == RESULTS:
            break
    return None, {}


def committed_runs():
    """(name, run_metrics dict, what the plan needs to know) for every committed GPU run:
    each run_metrics.json, and each run in a bench_fast.json (tools/bench_fast.py's output)."""
    found = [(f, json.loads(f.read_text())) for f in sorted(RESULTS.rglob("run_metrics.json"))]
    for f in sorted(RESULTS.rglob("bench_fast.json")):
        found += [(f, metrics) for metrics in json.loads(f.read_text())["results"].values()]
    runs = []
    for f, m in found:
        if not m.get("peak_gpu_memory_allocated_mib") or m["peak_gpu_memory_allocated_mib"][0] is None:
            continue  # not a GPU run
        folder, side = sidecar(f)
        name = str(f.parent.relative_to(folder or RESULTS))
        if f.name == "bench_fast.json":
            name += f" ({m['stage']}, fast path {m['fast_path']}, compiled {m.get('compile_blocks')})"
        new = "schema_version" in m  # newer runs record these themselves
        runs.append(dict(
            name=name, metrics=m,
            model=m.get("architecture") or side.get("models", {}).get(m["model"]),
            longest=m.get("longest_sequence_tokens", side.get("longest_sequence_tokens")),
            pin_memory=m.get("pin_memory", side.get("pin_memory", {}).get(m.get("deepspeed_config"), True)),
            gpu_memory_mib=m.get("gpu_memory_mib") or side.get("gpu_memory_mib"),
            host_memory_mib=m.get("host_memory_mib") or side.get("host_memory_mib"),
            out_of_memory=m.get("out_of_memory") if new else side.get("out_of_memory", {}).get(name)))
    return runs


RUNS = committed_runs()


def prediction(run):
    return plan.predict_run(run["metrics"], model=run["model"], longest=run["longest"],
                            pin_memory=run["pin_memory"])


def test_committed_runs_are_found_and_known():
    assert len(RUNS) >= 32
    for run in RUNS:
        assert run["model"], f"{run['name']}: architecture unknown (add it to {SIDECAR})"
        assert run["gpu_memory_mib"] and run["host_memory_mib"], f"{run['name']}: machine unknown"


def test_every_run_within_10_percent_and_fits_as_it_ran():
    rows, worst = [], 0
    for run in RUNS:
        m, p = run["metrics"], prediction(run)
        gpu, host = max(m["peak_gpu_memory_allocated_mib"]), max(m["peak_host_rss_mib"])
        error = p["gpu_mib"] / gpu - 1
        fits_gpu = plan.fits(p["gpu_mib"], run["gpu_memory_mib"])
        fits_host = plan.fits(p["host_node_mib"], run["host_memory_mib"])
        worst = max(worst, abs(error))
        rows.append(f"| {run['name']} | {run['model']} | {m['zero_stage']} | {m['offload_optimizer']}"
                    f"/{m['offload_param']} | {m['precision']} | {p['gpu_mib']:,.0f} | {gpu:,.0f} | "
                    f"{error:+.1%} | {p['phase']} | {p['host_mib']:,.0f} | {host:,.0f} | "
                    f"{p['host_mib'] / host - 1:+.1%} | {fits_gpu} / {fits_host} | "
                    f"{run['out_of_memory'] or ('complete' if m['complete'] else 'incomplete')} |")
        assert abs(error) <= 0.10, f"{run['name']}: predicted {p['gpu_mib']:.0f} MiB, measured {gpu:.0f}"
        if run["out_of_memory"] == "host":
            assert fits_host == "no", f"{run['name']} ran out of host memory; the plan says {fits_host}"
        elif run["out_of_memory"] == "gpu":
            assert fits_gpu == "no", f"{run['name']} ran out of GPU memory; the plan says {fits_gpu}"
        else:
            assert m["complete"], f"{run['name']} did not complete: say why in {SIDECAR} or the run"
            assert "no" not in (fits_gpu, fits_host), f"{run['name']} ran; the plan says it does not fit"
    print("\n| run | model | ZeRO | offload opt/param | precision | predicted alloc MiB | measured | "
          "error | peak at | predicted host MiB | measured (ru_maxrss) | error | fits GPU / host | "
          "ended |\n|" + "---|" * 14)
    print("\n".join(rows))
    print(f"largest GPU error: {worst:.1%}")


def test_newer_runs_record_their_architecture():
    """A run_metrics.json with schema_version 2 names its architecture itself."""
    run = next(r for r in RUNS if r["model"] == "bloom-560m" and r["metrics"]["zero_stage"] == 2)
    hidden, layers, heads = plan.BLOOM["bloom-560m"]
    newer = dict(run["metrics"], schema_version=2, model="/somewhere/else", architecture=dict(
        vocab_size=250_880, hidden_size=hidden, n_layer=layers, n_head=heads))
    assert plan.predict_run(newer) == prediction(run)


def test_host_memory_of_offload_runs_within_15_percent():
    offload = [r for r in RUNS if r["metrics"].get("offload_optimizer") not in (None, "none")]
    assert offload
    for run in offload:
        host = max(run["metrics"]["peak_host_rss_mib"])
        predicted = prediction(run)["host_mib"]
        assert abs(predicted / host - 1) <= 0.15, f"{run['name']}: host {predicted:.0f} vs {host:.0f} MiB"


# --- the activation and loss terms against BLOOM's code, replayed on fake tensors ------------

class LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the tensors that ops create and that are still alive; their peak."""

    def __init__(self, known):
        super().__init__()
        self.known, self.live, self.now, self.peak = known, {}, 0, 0

    def _gone(self, key):
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.known:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._gone, key)
        self.peak = max(self.peak, self.now)
        return out


def replay(arch, batch, length, *, amp=False, fp32=False, fast=False, checkpointing=False):
    """Peak MiB of what one micro-batch's forward and backward allocate (weights and existing
    gradients excluded), running BLOOM's code on fake tensors (no memory, no arithmetic)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM, BloomConfig
    fast_path = sys.modules.get("fast_path")  # tests/test_fast_path.py loads it the same way
    if fast_path is None:  # from its file: baseline/ on sys.path would shadow other stages' modules
        spec = importlib.util.spec_from_file_location("fast_path", ROOT / "baseline" / "fast_path.py")
        fast_path = sys.modules["fast_path"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fast_path)
    hidden, layers, heads = plan.BLOOM[arch]
    with FakeTensorMode(allow_non_fake_inputs=True):
        config = BloomConfig(vocab_size=250_880, hidden_size=hidden, n_layer=layers, n_head=heads)
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32 if amp or fp32 else torch.bfloat16)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        if fast:  # boolean indexing has no fake shape: every position is labelled here
            fast_path.enable_fast_path(model)
            model.loss_chunk_size = None  # one chunk of every position ...
            chunk = plan.LOSS_CHUNK  # ... of LOSS_CHUNK positions: the batch is that long
            assert batch * length == chunk
        known = {p.untyped_storage()._cdata for p in model.parameters()}
        for p in model.parameters():  # gradients of an earlier micro-batch (accumulation)
            p.grad = torch.zeros_like(p)
            known.add(p.grad.untyped_storage()._cdata)
        ids = torch.zeros(batch, length, dtype=torch.long)
        mode = LiveBytes(known)
        with mode, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        with mode:
            loss.backward()
    return mode.peak / plan.MIB


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
    a = plan.architecture("bloom-560m")
    states = plan.model_states(a, dict(world_size=1, b=4 if case.get("fp32") else 2,
                                       gradient_accumulation_steps=4, zero_stage=None
                                       if case.get("amp") else 2, offload_optimizer=False, offload_param=False))
    counted = p["gpu_mib"] - p["workspace_mib"] - states["fb"] / plan.MIB  # the replay has no
    # optimizer, and its weights and gradients exist before it starts
    assert counted == pytest.approx(replayed, rel=0.02), (case, p["phase"])


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
        plan.main(args)
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
    plan.main(["bloom-7b1", *args])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 14, out  # header + 6 configurations x 2 + the fast path x 2
    assert "Recommended: " in out and "DS_CONFIG=" in out
    print(out)


def test_the_cli_runs_as_a_script():
    proc = run_cli("bloom-560m")
    assert proc.returncode == 0, proc.stderr
    assert "Recommended: fast path" in proc.stdout
