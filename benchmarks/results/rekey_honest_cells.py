# A one-off, kept as the record of how those cells were carried over; it ran at git d18bb73 and does not
# run against later code (the sweep's API changed): read it with `git show d18bb73:benchmarks/results/rekey_honest_cells.py`.
"""Re-key honest cells written before cells were keyed by a hash of their settings (one-off)."""
import json, sys
from pathlib import Path
from skipganomaly.sweep import SweepConfig, cell_settings, cell_file, HONEST_VAL_FRACTION

out, commit = Path(sys.argv[1]), sys.argv[2]
cells = out / "cells"
for path in sorted(cells.glob("*__honest.json")):
    old = json.loads(path.read_text())
    s = old["settings"]
    config = SweepConfig(models=[old["model"]], classes=[old["class"]], seeds=[old["seed"]], protocols=["honest"],
                         epochs=s["epochs"], batch_size=s["batch_size"], train_fraction=s["train_fraction"],
                         test_fraction=s["test_fraction"], amp=False, model_options={})
    assert old["model_options"] == {}
    settings = cell_settings(old["model"], old["class"], old["seed"], "honest", config)
    new_path = cell_file(cells, settings)
    n = old["train_images"]  # recorded before the validation split was subtracted
    n_val = int(round(n * HONEST_VAL_FRACTION))
    new = {**old, "train_images": n - n_val, "val_images": n_val, "git_commit": commit, "settings": settings}
    if "scores_file" in old:  # cells of the first cpu-smoke run were written before scores were saved
        scores = new_path.with_suffix(".scores.npz")
        (cells / old["scores_file"]).rename(scores)
        new["scores_file"] = scores.name
    new_path.write_text(json.dumps(new, indent=1))
    path.unlink()
for path in sorted(cells.glob("*__paper.json")) + sorted(cells.glob("*__paper.scores.npz")):
    path.unlink()
