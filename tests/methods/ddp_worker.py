"""Run by tests/methods/test_distributed.py under torchrun: train the tiny TarFlow and BiFlow of
the tests with DistributedDataParallel, then save what rank 0 holds."""

import sys

import torch

from methods import dist
from tests.methods.test_distributed import train_both

if __name__ == "__main__":
    dist.init(torch.device("cpu"))
    result = train_both()
    if dist.is_main():
        torch.save(result, sys.argv[1])
    dist.shutdown()
