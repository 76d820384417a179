"""The "fits in 16/24/40/80 GB" table of docs/results.md, from the tables tool's CSV files:
    python tools/tables.py docs/results/h100-2026-11-24/large-models/{baseline,deepspeed-single-gpu} \
        --csv docs/results/h100-2026-11-24/large-models --no-plots
    python docs/results/h100-2026-11-24/large-models/fits.py
A run fits N GB ("yes") when its nvidia-smi peak is at most N x 1024 MiB; "alloc only" when only
PyTorch's peak allocation is (the caching allocator on the 80 GB card kept more than it needed).
"""
import json
from pathlib import Path

import pandas as pd

d = Path(__file__).parent
c = pd.read_csv(d / "comparison.csv").merge(pd.read_csv(d / "objective1.csv")[["run", "status"]], on="run")
c = c[c.status == "complete"]
c.insert(0, "model", [json.loads((d / s / "runs" / r / "run_metrics.json").read_text())["model"]
                      .replace("/tmp/arch", "bloom-") for s, r in zip(c.stage, c.run)])
for gb in (16, 24, 40, 80):
    c[f"{gb} GB"] = ["yes" if g <= gb * 1024 else "alloc only" if a <= gb * 1024 else "no"
                     for g, a in zip(c["peak GPU MiB"], c["peak alloc MiB"])]
for k in ("peak GPU MiB", "peak alloc MiB", "peak host MiB"):
    c[k] = c[k].map("{:,.0f}".format)
print(c.sort_values(["model", "ZeRO", "offload"])[
    ["model", "ZeRO", "offload", "samples/s", "peak GPU MiB", "peak alloc MiB", "peak host MiB",
     "16 GB", "24 GB", "40 GB", "80 GB"]].to_markdown(index=False, floatfmt=".1f"))
