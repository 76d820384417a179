"""Models other than BLOOM, as participants bring them: a tiny model of each family
(tools/make_tiny.py FAMILIES) through the fast path against its stock model, the memory plan,
train.py and the tables tool. CPU, fp32, offline."""
import copy
import json
import sys

import pytest
import torch

from conftest import ROOT, in_process, made_once, run_stage, tiny_args
from test_fast_path import loss_and_gradient_errors, random_batch
from test_tables import tool

from workshop import memory_plan
from workshop.fast_path import FAMILIES as FAST_PATH_FAMILIES
from workshop.fast_path import enable_fast_path
from workshop.step_trace import traced_step

sys.path.insert(0, str(ROOT / "tools"))
from make_tiny import FAMILIES, tiny_model  # noqa: E402

OTHERS = [f for f in FAMILIES if f != "bloom"]


@pytest.fixture(scope="session")
def family_models(tiny, shared):
    """family -> a folder with its tiny model and the tiny BLOOM's tokenizer, made once."""
    out = shared / "families"
    with made_once(out) as first:
        if first:
            for family in OTHERS:
                torch.manual_seed(0)
                folder = out / family
                tiny_model(family).save_pretrained(folder)
                for file in (tiny / "model").glob("*.json"):
                    if file.name != "config.json":
                        (folder / file.name).write_bytes(file.read_bytes())
    return {family: out / family for family in OTHERS}


@pytest.mark.parametrize("family", OTHERS)
def test_the_fast_paths_loss_and_gradients_are_the_models_own(family):
    """The chunked loss through the model's own body and output layer (and Gemma 2's softcap),
    by chunks of 16 labelled positions, gives the stock model's loss and gradients; without
    labels the stock forward answers (generation)."""
    torch.manual_seed(0)
    stock = tiny_model(family).eval()  # no dropout (GPT-2's and OPT's): the same numbers
    fast = enable_fast_path(copy.deepcopy(stock), chunk_size=16)
    assert fast.config._attn_implementation == ("eager" if family == "gemma2" else "sdpa")
    batch = random_batch(11)
    batch["input_ids"] = batch["input_ids"] % stock.config.vocab_size
    batch["labels"] = batch["labels"].where(batch["labels"] < 0, batch["input_ids"])
    loss_err, grad_err = loss_and_gradient_errors(stock, fast, batch)
    print(f"{family}: loss rel err {loss_err:.1e}, gradients {grad_err:.1e}")
    assert loss_err < 1e-5 and grad_err < 1e-4
    with torch.no_grad():
        inputs = dict(input_ids=batch["input_ids"][:2, :8], max_new_tokens=4, do_sample=False)
        assert torch.equal(fast.generate(**inputs), stock.generate(**inputs))


def test_every_family_the_fast_path_takes_is_tested():
    assert set(OTHERS) <= set(FAST_PATH_FAMILIES)


@pytest.mark.parametrize("family", OTHERS)
def test_the_plan_traces_each_family(family, family_models):
    """The plan reads each family's config, replays its step on fake tensors, and scales: the
    activations grow by the same bytes with each sequence of a batch (autocast's weight copies
    stay); gradient checkpointing keeps less."""
    one, two, four = (traced_step(memory_plan.architecture(family_models[family]).config, batch, 64)
                      for batch in (1, 2, 4))
    assert four.activations - one.activations == 3 * (two.activations - one.activations) > 0
    p = memory_plan.predict(family_models[family], max_length=64)
    checkpointed = memory_plan.predict(family_models[family], max_length=64, gradient_checkpointing=True)
    assert 0 < checkpointed["activations_mib"] < p["activations_mib"]
    assert p["parameters"] == sum(x.numel() for x in tiny_model(family).parameters())


@pytest.fixture(scope="session")
def family_runs(family_models, tiny, shared):
    """family -> its run folder: baseline/train.py with the fast path (every family) and with
    the workshop's settings (llama), in this process, 2 epochs of 32 rows."""
    out = shared / "family-runs"
    runs = {f: out / f for f in OTHERS} | {"llama-workshop": out / "llama-workshop"}
    with made_once(out) as first:
        if first:
            for name, folder in runs.items():
                family = name.split("-")[0]
                args = tiny_args(tiny, model_name_or_path=family_models[family], output_dir=folder,
                                 fast_path=name == family)
                code, stdout, stderr = in_process(args)
                (folder.parent / f"{name}.log").write_text(stdout + stderr)
    return runs


@pytest.mark.parametrize("family", OTHERS)
def test_train_py_trains_each_family(family, family_runs):
    log = (family_runs[family].parent / f"{family}.log").read_text()
    metrics = json.loads((family_runs[family] / "run_metrics.json").read_text())
    assert metrics["status"] == "complete", log[-2000:]
    losses = [e["eval_loss"] for e in metrics["epochs"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert metrics["architecture"]["model_type"] == FAMILIES[family]["model_type"]
    # what the run records rebuilds its model: the plan and the tables need no model folder
    rebuilt = memory_plan.architecture(metrics["architecture"])
    assert rebuilt.params == metrics["parameters"]


DEEPSPEED_RUNS = {  # name: (stage whose train.py runs, ranks, family, DeepSpeed config)
    "llama-zero3-2ranks": ("deepspeed-multi-gpu", 2, "llama", "ds_zero3.json"),
    "gemma2-zero2-offload": ("deepspeed-multi-node", 1, "gemma2", "ds_zero2_offload.json"),
}


@pytest.fixture(scope="session")
def family_deepspeed_runs(family_models, tiny, shared):
    """name -> (run folder, completed process) of DEEPSPEED_RUNS, through the deepspeed launcher
    (gloo on the CPU), 2 epochs of 32 rows, made once."""
    made = {}
    for name, (stage, ranks, family, config) in DEEPSPEED_RUNS.items():
        out = shared / "family-deepspeed-runs" / name
        log = out.with_name(f"{name}.json")
        with made_once(out) as first:
            if first:
                proc = run_stage(stage, tiny, out, ranks, ["--deepspeed", config],
                                 model_name_or_path=family_models[family])
                log.write_text(json.dumps(dict(returncode=proc.returncode, stdout=proc.stdout,
                                               stderr=proc.stderr)))
        made[name] = out, json.loads(log.read_text())
    return made


@pytest.mark.parametrize("name", DEEPSPEED_RUNS)
def test_the_deepspeed_stages_train_other_families(name, family_deepspeed_runs):
    """The DeepSpeed stages' train.py (the same file in each) with other families: ZeRO-3 at two
    ranks (the weights partitioned as the model is built), ZeRO-2 with the optimizer offloaded."""
    out, proc = family_deepspeed_runs[name]
    assert proc["returncode"] == 0, proc["stdout"][-2000:] + proc["stderr"][-3000:]
    metrics = json.loads((out / "run_metrics.json").read_text())
    stage, ranks, family, config = DEEPSPEED_RUNS[name]
    assert metrics["status"] == "complete" and metrics["world_size"] == ranks
    assert metrics["zero_stage"] == int(config[7]) and metrics["stage"] == stage
    assert metrics["parameters"] == sum(x.numel() for x in tiny_model(family).parameters())
    losses = [e["eval_loss"] for e in metrics["epochs"]]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_the_tables_read_other_families(family_runs):
    """Every family's run in the tables, the plan's prediction beside each."""
    proc = tool(*family_runs.values(), "--no-plots", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    comparison = proc.stdout.split("## Comparison")[1].split("\n## ")[0]
    rows = [line for line in comparison.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(family_runs), comparison
    assert "plan" in comparison.splitlines()[2] or "plan" in comparison, comparison
