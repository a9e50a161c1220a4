"""Small Brevitas networks built and exported to QONNX in the tests (seeded, no downloads).

Batch norms get seeded random statistics and affine parameters, as a trained network has, so
no activation quantizer sees an input that is a float round-off away from a decision point
(a bipolar quantizer right after an exact-integer conv would see exact zeros, where float
executors' round-off picks a sign at random).
"""

import numpy as np
import torch
from torch import nn

import brevitas.nn as qnn
from brevitas import quant
from brevitas.export import export_qonnx

BINARY_ACT = dict(act_quant=quant.SignedBinaryActPerTensorConst, return_quant_tensor=True)
BINARY_WEIGHT = dict(weight_quant=quant.SignedBinaryWeightPerTensorConst)


def per_channel(bits: int) -> dict:
    return dict(weight_quant=quant.Int8WeightPerChannelFloat, weight_bit_width=bits)


def mixed_cnn(seed: int = 0) -> nn.Sequential:
    """4-bit input → 4×4-bit conv (per-channel) → BN → 2-bit ReLU → 2×2-bit conv (per-channel,
    stride 2) → BN → binary → binary conv → BN → binary → MaxPool → binary Linear (with bias)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(3, 16, 3, padding=1, bias=False, **per_channel(4)),
        nn.BatchNorm2d(16),
        qnn.QuantReLU(bit_width=2, return_quant_tensor=True),
        qnn.QuantConv2d(16, 32, 3, stride=2, padding=1, bias=False, **per_channel(2)),
        nn.BatchNorm2d(32),
        qnn.QuantIdentity(**BINARY_ACT),
        qnn.QuantConv2d(32, 32, 3, padding=1, bias=False, **BINARY_WEIGHT),
        nn.BatchNorm2d(32),
        qnn.QuantIdentity(**BINARY_ACT),
        nn.MaxPool2d(2),
        nn.Flatten(),
        qnn.QuantLinear(32 * 2 * 2, 10, bias=True, **BINARY_WEIGHT),
    )
    return _settle(net, torch.randn(8, 3, 8, 8))


def partly_lowerable_cnn(seed: int = 0) -> nn.Sequential:
    """A depthwise (grouped) 4-bit conv and a linear fed by a 16-bit activation: two layers that
    stay float, around three that lower (a conv fed by Brevitas' shifted uint8, which has a zero
    point; a 4×4-bit conv; a 2×2-bit linear)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(3, 3, 3, padding=1, groups=3, bias=False, **per_channel(4)),
        nn.BatchNorm2d(3),
        qnn.QuantIdentity(act_quant=quant.ShiftedUint8ActPerTensorFloat, return_quant_tensor=True),
        qnn.QuantConv2d(3, 8, 3, bias=False, **per_channel(4)),
        nn.BatchNorm2d(8),
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(8, 8, 3, bias=False, **per_channel(4)),
        nn.BatchNorm2d(8),
        qnn.QuantIdentity(bit_width=16, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(8 * 4 * 4, 16, bias=False, **per_channel(2)),
        qnn.QuantIdentity(bit_width=2, return_quant_tensor=True),
        qnn.QuantLinear(16, 10, bias=False, **per_channel(2)),
    )
    return _settle(net, torch.randn(8, 3, 8, 8))


def trunc_pool_cnn(seed: int = 0) -> nn.Sequential:
    """4×4-bit conv → BN → 4-bit ReLU → TruncAvgPool2d (exported as AveragePool + QONNX Trunc
    v2) → 4×4-bit conv that reads the Trunc's output."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(3, 8, 3, padding=1, bias=False, **per_channel(4)),
        nn.BatchNorm2d(8),
        qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
        qnn.TruncAvgPool2d(kernel_size=2, stride=2, bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(8, 8, 3, bias=False, **per_channel(4)),
    )
    return _settle(net, torch.randn(8, 3, 8, 8))


def _settle(net: nn.Sequential, calibration: torch.Tensor) -> nn.Sequential:
    """Random BN statistics and affine parameters, activation scales set by a few forward
    passes in training mode (Brevitas' running statistics), then eval mode."""
    generator = torch.Generator().manual_seed(1)
    for module in net:
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = torch.randn(n, generator=generator) * 0.3
            module.running_mean.data = torch.randn(n, generator=generator) * 0.3
            module.running_var.data = torch.rand(n, generator=generator) + 0.5
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(calibration)
    for module in net:  # keep the random statistics, not the ones the passes just took
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            n = module.num_features
            module.running_mean.data = torch.randn(n, generator=generator) * 0.3
            module.running_var.data = torch.rand(n, generator=generator) + 0.5
    return net.eval()


def export(net: nn.Module, shape: tuple[int, ...], path) -> None:
    """Brevitas' QONNX export of `net` for an input of `shape` (input name 'input')."""
    export_qonnx(net, torch.zeros(shape), str(path), input_names=["input"])


def forward(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """Brevitas' PyTorch forward, float32 numpy out."""
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    return (out.value if hasattr(out, "value") else out).numpy()
