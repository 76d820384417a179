"""workshop/fast_path.py computes what stock (eager) BLOOM computes: on CPU, fp32, a tiny model.

Relative errors are max|fast - stock| / max|stock| over the compared values; `pytest -s`
prints each one measured.
"""
import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM, Trainer, TrainingArguments
from transformers import default_data_collator

from workshop import fast_path
from workshop.fast_path import enable_fast_path

VOCAB, PAD, CHUNK = 1000, 0, 16  # chunks of 16 targets: several per batch, the last one partial


def tiny_bloom():
    torch.manual_seed(0)
    config = BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4,
                         pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    return BloomForCausalLM(config)


def stock_and_fast():
    stock = tiny_bloom()
    return stock, enable_fast_path(copy.deepcopy(stock), chunk_size=CHUNK)


def random_batch(seed, batch_size=4, length=24, padding_side="right"):
    """Random tokens padded to `length` (row 0 unpadded); labels -100 on padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    lengths = torch.randint(length // 4, length, (batch_size,), generator=generator)
    lengths[0] = length
    attention_mask = (torch.arange(length) < lengths[:, None]).long()
    if padding_side == "left":
        attention_mask = attention_mask.flip(1)
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def rel_err(fast, stock):
    return ((fast - stock).abs().max() / stock.abs().max()).item()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sdpa_attention_matches_eager(seed, monkeypatch):
    """Without labels and without a key/value cache (a call with a cache takes the stock
    attention), every block's attention runs through SDPA, counted, and matches eager."""
    stock, fast = stock_and_fast()
    batch = random_batch(seed)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    tokens = batch["attention_mask"].bool()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        want = stock(**inputs, output_hidden_states=True)
        got = fast(**inputs, output_hidden_states=True)  # no labels: stock head, SDPA attention
        assert len(calls) == fast.config.n_layer, calls  # SDPA ran in every block
        errors = [rel_err(g[tokens], w[tokens]) for g, w in zip(got.hidden_states, want.hidden_states)]
        errors.append(rel_err(got.logits[tokens], want.logits[tokens]))
        # asking for the attention probabilities falls back to eager attention
        probabilities = zip(fast(**inputs, output_attentions=True).attentions,
                            stock(**inputs, output_attentions=True).attentions)
    print(f"SDPA vs eager, hidden states and logits: max rel err {max(errors):.2e}")
    assert max(errors) < 1e-5
    assert all(torch.equal(g, w) for g, w in probabilities)
    assert len(calls) == fast.config.n_layer  # not one more: eager attention there


def loss_and_gradient_errors(stock, fast, batch):
    """(loss, largest gradient) relative errors of the fast path's training step against the
    stock model's, on one batch; the fast path returns no logits."""
    want, got = stock(**batch), fast(**batch)
    assert got.logits is None
    want.loss.backward()
    got.loss.backward()
    return (rel_err(got.loss, want.loss),
            max(rel_err(g.grad, w.grad) for w, g in zip(stock.parameters(), fast.parameters())))


@pytest.mark.parametrize("num_items", [None, "exact", "accumulated"])
def test_loss_and_gradients_match_stock(num_items):
    stock, fast = stock_and_fast()
    batch = random_batch(10 + len(str(num_items)))
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert targets > 3 * CHUNK
    if num_items is not None:  # the Trainer's count over all micro-batches of an optimizer step
        batch["num_items_in_batch"] = torch.tensor(targets + (57 if num_items == "accumulated" else 0))
    loss_err, grad_err = loss_and_gradient_errors(stock, fast, batch)
    print(f"loss ({num_items}) rel err {loss_err:.2e}, gradients max rel err {grad_err:.2e}")
    assert loss_err < 1e-6
    assert grad_err < 1e-5


def test_backward_keeps_no_logits():
    """What the forward saves for the backward: stock keeps (tokens, vocabulary) fp32
    log-probabilities, the fast path nothing of the vocabulary's size."""
    def saved_shapes(model):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t,
                                                      lambda t: t):
            model(**random_batch(15))
        return shapes
    stock, fast = stock_and_fast()
    assert any(VOCAB in shape for shape in saved_shapes(stock))
    assert not any(VOCAB in shape for shape in saved_shapes(fast))


def test_micro_batch_without_targets():
    """A micro-batch whose labels are all -100 (answers cut off): 0 and zero gradients with
    num_items_in_batch, nan without, as stock."""
    stock, fast = stock_and_fast()
    batch = random_batch(20)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    for model in (stock, fast):
        loss = model(**batch, num_items_in_batch=torch.tensor(5)).loss
        loss.backward()
        assert loss.item() == 0 and all(not p.grad.any() for p in model.parameters())
        assert model(**batch).loss.isnan()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_greedy_generation_with_kv_cache_matches(padding_side):
    stock, fast = stock_and_fast()
    batch = random_batch(30, length=12, padding_side=padding_side)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  max_new_tokens=16, do_sample=False, use_cache=True)
    want, got = stock.generate(**inputs), fast.generate(**inputs)
    assert want.shape[1] == 12 + 16
    assert torch.equal(got, want)


def train_and_evaluate(model, output_dir):
    """Two optimizer steps of 2 micro-batches of 2 sequences, then one evaluation."""
    data = [{k: v[i % 4] for k, v in random_batch(40 + i // 4).items()} for i in range(8)]
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=2,
                             per_device_eval_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=2, logging_steps=1, learning_rate=1e-3, use_cpu=True,
                             report_to="none", save_strategy="no", seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:4],
                      data_collator=default_data_collator)
    assert trainer.model_accepts_loss_kwargs  # so the Trainer passes num_items_in_batch
    trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return (torch.tensor([[e["loss"], e["grad_norm"]] for e in logs] + [[eval_loss, 0.0]]),
            torch.cat([p.detach().flatten() for p in model.parameters()]))


def test_trainer_run_matches(tmp_path):
    stock, fast = stock_and_fast()
    want_logs, want_weights = train_and_evaluate(stock, tmp_path / "stock")
    got_logs, got_weights = train_and_evaluate(fast, tmp_path / "fast")
    assert len(want_logs) == 3
    losses_err = rel_err(got_logs[:, 0], want_logs[:, 0])
    errors = [losses_err, rel_err(got_logs[:2, 1], want_logs[:2, 1]),
              rel_err(got_weights, want_weights)]
    print(f"Trainer: losses (2 train, 1 eval) rel err {errors[0]:.2e}, grad norms "
          f"{errors[1]:.2e}, weights after training {errors[2]:.2e}")
    assert max(errors) < 1e-5


@pytest.mark.parametrize("mode", ["bf16 weights", "bf16 autocast"])
def test_bf16(mode):
    """bf16 runs: loss close to fp32 stock's, gradients close to bf16 stock's."""
    stock, fast = stock_and_fast()
    batch = random_batch(50)
    fp32_loss = copy.deepcopy(stock)(**batch).loss
    if mode == "bf16 weights":  # as DeepSpeed's bf16 runs the model
        want, got = stock.to(torch.bfloat16)(**batch).loss, fast.to(torch.bfloat16)(**batch).loss
    else:  # as the Trainer's bf16=True without DeepSpeed
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = stock(**batch).loss, fast(**batch).loss
    want.backward()
    got.backward()
    assert got.dtype == torch.float32 and got.isfinite()
    loss_err = rel_err(got, fp32_loss)
    grad_err = max(rel_err(g.grad.float(), w.grad.float())
                   for w, g in zip(stock.parameters(), fast.parameters()))
    print(f"{mode}: loss rel err to fp32 stock {loss_err:.2e} (bf16 stock's {rel_err(want, fp32_loss):.2e}), "
          f"gradients max rel err to bf16 stock {grad_err:.2e}")
    assert loss_err < 2e-2
    assert grad_err < 5e-2


ZERO3_SCRIPT = r"""
import copy, os, sys
import torch
import deepspeed
from test_fast_path import enable_fast_path, random_batch, tiny_bloom
from workshop.build_ops import environment_tools
from workshop.compile_cache import use_compile_caches

use_compile_caches()  # DeepSpeed's CPU ops where the jobs load them from (make setup built them)
environment_tools()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", LOCAL_RANK="0",
                  WORLD_SIZE="1")
deepspeed.init_distributed(dist_backend="gloo")
config = {"train_micro_batch_size_per_gpu": 4, "zero_allow_untested_optimizer": True,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "optimizer": {"type": "SGD", "params": {"lr": 0.5}}}
stock = tiny_bloom()
runs = {}
for name, model in (("stock", stock), ("fast", copy.deepcopy(stock))):
    engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
    if name == "fast":
        assert model.lm_head.weight.numel() == 0  # partitioned: patched with no full weight
        enable_fast_path(model, chunk_size=16)
    losses = []
    for step in range(3):
        batch = random_batch(60 + step)
        if step == 1:
            batch["num_items_in_batch"] = torch.tensor(100)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    prompt = random_batch(63, length=12, padding_side="left")
    tokens = model.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
                            max_new_tokens=8, do_sample=False)
    runs[name] = torch.tensor(losses), tokens
err = ((runs["fast"][0] - runs["stock"][0]).abs().max() / runs["stock"][0].abs().max()).item()
print(f"ZeRO-3: 3 steps' losses rel err {err:.2e}")
assert err < 1e-5, runs
assert torch.equal(runs["fast"][1], runs["stock"][1]), runs
"""


def test_deepspeed_zero3(tmp_path):
    """Patched after ZeRO-3 partitioned the weights: same losses and generated tokens."""
    pytest.importorskip("deepspeed")
    with socket.socket() as s:  # a free port for the (one-process) process group
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    # the tests' folder first, then the caller's PYTHONPATH (packages installed there, as on the GPU machine)
    pythonpath = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT, port], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": pythonpath})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout.strip().splitlines()[-1])


def test_compiled_blocks_match_the_eager_fast_path():
    """compile_blocks (inductor on CPU: the same fusions, no CUDA graphs): training losses and
    gradients equal the eager fast path's to rounding; the blocks share one graph per input
    shape, a shape seen before compiles nothing, and no-grad work stays eager (generation;
    evaluation, but for its loss, compiled once more without gradients)."""
    counters = torch._dynamo.utils.counters["frames"]
    torch._dynamo.reset()
    _, eager = stock_and_fast()
    compiled = fast_path.compile_blocks(copy.deepcopy(eager))
    compiled_per_step, errors = [], []
    for step, length in enumerate([64, 64, 128]):  # a new shape, the same again, another
        batch = random_batch(70 + step, length=length)
        before = counters["total"]
        got = compiled(**batch).loss
        got.backward()
        compiled_per_step.append(counters["total"] - before)
        want = eager(**batch).loss
        want.backward()
        errors.append(max([rel_err(got, want)] + [rel_err(c.grad, e.grad) for c, e in
                                                  zip(compiled.parameters(), eager.parameters())]))
        compiled.zero_grad()
        eager.zero_grad()
    print(f"compiled blocks: losses and gradients max rel err {max(errors):.2e}, "
          f"frames compiled per step {compiled_per_step}")
    assert max(errors) < 1e-5
    assert compiled_per_step == [2, 0, 1]  # block + loss; nothing; the block at a new length
    before = counters["total"]
    prompt = random_batch(73, length=12, padding_side="left")
    tokens = compiled.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
                               max_new_tokens=8, do_sample=False)
    assert counters["total"] == before
    compiled.eval()
    with torch.no_grad():
        for length in (64, 128, 192):
            compiled(**random_batch(74, length=length))
    assert counters["total"] == before + 1
    assert torch.equal(tokens, eager.generate(input_ids=prompt["input_ids"],
                                              attention_mask=prompt["attention_mask"],
                                              max_new_tokens=8, do_sample=False))
