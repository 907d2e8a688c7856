"""Scratch: how much do the saved validate scores track image complexity (PNG bytes)?"""
import functools, io, sys
import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score
from skipganomaly.sweep import SweepConfig, load_split
from skipganomaly.data.cifar10 import CLASSES, load_cifar10
from skipganomaly.detector import DetectorSettings

scores_dir = sys.argv[1]; MODE = sys.argv[2]; KEYS = sys.argv[3].split(",")
load = functools.partial(load_cifar10, "/work/shared/data")
config = SweepConfig(models=["rotation"], classes=list(CLASSES), seeds=[0], protocols=["validate"],
                     settings=DetectorSettings.from_params(epochs=3, batch_size=64, progress=False),
                     train_fraction=0.2, test_fraction=0.5)

def png_bytes(imgs):
    out = []
    for a in imgs:
        b = io.BytesIO(); Image.fromarray(a.transpose(1, 2, 0)).save(b, format="PNG", optimize=False); out.append(len(b.getvalue()))
    return np.array(out, float)

import glob, os
rows = []
for f in sorted(glob.glob(scores_dir + "/*.npz")):
    cls = os.path.basename(f)[:-4]
    d = np.load(f)
    split = load_split(load, cls, 0, "validate", config)
    y = split.test_labels.numpy()
    assert (y == d["labels"]).all()
    x = split.test.numpy().astype(float) / 255
    tv = np.abs(np.diff(x, axis=2)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=3)).mean((1, 2, 3))
    c = png_bytes(split.test.numpy()) if MODE == "png" else tv
    line = [cls, f"cx {roc_auc_score(y, c):.3f}"]
    for k in KEYS:
        s = d[k].astype(float)
        r = np.corrcoef(s, c)[0, 1]
        # label-free, transductive: residual of s after a least-squares line on complexity over the test images
        A = np.stack([c, np.ones_like(c)], 1); res = s - A @ np.linalg.lstsq(A, s, rcond=None)[0]
        line.append(f"{k} {roc_auc_score(y, s):.3f} r={r:+.2f} res {roc_auc_score(y, res):.3f}")
    print("  ".join(line), flush=True)

