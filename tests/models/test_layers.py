"""Shared layers: the strided 1x1 convolution that avoids oneDNN's broken kernel (models/layers.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from skipganomaly.models import create, list_models
from skipganomaly.models.layers import PointwiseConv

# Weight gradients of a strided PointwiseConv on channels-last float32 inputs against a float64 reference.
# Run in a child process: the kernel it avoids hangs (2 threads) or corrupts the heap (1 thread) on an
# AVX2 CPU with fewer than 8 input channels, which must fail this test, not stop the test run.
_GRADIENT_CHECK = """
import sys, torch
from skipganomaly.models.layers import PointwiseConv
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
worst = 0.0
for cin in (1, 3, 4, 8, 16):
    ref = PointwiseConv(cin, 8, 2).double()
    x = torch.randn(32, cin, 32, 32, dtype=torch.double)
    torch.nn.functional.conv2d(x, ref.weight, ref.bias, stride=2).square().sum().backward()
    conv = PointwiseConv(cin, 8, 2)
    conv.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    conv = conv.to(memory_format=torch.channels_last)
    conv(x.float().contiguous(memory_format=torch.channels_last)).square().sum().backward()
    for a, b in ((conv.weight.grad, ref.weight.grad), (conv.bias.grad, ref.bias.grad)):
        worst = max(worst, float((a.double() - b).abs().max() / b.abs().max()))
print(worst)
"""


def test_pointwise_conv_is_a_strided_1x1_conv() -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, 1, 2).double()
    ours = PointwiseConv(4, 6, 2).double()
    assert ours.state_dict().keys() == plain.state_dict().keys()
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 9, 8, dtype=torch.double)  # an odd size: the subsampling keeps ceil(9 / 2) rows
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=1e-12)
    unstrided = PointwiseConv(4, 6, bias=False).double()
    torch.testing.assert_close(unstrided(x), nn.functional.conv2d(x, unstrided.weight))


@pytest.mark.parametrize("threads", [1, 2])
def test_strided_pointwise_conv_weight_gradients_are_right_in_channels_last(threads: int) -> None:
    result = subprocess.run([sys.executable, "-c", _GRADIENT_CHECK, str(threads)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) < 1e-5


@pytest.mark.parametrize("name", list_models())
def test_no_model_has_a_plain_strided_1x1_conv(name: str) -> None:
    """Every strided 1x1 convolution of every registered model is a PointwiseConv, whatever its widths."""
    for channels in (1, 3):
        model = create(name, in_channels=channels, image_size=32)
        plain = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not isinstance(m, PointwiseConv)
                 and m.kernel_size == (1, 1) and m.stride != (1, 1)]
        assert not plain, f"{name}: {plain} would use oneDNN's strided 1x1 backward-weights kernel"
