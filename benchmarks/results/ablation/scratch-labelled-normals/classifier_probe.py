"""Scratch (validate splits only): a classifier of the normal classes (their labels used), scored by how
unsure it is or how far an image's features are from the normals'. A different setting from the
label-free models (Hendrycks et al. 2019; Ahmed & Courville 2020). Usage:
classifier_probe.py CLASSES EPOCHS THREADS [WIDTHS]"""
import functools, json, sys, time
import numpy as np, torch
import torch.nn.functional as F
from torch import nn
from sklearn.metrics import roc_auc_score
from skipganomaly.data.cifar10 import CLASSES, load_cifar10
from skipganomaly.data.labelled import _stratified, pseudo_anomaly, class_split
from skipganomaly.models.rotation.model import _Block
from skipganomaly.models.neighbours import pooled_map

classes = list(CLASSES) if sys.argv[1] == "all" else sys.argv[1].split(",")
EPOCHS = int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
WIDTHS = [int(w) for w in sys.argv[4].split(",")] if len(sys.argv) > 4 else [32, 64, 128]
TRAIN_FRACTION, TEST_FRACTION, SEED = 0.2, 0.5, 0


class Net(nn.Module):
    def __init__(self, n, widths):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*[_Block(a, b, 1 if i == 0 else 2) for i, (a, b) in enumerate(zip([widths[0], *widths], widths))])
        self.bn = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], n)

    def feats(self, x):
        h = self.stem(x)
        taps = []
        for b in self.blocks:
            h = b(h)
            taps.append(h)
        return F.relu(self.bn(h)).mean((2, 3)), taps

    def forward(self, x):
        return self.head(self.feats(x)[0])


def augment(x):  # random crop (pad 4, reflect) + mirror
    B = len(x)
    p = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,))
    out = p[:, :, i:i + 32, j:j + 32]
    flip = torch.rand(B) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def knn(q, bank, k=5, self_out=False):
    d = 1 - q @ bank.T
    if self_out:
        d.fill_diagonal_(float("inf"))
    return d.topk(k, 1, largest=False).values.mean(1)


res = {}
data = load_cifar10("/work/shared/data")
for cls in classes:
    t0 = time.time()
    kept = data.without([cls])
    pseudo = pseudo_anomaly(data, [cls], SEED)
    split = class_split(kept, [pseudo], TRAIN_FRACTION, TEST_FRACTION, SEED)
    # the same training indices class_split drew (its first draw from the same generator)
    bad = torch.tensor([kept.class_index(pseudo)])
    idx = _stratified(kept.train_labels, ~torch.isin(kept.train_labels, bad), TRAIN_FRACTION, np.random.default_rng(SEED))
    assert torch.equal(kept.train_images[idx], split.train)
    ylab = kept.train_labels[idx]
    names = sorted(set(ylab.tolist()))
    y = torch.tensor([names.index(v) for v in ylab.tolist()])
    x = split.train.float()
    torch.manual_seed(SEED)
    net = Net(len(names), WIDTHS)
    steps = EPOCHS * ((len(x) + 127) // 128)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps, pct_start=0.25)
    for ep in range(EPOCHS):
        net.train()
        perm = torch.randperm(len(x))
        tot = cor = 0
        for s in range(0, len(x), 128):
            b = perm[s:s + 128]
            out = net(augment(x[b]))
            loss = F.cross_entropy(out, y[b])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            tot += len(b); cor += (out.argmax(1) == y[b]).sum().item()
        print(f"  {cls} epoch {ep + 1} train acc {cor / tot:.3f} {time.time() - t0:.0f}s", flush=True)
    net.eval()
    with torch.no_grad():
        def run(z):
            outs = [net.feats(z[s:s + 500]) for s in range(0, len(z), 500)]
            f = torch.cat([o[0] for o in outs])
            maps = [torch.cat([F.normalize(pooled_map(o[1][i], 4).flatten(1), dim=1) for o in outs]) for i in (1, 2)]
            return f, net.head(f), maps
        ftr, ltr, mtr = run(x)
        fte, lte, mte = run(split.test.float())
    lab = split.test_labels.numpy()
    line = {}
    p = lte.softmax(1)
    line["msp"] = roc_auc_score(lab, -p.max(1).values.numpy())
    line["energy"] = roc_auc_score(lab, -torch.logsumexp(lte, 1).numpy())
    ntr, nte = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
    line["knn"] = roc_auc_score(lab, knn(nte, ntr).numpy())
    # map: standardised per block on the normals' leave-one-out distances, summed
    s = 0
    for a, b in zip(mtr, mte):
        own = knn(a, a, self_out=True)
        s = s + (knn(b, a) - own.mean()) / own.std()
    line["map"] = roc_auc_score(lab, s.numpy())
    # class-conditional Gaussian, tied covariance (Lee et al. 2018): distance to the nearest class mean
    mus = torch.stack([ftr[y == c].mean(0) for c in range(len(names))]).double()
    cen = ftr.double() - mus[y]
    prec = torch.linalg.inv(cen.T @ cen / len(cen) + 1e-6 * torch.eye(cen.shape[1], dtype=torch.double))
    d = fte.double()[:, None, :] - mus[None]
    maha = torch.einsum("nkd,de,nke->nk", d, prec, d).min(1).values
    line["maha"] = roc_auc_score(lab, maha.numpy())
    res[cls] = line
    print(cls, pseudo, {k: round(v, 3) for k, v in line.items()}, f"{time.time() - t0:.0f}s", flush=True)
print("mean", {k: round(float(np.mean([r[k] for r in res.values()])), 3) for k in next(iter(res.values()))})
