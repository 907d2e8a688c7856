"""Shared fixtures: small, deterministic, CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread per pytest-xdist worker (`make test` runs TEST_WORKERS of them) and per process its tests
# start (the environment is set before torch is imported); two in a plain `pytest` run.
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if TEST_THREADS == 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(TEST_THREADS)

SMALL_WIDTHS = [8, 8, 16, 16, 32]

# Options that keep every model quick on a CPU (AnoGAN's 500-step latent search costs a minute here).
FAST_OPTIONS: dict[str, dict[str, object]] = {"anogan": {"search_steps": 10, "validation_steps": 2}}


def fast(name: str) -> dict[str, object]:
    return dict(FAST_OPTIONS.get(name, {}))


def count(module: torch.nn.Module) -> int:
    """Trainable parameter count, as the spec's tables give them."""
    return sum(p.numel() for p in module.parameters())


def blob_images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth 'normal' images: a soft bright disc at a random place on a dark background, uint8 NHWC."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        disc = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        colour = rng.uniform(0.6, 1.0, channels)
        out[i] = np.clip(disc[..., None] * colour * 255, 0, 255).astype(np.uint8)
    return out


def smooth_images(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Normal images with a known answer: a soft disc of random colour, +-60 around mid-grey, uint8 NHWC.

    Against `noise_images`, any model that reconstructs what it trained on, even after a few steps,
    must score the noise higher (AUROC > 0.9), so a flipped score, swapped labels or a wrong
    un-shuffling shows. (`blob_images` lie on a black background, far from a barely trained
    generator's mid-grey output, and score *above* noise after a few steps.)"""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        disc = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        colour = rng.uniform(-60, 60, channels)
        out[i] = np.clip(128 + disc[..., None] * colour, 0, 255).astype(np.uint8)
    return out


def noise_images(n: int, size: int = 32, channels: int = 3, seed: int = 1) -> np.ndarray:
    """Obviously 'abnormal' images: uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def write_images(folder: Path, images: np.ndarray, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(path)
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> object:
    """Give every test the process's torch thread count back: code under test may set it (a sweep's
    in-process cell, the speed benchmark), and a later test must not run with another test's count."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A user-style layout: train/ of normals, test/normal and test/abnormal."""
    write_images(tmp_path / "train", smooth_images(40, seed=0))
    write_images(tmp_path / "test" / "normal", smooth_images(8, seed=5))
    write_images(tmp_path / "test" / "abnormal", noise_images(8))
    return tmp_path


def find_real_cifar10() -> Path:
    """The real CIFAR-10: $CIFAR10_DIR, else the project's shared data beside the checkout, else /work/shared."""
    candidates = [Path(os.environ["CIFAR10_DIR"])] if "CIFAR10_DIR" in os.environ else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")]
    for path in candidates:
        if (path / "cifar-10-batches-py").is_dir():
            return path
    return candidates[0]
