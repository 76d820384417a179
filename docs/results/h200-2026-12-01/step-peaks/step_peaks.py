"""Peak GPU memory of each optimizer step of bloom-7b1's eager fast path without DeepSpeed, with
each step's length chosen: which moment makes a run's peak (tools/plan.py, "the first step").

Run on the device tool's nvidia-h200 on 2026-12-01 as `python3 - <<'EOF' ... EOF` from the
repository root at 41edede (baseline/fast_path.py as on this branch), with the image's torch
2.11.0+cu130 and transformers 5.17.0; the code below is what ran, this docstring added;
step_peaks.json is what it printed last. What the Trainer does for `--fast_path True
--compile_blocks False --bf16 True` on one GPU, by hand: the fp32 model built on the GPU
(random weights), SDPA attention and the chunked loss, the forward under autocast(bf16), fused
AdamW (its moments made by the first step), clipping at 1.0, zero_grad(set_to_none=True);
batches of 16 x L tokens, all labelled, L = 432 (the committed run's first and longest batch),
272 (its second), 432 (what a second epoch meets first), 272.
"""
import json,sys,time,torch,transformers
sys.path.insert(0,"baseline")
from fast_path import enable_fast_path
from transformers import AutoModelForCausalLM,BloomConfig
M=2**20;torch.manual_seed(42)
with torch.device("cuda"):
 m=AutoModelForCausalLM.from_config(BloomConfig(vocab_size=250880,hidden_size=4096,n_layer=30,n_head=32),dtype=torch.float32)
m.train();enable_fast_path(m)
o=torch.optim.AdamW(m.parameters(),lr=5e-5,weight_decay=0.01,fused=True)
r=dict(torch=torch.__version__,tf=transformers.__version__,total=torch.cuda.get_device_properties(0).total_memory/M,built=torch.cuda.memory_allocated()/M,steps=[])
for s,L in enumerate([432,272,432,272],1):
 torch.cuda.reset_peak_memory_stats();i=torch.randint(0,250880,(16,L),device="cuda");t=time.time();e=None
 try:
  with torch.autocast("cuda",dtype=torch.bfloat16):
   l=m(input_ids=i,attention_mask=torch.ones_like(i),labels=i).loss
  l.backward();torch.nn.utils.clip_grad_norm_(m.parameters(),1.0);o.step();o.zero_grad(set_to_none=True)
 except torch.OutOfMemoryError as x:
  e=str(x)[:400]
 torch.cuda.synchronize()
 r["steps"].append(dict(step=s,tokens=L,peak=torch.cuda.max_memory_allocated()/M,reserved=torch.cuda.max_memory_reserved()/M,s=time.time()-t,error=e));print(r["steps"][-1],flush=True)
 if e:break
print(json.dumps(r))
