#!/bin/bash
# The whole test suite on the GPU machine (issue 19): the image's PyTorch, the pins carried as wheels.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
export SLAB_INSTALL=0   # no package registry there: the SLURM tests skip instead of trying apt-get
export OMP_NUM_THREADS=2  # 8 pytest workers on 16 cores
{ date -u; echo "commit $1"; nproc; free -g | head -2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys,torch,transformers,tokenizers,deepspeed,datasets,accelerate,pytest,xdist
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'deepspeed', deepspeed.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__, 'pytest', pytest.__version__, 'xdist', xdist.__version__)"
} 2>&1 | tee $OUT/env.txt
start=$(date +%s)
timeout 560 python3 -m pytest -q -n 8 --durations=30 -p no:cacheprovider tests 2>&1 | tee $OUT/pytest.log
rc=${PIPESTATUS[0]}
echo "pytest exit $rc after $(( $(date +%s) - start )) s" | tee -a $OUT/pytest.log
exit $rc
