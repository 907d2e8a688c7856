"""Embedded default data: scikit-learn's handwritten digits (1,797 real 8x8 scans, no download).

Leave-one-digit-out, like the CIFAR-10 protocol: one digit is abnormal; the other nine are split into
training normals and held-out test normals; the test set adds every image of the abnormal digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .images import resize_uint8


@dataclass
class AnomalySplit:
    """Normal training images, and a labelled test set (label 1 = abnormal)."""

    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


def load_digits_images(image_size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 digits as uint8 [N, 1, S, S] (ink bright on dark), and their digit labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).round().to(torch.uint8)
    return resize_uint8(raw[:, None], image_size), bunch.target


def digits_leave_one_out(
    abnormal_digit: int, image_size: int = 32, test_fraction: float = 0.2, seed: int = 0,
    max_train: int | None = None,
) -> AnomalySplit:
    """Train on nine digits, test on held-out normals of those nine plus all of the tenth."""
    if not 0 <= abnormal_digit <= 9:
        raise ValueError(f"abnormal digit must be 0..9, got {abnormal_digit}")
    images, targets = load_digits_images(image_size)
    rng = np.random.default_rng(seed)
    normal_idx = rng.permutation(np.flatnonzero(targets != abnormal_digit))
    n_test = int(round(len(normal_idx) * test_fraction))
    test_normal, train_idx = normal_idx[:n_test], normal_idx[n_test:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    abnormal_idx = np.flatnonzero(targets == abnormal_digit)
    test_idx = np.concatenate([test_normal, abnormal_idx])
    labels = torch.cat([torch.zeros(len(test_normal)), torch.ones(len(abnormal_idx))]).long()
    return AnomalySplit(images[torch.from_numpy(train_idx)], images[torch.from_numpy(test_idx)], labels)
