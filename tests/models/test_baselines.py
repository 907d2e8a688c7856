"""The four baselines of the paper's Table 1: reference parameter counts, shapes, size limits."""

from __future__ import annotations

import pytest
import torch

from skipganomaly.errors import ConfigError
from skipganomaly.models import create
from tests.conftest import count, fast


def test_skipganomaly_counts() -> None:
    model = create("skipganomaly")
    assert count(model.generator) == 16_659_075
    assert count(model.discriminator) == 1_069_700


def test_ganomaly_counts() -> None:
    model = create("ganomaly")
    assert count(model.generator) == 3_206_528
    assert count(model.generator.encoder1) == 1_068_800
    assert count(model.generator.decoder) == 1_068_928
    assert count(model.discriminator) == 663_296


def test_egbad_and_anogan_use_the_alad_32px_networks() -> None:
    egbad, anogan = create("egbad"), create("anogan")
    widths = [m.out_channels for m in egbad.encoder if isinstance(m, torch.nn.Conv2d)]
    assert widths == [128, 256, 512, 100]
    gen = [m.out_channels for m in anogan.generator if isinstance(m, torch.nn.ConvTranspose2d)]
    assert gen == [512, 256, 128, 3]
    assert anogan.discriminator.head.in_features == 8192
    assert egbad.discriminator.joint[0].in_features == 8192 + 512


@pytest.mark.parametrize("name", ["skipganomaly", "ganomaly", "egbad", "anogan"])
@pytest.mark.parametrize("channels, size", [(1, 32), (3, 64)])
def test_forward_shapes(name: str, channels: int, size: int) -> None:
    model = create(name, in_channels=channels, image_size=size, **fast(name)).eval()
    x = torch.rand(2, channels, size, size) * 2 - 1
    with torch.no_grad():
        assert model.score(x).shape == (2,)
        assert model.anomaly_map(x).shape == (2, size, size)
        assert model.validation_loss(x).shape == (2,)


@pytest.mark.parametrize("name", ["skipganomaly", "ganomaly", "egbad", "anogan"])
def test_sizes_that_are_not_powers_of_two_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="power of two"):
        create(name, image_size=48)


def test_skipganomaly_output_is_bounded_by_tanh() -> None:
    model = create("skipganomaly").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32) * 10)
    assert out.abs().max() <= 1.0


def test_anogan_search_lowers_its_loss() -> None:
    torch.manual_seed(0)
    model = create("anogan", search_steps=30).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        start, _ = model.search(x, 1)
        end, _ = model.search(x, 30)
    assert (end < start).all()
    assert all(p.requires_grad for p in model.parameters())  # the search leaves the weights trainable
