"""Pins the implementation to /work/shared/docs/reference-spec.md.

1. The reference hyperparameters (spec sections B and C): loss and score weights, the optimiser
   settings the training loop really uses, the Detector's defaults and the DCGAN weight init.
2. An independent, purely functional Skip-GANomaly++ generator written from the text of spec
   section A, run on the weights of a real model and compared with `model.generator(x)`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipganomaly.detector import Detector, setting_defaults
from skipganomaly.models import create
from skipganomaly.training.loop import TrainConfig, make_optimizers

SMALL_WIDTHS = [8, 8, 16, 16, 32]


# --------------------------------------------------------------------------------------------
# 1. Hyperparameters (spec sections B and C)
# --------------------------------------------------------------------------------------------


def test_spec_hyperparameters_are_pinned() -> None:
    """Loss weights, score weight, D geometry, TrainConfig and Detector defaults (spec B, C, D)."""
    model = create("skipganomaly++", widths=SMALL_WIDTHS)
    # Section C: w_adv=1 (BCE), w_con=50 (L1), w_lat=1 (MSE); section D: s = 0.9 rec + 0.1 lat.
    assert (model.w_adv, model.w_con, model.w_lat) == (1.0, 50.0, 1.0)
    assert model.score_weight == 0.9
    cfg = model.config()
    assert (cfg["w_adv"], cfg["w_con"], cfg["w_lat"], cfg["score_weight"]) == (1.0, 50.0, 1.0, 0.9)
    # Section B: ndf=64, nz=100. Section C: noise off by default; the reference detaches the latent loss.
    assert (model.ndf, model.nz) == (64, 100)
    assert model.noise_sigma == 0.0
    assert type(model).reference_options() == {"detach_latent": True}

    # The weights are not only stored but used: L_G = 1*adv + 50*con + 1*lat, and the score is
    # 0.9 * image MSE + 0.1 * feature MSE (both recomputed here from G and D).
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    model.train()
    step = model.generator_loss(x)
    logs = step.logs
    expected = 1.0 * logs["g_adv"] + 50.0 * logs["g_con"] + 1.0 * logs["g_lat"]
    assert torch.allclose(step.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        fake = model.generator(x)
        _, f_real = model.discriminator.classify(x)
        _, f_fake = model.discriminator.classify(fake)
        rec = (x - fake).pow(2).flatten(1).mean(1)
        lat = (f_real - f_fake).pow(2).flatten(1).mean(1)
        assert torch.allclose(model.score(x), 0.9 * rec + 0.1 * lat, rtol=1e-5, atol=1e-7)


def test_spec_train_config_and_optimisers_are_pinned() -> None:
    """TrainConfig defaults and the Adam settings `make_optimizers` really applies (spec C)."""
    config = TrainConfig()
    assert config.lr == 2e-4
    assert (config.beta1, config.beta2) == (0.5, 0.999)
    assert config.batch_size == 64
    assert config.epochs == 15
    assert config.d_reset_threshold == 1e-5

    model = create("skipganomaly++", widths=SMALL_WIDTHS)
    opts = make_optimizers(model, config)
    for opt, params in ((opts["generator"], model.generator_parameters()), (opts["discriminator"], model.discriminator_parameters())):
        groups = opt.state_dict()["param_groups"]
        assert len(groups) == 1
        group = groups[0]
        assert group["lr"] == 2e-4
        assert tuple(group["betas"]) == (0.5, 0.999)
        assert group["weight_decay"] == 0.0
        assert len(group["params"]) == len(params)

    # Behaviour, not only the stored numbers: two Adam steps on G with given gradients must move the
    # weights exactly as Adam(lr=2e-4, betas=(0.5, 0.999), eps=1e-8) does (hand-written here).
    params = model.generator_parameters()
    start = [p.detach().clone() for p in params]
    torch.manual_seed(1)
    grads = [[torch.randn_like(p) for p in params] for _ in range(2)]
    for g_step in grads:
        for p, g in zip(params, g_step):
            p.grad = g.clone()
        opts["generator"].step()
    lr, b1, b2, eps = 2e-4, 0.5, 0.999, 1e-8
    for p, p0, g1, g2 in zip(params, start, grads[0], grads[1]):
        m = v = torch.zeros_like(p0)
        w = p0.clone()
        for t, g in ((1, g1), (2, g2)):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            w = w - lr * m_hat / (v_hat.sqrt() + eps)
        assert torch.allclose(p.detach(), w, rtol=0, atol=1e-7)


def test_spec_detector_defaults_are_pinned() -> None:
    """The public Detector trains with the reference recipe by default (spec C: batch 64, lr 2e-4, 15 epochs);
    its default model is the one chosen on the validate protocol (README), not the paper's."""
    defaults = setting_defaults()
    assert defaults["model"] == "rotation"
    assert defaults["batch_size"] == 64
    assert defaults["lr"] == 2e-4
    assert defaults["epochs"] == 15
    detector = Detector(device="cpu", progress=False)
    cfg = detector.train_config
    assert (cfg.batch_size, cfg.lr, cfg.epochs) == (64, 2e-4, 15)
    assert (cfg.beta1, cfg.beta2) == (0.5, 0.999)
    assert cfg.d_reset_threshold == 1e-5


def test_spec_weight_init_is_pinned() -> None:
    """`init_weights('normal', 0.02)` (spec C): conv/linear ~N(0, 0.02) with zero biases, BN ~N(1, 0.02), 0."""
    torch.manual_seed(0)
    model = create("skipganomaly++")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert convs and linears and bns

    conv_w = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(conv_w.mean().item()) < 1e-3
    assert 0.019 < conv_w.std().item() < 0.021
    lin_w = torch.cat([m.weight.detach().flatten() for m in linears])
    assert abs(lin_w.mean().item()) < 1e-3
    assert 0.019 < lin_w.std().item() < 0.021
    # Each network on its own, so that one left at PyTorch's default init cannot hide in the pool.
    for net in (model.generator, model.discriminator):
        w = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
        assert 0.019 < w.std().item() < 0.021

    bn_w = torch.cat([m.weight.detach().flatten() for m in bns])
    assert abs(bn_w.mean().item() - 1.0) < 2e-3
    assert 0.019 < bn_w.std().item() < 0.021
    for m in bns:
        assert torch.count_nonzero(m.bias) == 0

    # Spec A: every conv in G keeps bias=True (and they start at 0); spec B: D's convs have no bias.
    for m in model.generator.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is not None and torch.count_nonzero(m.bias) == 0
    for m in model.discriminator.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
    for m in linears:
        assert m.bias is None  # SE: Linear layers without bias (spec A)


# --------------------------------------------------------------------------------------------
# 2. An independent functional generator (spec section A)
# --------------------------------------------------------------------------------------------


class _Weights:
    """Reads a state dict by module path and records what was used, so nothing is left out."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.used.add(key)
        return self.state[key]

    def conv(self, x: Tensor, name: str, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Tensor:
        w = self[f"{name}.weight"]
        assert tuple(w.shape[-2:]) == (k, k), f"{name}: spec says a {k}x{k} conv, got {tuple(w.shape)}"
        return F.conv2d(x, w, self[f"{name}.bias"], stride=stride, padding=padding, dilation=dilation)

    def bn(self, x: Tensor, name: str) -> Tensor:
        return F.batch_norm(x, self[f"{name}.running_mean"], self[f"{name}.running_var"],
                            self[f"{name}.weight"], self[f"{name}.bias"], training=False, eps=1e-5)


def _se(p: _Weights, x: Tensor, name: str) -> Tensor:
    """SE(C): GAP -> Linear C->C/8 (no bias) -> ReLU -> Linear C/8->C (no bias) -> Sigmoid -> scale."""
    c = x.shape[1]
    w1, w2 = p[f"{name}.fc.0.weight"], p[f"{name}.fc.2.weight"]
    assert tuple(w1.shape) == (c // 8, c) and tuple(w2.shape) == (c, c // 8)
    z = torch.sigmoid(F.linear(F.relu(F.linear(x.mean(dim=(2, 3)), w1)), w2))
    return x * z[:, :, None, None]


def _stem(p: _Weights, x: Tensor, name: str, s: int = 1) -> Tensor:
    """Stem: [Conv3x3(s) -> BN -> ReLU -> Conv3x3] + [Conv1x1(s) -> BN], then SE; no activation."""
    main = p.conv(F.relu(p.bn(p.conv(x, f"{name}.main.0", 3, s, 1), f"{name}.main.1")), f"{name}.main.3", 3, 1, 1)
    short = p.bn(p.conv(x, f"{name}.shortcut.0", 1, s), f"{name}.shortcut.1")
    return _se(p, main + short, f"{name}.se")


def _res(p: _Weights, x: Tensor, name: str, s: int = 1) -> Tensor:
    """Res: BN -> ReLU -> Conv3x3(s) -> BN -> ReLU -> Conv3x3, plus Conv1x1(s) -> BN, then SE."""
    h = p.conv(F.relu(p.bn(x, f"{name}.main.0")), f"{name}.main.2", 3, s, 1)
    h = p.conv(F.relu(p.bn(h, f"{name}.main.3")), f"{name}.main.5", 3, 1, 1)
    short = p.bn(p.conv(x, f"{name}.shortcut.0", 1, s), f"{name}.shortcut.1")
    return _se(p, h + short, f"{name}.se")


def _aspp(p: _Weights, x: Tensor, name: str) -> Tensor:
    """ASPP: sum over d in (1, 6, 12, 18) of BN(Conv3x3, dilation d, padding d), then Conv1x1; no ReLU."""
    out = sum(p.bn(p.conv(x, f"{name}.branches.{i}.0", 3, 1, d, d), f"{name}.branches.{i}.1")
              for i, d in enumerate((1, 6, 12, 18)))
    return p.conv(out, f"{name}.project", 1)


def _att(p: _Weights, g: Tensor, x: Tensor, name: str) -> Tensor:
    """Att: g: BN-ReLU-Conv3x3-MaxPool2; x: BN-ReLU-Conv3x3; sum -> BN-ReLU-Conv3x3; times x (no sigmoid)."""
    gp = F.max_pool2d(p.conv(F.relu(p.bn(g, f"{name}.g_path.0")), f"{name}.g_path.2", 3, 1, 1), 2)
    xp = p.conv(F.relu(p.bn(x, f"{name}.x_path.0")), f"{name}.x_path.2", 3, 1, 1)
    gate = p.conv(F.relu(p.bn(gp + xp, f"{name}.gate.0")), f"{name}.gate.2", 3, 1, 1)
    return gate * x


def _dec(p: _Weights, g: Tensor, x: Tensor, name: str) -> Tensor:
    """Dec: y = Att(g, x) -> nearest x2 -> cat([y, g], dim=1) -> Res(C_x + C_g -> Cout, stride 1)."""
    y = F.interpolate(_att(p, g, x, f"{name}.attention"), scale_factor=2, mode="nearest")
    return _res(p, torch.cat([y, g], dim=1), f"{name}.residual", 1)


def functional_generator(state: dict[str, Tensor], x: Tensor) -> tuple[Tensor, set[str]]:
    """Skip-GANomaly++ generator, eval mode, written from reference-spec.md section A
    ("Skip-GANomaly++ generator": building blocks and layer table c1-c4, b1, d1-d3, h, out).

    Returns the output and the state-dict keys it read."""
    p = _Weights(state)
    c1 = _stem(p, x, "stem", 1)              # c1: Stem(3 -> w0, s=1)
    c2 = _res(p, c1, "enc1", 2)              # c2: Res(w0 -> w1, s=2)
    c3 = _res(p, c2, "enc2", 2)              # c3: Res(w1 -> w2, s=2)
    c4 = _res(p, c3, "enc3", 2)              # c4: Res(w2 -> w3, s=2)
    b1 = _aspp(p, c4, "bridge")              # b1: ASPP(w3 -> w4) bridge
    d1 = _dec(p, c3, b1, "dec1")             # d1: Dec(g=c3, x=b1)
    d2 = _dec(p, c2, d1, "dec2")             # d2: Dec(g=c2, x=d1)
    d3 = _dec(p, c1, d2, "dec3")             # d3: Dec(g=c1, x=d2)
    h = _aspp(p, d3, "head")                 # h: ASPP output head
    out = p.conv(h, "out", 1)                # out: Conv1x1 -> 3 with bias, no output activation
    return out, p.used | {k for k in state if k.endswith("num_batches_tracked")}


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """O(1)-scale random weights and BN statistics, so that every block and every BN changes the output."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(t: Tensor, scale: float, shift: float = 0.0) -> Tensor:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * scale + shift

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(rnd(m.weight, 0.7 / math.sqrt(fan_in)))
                if m.bias is not None:
                    m.bias.copy_(rnd(m.bias, 0.2))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(rnd(m.weight, 0.3, 1.0))
                m.bias.copy_(rnd(m.bias, 0.3))
                m.running_mean.copy_(rnd(m.running_mean, 0.3))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)


@pytest.mark.parametrize("size", [32, 64])
def test_skipganomaly_pp_generator_matches_an_independent_forward(size: int) -> None:
    """The module's generator equals the spec-A forward written above, on its own weights (eval mode).

    32x32 gives the spec's 4x4 bridge (dilations 6, 12, 18 all in padding); 64x64 an 8x8 bridge,
    where the dilation-6 branch sees real pixels."""
    torch.manual_seed(0)
    model = create("skipganomaly++", image_size=size, widths=SMALL_WIDTHS).double()
    _perturb(model.generator)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        actual = model.generator(x)
        state = model.generator.state_dict()
        expected, used = functional_generator(state, x)
    assert used == set(state), f"generator weights the spec does not use: {sorted(set(state) - used)}"
    assert actual.shape == expected.shape == x.shape
    scale = expected.abs().max().item()
    assert 1e-3 < scale < 1e6 and expected.std().item() > 1e-3  # a live signal, not a vanishing one
    assert torch.allclose(actual, expected, rtol=1e-9, atol=1e-9 * scale), (
        f"max |diff| {(actual - expected).abs().max().item():.3e} (output scale {scale:.3e})"
    )
