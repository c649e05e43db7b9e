"""Devices the numerics tests run on: always the CPU, and CUDA where the machine has it."""

import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
