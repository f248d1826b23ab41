"""DeepSpeed on CPU-only nodes, for tests/test_slurm_multinode.py (on PYTHONPATH there, exported to the jobs).

Python imports this at start-up. In a torchrun worker (WORLD_SIZE set) it sets the two shims that
tests/test_deepspeed.py explains; neither changes what is computed:
- accelerate chooses no distributed backend when it sees no GPU (it would count one process while
  DeepSpeed counts the world): it is made to choose gloo, as on a multi-CPU run;
- DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel (minutes of C++) at start-up:
  skipped, so the collectives are gloo's, across the nodes' network.
A site with GPUs needs neither: NCCL and accelerate's GPU path take their place.
"""

import os
import sys

if os.environ.get("WORLD_SIZE"):
    import accelerate.state
    import deepspeed.comm.torch
    from accelerate.utils import DistributedType

    # By sys.modules: the attribute `deepspeed.comm.torch` is the torch package (deepspeed.comm imports
    # torch), so assigning through it patched nothing and every rank compiled the kernel; a rank killed
    # mid-compile (this test kills one) left the compile's lock file, and the next run waited on it forever.
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    accelerate.state.PartialState._prepare_backend = lambda self, *a, **k: ("gloo", DistributedType.MULTI_CPU)
