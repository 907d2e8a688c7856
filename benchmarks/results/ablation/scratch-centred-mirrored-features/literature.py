"""Scratch: Hendrycks et al.'s summed-probability score and CSI's norm-scaled cosine score (saved networks)."""
from __future__ import annotations
import functools, json, sys, time
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).parent.parent / "scratch-gaussian-features"))
from probe_scores import auroc
from skipganomaly.data.cifar10 import load_cifar10
from skipganomaly.detector import Detector, DetectorSettings
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.training.device import prepare_batch
torch.set_grad_enabled(False)


def pooled_and_logits(model, images):
    """[4, N, C] pooled features and [4, N, 4] logits of the four rotated copies."""
    zs, ls = [], []
    for i in range(0, len(images), 500):
        x = prepare_batch(images[i:i + 500], torch.device("cpu"))
        z_r, l_r = [], []
        for r in range(4):
            h = model.blocks(model.stem(torch.rot90(x, r, dims=(2, 3))))
            z = F.relu(model.bn(h)).mean((2, 3))
            z_r.append(z)
            l_r.append(model.head(z))
        zs.append(torch.stack(z_r))
        ls.append(torch.stack(l_r))
    return torch.cat(zs, 1), torch.cat(ls, 1)


def max_cos(bank, q):
    bank = F.normalize(bank, dim=1)
    q = F.normalize(q, dim=1)
    return torch.cat([(q[i:i + 1024] @ bank.T).max(1).values for i in range(0, len(q), 1024)])


def main():
    classes = sys.argv[1].split(",")
    config = SweepConfig(models=["rotation"], classes=classes, seeds=[0], protocols=["validate"],
                         settings=DetectorSettings.from_params(epochs=3, batch_size=64, progress=False),
                         train_fraction=0.2, test_fraction=0.5)
    load = functools.partial(load_cifar10, "../shared/data")
    for cls in classes:
        t0 = time.time()
        split = load_split(load, cls, 0, "validate", config)
        det = Detector.load(f"{sys.argv[2]}/{cls}.pt", device="cpu")
        model = det.model_.eval()
        ztr, _ = pooled_and_logits(model, split.train[det.holdout(len(split.train))[1]])
        zte, lte = pooled_and_logits(model, split.test)
        y = split.test_labels.numpy()
        true = torch.arange(4)[:, None]
        logp = lte.log_softmax(-1).gather(-1, true[:, :, None].expand(4, lte.shape[1], 1)).squeeze(-1)  # [4, N]
        res = {
            "ce": auroc(-logp.sum(0), y),
            "psum": auroc(-logp.exp().sum(0), y),
            "csi": auroc(-sum(max_cos(ztr[r], zte[r]) * zte[r].norm(dim=1) for r in range(4)), y),
            "csi_cos_only": auroc(-sum(max_cos(ztr[r], zte[r]) for r in range(4)), y),
        }
        row = {"class": cls, "pseudo": split.abnormal_class, "auroc": res, "s": round(time.time() - t0)}
        with open(Path(__file__).parent / "literature-output.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
