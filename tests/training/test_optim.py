"""The fused Adam: the same updates as torch.optim.Adam, its state_dict layout, no torch._dynamo import."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from skipganomaly.training.optim import Adam


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    # No conv bias before the BatchNorm: its gradient is rounding noise, which Adam would amplify.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 2))
    twin = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 2))
    twin.load_state_dict(net.state_dict())
    return net.to(memory_format=torch.channels_last), twin.to(memory_format=torch.channels_last)


def _steps(net: nn.Module, opt: object, n: int, skip_last_layer_at: int = -1) -> None:
    torch.manual_seed(1)
    for i in range(n):
        x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        net(x).square().mean().backward()
        if i == skip_last_layer_at:  # a parameter without a gradient keeps its weights and moments
            net[-1].weight.grad = None
        opt.step()  # type: ignore[attr-defined]


@pytest.mark.parametrize("fused", [True, False])
def test_updates_equal_torch_adam(fused: bool) -> None:
    """Bit-identical to torch.optim.Adam(fused=True) (the same kernel); within float rounding of the
    default per-tensor implementation, the reference's."""
    ours_net, torch_net = _nets()
    ours = Adam(ours_net.parameters(), 1e-2, betas=(0.5, 0.999))
    theirs = torch.optim.Adam(torch_net.parameters(), 1e-2, betas=(0.5, 0.999), fused=fused)
    initial = {n: p.detach().clone() for n, p in ours_net.named_parameters()}
    _steps(ours_net, ours, 5, skip_last_layer_at=2)
    _steps(torch_net, theirs, 5, skip_last_layer_at=2)
    for (name, a), b in zip(ours_net.state_dict().items(), torch_net.state_dict().values(), strict=True):
        if fused:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    unmoved = [n for n, p in ours_net.named_parameters() if torch.equal(p, initial[n])]
    assert not unmoved, f"parameters never updated: {unmoved}"


def test_state_dict_round_trip_and_torch_layout() -> None:
    """A state saved mid-run continues exactly; a torch.optim.Adam state (older training states) loads."""
    net_a, net_b = _nets()
    opt_a = Adam(net_a.parameters(), 1e-2, betas=(0.5, 0.999))
    _steps(net_a, opt_a, 2)
    saved_net = {k: v.clone() for k, v in net_a.state_dict().items()}
    saved_opt = copy.deepcopy(opt_a.state_dict())  # like torch.optim's, it holds the live tensors
    _steps(net_a, opt_a, 2)

    net_b.load_state_dict(saved_net)
    opt_b = Adam(net_b.parameters(), 1.0)
    opt_b.load_state_dict(saved_opt)
    _steps(net_b, opt_b, 2)
    for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    torch_net, ours_net = _nets()
    theirs = torch.optim.Adam(torch_net.parameters(), 1e-2, betas=(0.5, 0.999), fused=True)
    _steps(torch_net, theirs, 2)
    ours_net.load_state_dict(torch_net.state_dict())
    ours = Adam(ours_net.parameters(), 1.0)
    ours.load_state_dict(theirs.state_dict())
    _steps(torch_net, theirs, 2)
    _steps(ours_net, ours, 2)
    for a, b in zip(torch_net.state_dict().values(), ours_net.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    with pytest.raises(ValueError, match="does not match"):
        Adam(list(net_a.parameters())[:2], 1e-2).load_state_dict(saved_opt)


def test_training_imports_neither_dynamo_nor_plotting_libraries() -> None:
    """torch._dynamo (+73 MiB), scikit-learn (+76 MiB) and matplotlib (+30 MiB) stay out of a process
    that imports the CLI and runs a training step; they load only when a report or metric needs them."""
    code = (
        "import sys, torch\n"
        "import skipganomaly.cli\n"
        "from skipganomaly.models import create\n"
        "from skipganomaly.training import TrainConfig, make_optimizers, prepare_batch, train_step\n"
        "m = create('skipganomaly++', widths=(4, 4, 4, 4, 4)).train()\n"
        "c = TrainConfig(batch_size=4, device='cpu', progress=False)\n"
        "x = prepare_batch(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.device('cpu'))\n"
        "train_step(m, x, make_optimizers(m, c), c, torch.device('cpu'))\n"
        "print(sorted(n for n in ('torch._dynamo', 'sklearn', 'matplotlib', 'scipy') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
