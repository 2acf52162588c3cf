"""Writes the golden fixtures kdna adds to the reference set, from the PyTorch reference
(kdna_ref.py), in the same format (see tests/golden.rs `check_block`):

    <state_dict key>        every parameter and buffer of the module, PyTorch layout
    input, grad_output      x and the upstream gradient g
    output.eval             eval mode, with the running statistics stored above
    output.train            train mode (batch statistics)
    grad.input, grad.<key>  d(sum(output.train * g)) / d input and / d each parameter
    running_after.<key>     BatchNorm running statistics after the train-mode forward

    python3 -m venv .venv && .venv/bin/pip install torch torchvision safetensors
    .venv/bin/python scripts/gen_fixtures.py tests/fixtures

resnet18_stage_wide: ResNet18's KernelDNA stage at 32 planes on 3x3 maps (batch 4), where a child's
weight gradient is one chunk that fills whole tiles of output channels, so kdna's training plan
leaves it unreduced for the modulation to read (src/graph/fuse.rs).
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import kdna_ref as R


def randomize(module, gen):
    """Every parameter and buffer moved off its initial value, so that every path carries signal."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "attn" in name or name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:  # BatchNorm weight
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(p * (1 + 0.1 * torch.randn(p.shape, generator=gen)))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def block_fixture(module, x, gen):
    """The fixture of `module` at `x`, computed in float64 from float32 values and stored as
    float32, so that it holds the exact values rather than one float32 run's (a router's
    train-mode BatchNorm over few samples amplifies float32 rounding: at a batch of two a
    float32 run strays 2e-4 from them, more than the tests allow; at four, 6e-6)."""
    randomize(module, gen)
    out = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    module.double()
    x = x.double()
    module.eval()
    with torch.no_grad():
        out["output.eval"] = module(x).contiguous()
    module.train()
    x = x.clone().requires_grad_(True)
    y = module(x)
    g = torch.randn(y.shape, generator=gen).double()
    (y * g).sum().backward()
    out["input"] = x.detach().contiguous()
    out["grad_output"] = g
    out["output.train"] = y.detach().contiguous()
    out["grad.input"] = x.grad.contiguous()
    for k, p in module.named_parameters():
        out[f"grad.{k}"] = p.grad.contiguous()
    for k, b in module.named_buffers():
        if "running" in k:
            out[f"running_after.{k}"] = b.detach().clone().contiguous()
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


def main(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20261127)
    torch.manual_seed(20261127)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
    fixtures = {
        "resnet18_stage_wide": block_fixture(
            R.ResNet18Stage(16, 32, 2, downsample), torch.randn(4, 16, 6, 6, generator=gen), gen
        ),
    }
    for name, tensors in fixtures.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / f"{name}.safetensors"))
        print(name, len(tensors), "tensors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
