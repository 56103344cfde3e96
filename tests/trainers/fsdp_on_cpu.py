"""`python -m harness.trainers` for an FSDP accelerate config on CPUs (tests only).

accelerate turns its FSDP plugin on only when the process group is a GPU one; FSDP2 itself runs on CPUs with
gloo. So the CPU process group is created first and labelled as a GPU one; everything after is the real trainer.
"""

import runpy
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

if __name__ == "__main__":
    state = PartialState(cpu=True)
    state.distributed_type = DistributedType.MULTI_GPU
    state.device = torch.device("cpu")
    sys.argv[0] = "harness.trainers"
    runpy.run_module("harness.trainers", run_name="__main__", alter_sys=True)
