"""One command at a time per output folder: a second claim is refused naming the first, a killed holder leaves
nothing claimed, and a refused command leaves no empty folder behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from skipganomaly.cli import main
from skipganomaly.errors import ConfigError
from skipganomaly.folder_lock import LOCK_FILE, claim_folder, in_use
from skipganomaly.run_directory import next_free_run

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="folders are claimed where fcntl locks exist")

HOLD = ("import sys, time; from pathlib import Path; from skipganomaly.folder_lock import claim_folder\n"
        "with claim_folder(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n")


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_claim_is_refused_naming_the_holder_and_a_killed_holder_leaves_the_folder_free(
        tmp_path: Path) -> None:
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        assert in_use(folder)
        with pytest.raises(ConfigError, match=re.escape(f"{folder} is in use by another skipganomaly command (pid "
                                                        f"{proc.pid}, started ") + r"[-0-9]+ [:0-9]+: .* -c "):
            with claim_folder(folder):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up runs: the lock file stays, unlocked
        proc.wait()
    assert (folder / LOCK_FILE).exists() and not in_use(folder)
    with claim_folder(folder):
        assert in_use(folder)
        with pytest.raises(ConfigError, match="is in use"):  # in one process too
            with claim_folder(folder):
                pass
    assert not (folder / LOCK_FILE).exists() and not in_use(folder)


def test_a_claim_creates_the_folder_and_removes_it_again_when_nothing_was_written(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with claim_folder(folder):
            assert folder.is_dir()
            raise RuntimeError("refused before writing anything")
    assert not (tmp_path / "a").exists()
    with claim_folder(folder):
        (folder / "model.pt").write_bytes(b"")
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt"]  # only the lock file goes


def test_train_into_a_folder_in_use_is_refused_and_the_default_folder_skips_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import smooth_images, write_images

    write_images(tmp_path / "data" / "train", smooth_images(12, seed=0))
    run = tmp_path / "runs" / "train"
    proc = _holder(run)
    try:
        code = main(["train", "--data", str(tmp_path / "data"), "--out", str(run), "--model", "pca", "--no-progress",
                     "--device", "cpu"])
        assert code == 2 and f"{run} is in use by another skipganomaly command" in capsys.readouterr().err
        assert os.listdir(run) == [LOCK_FILE]  # nothing of the refused run
        assert main(["demo", "--out", str(run), "--digits", "0", "--model", "pca", "--no-progress"]) == 2
        assert "is in use" in capsys.readouterr().err and os.listdir(run) == [LOCK_FILE]
        monkeypatch.chdir(tmp_path)  # the default --out is runs/train, then runs/train2, ...
        assert next_free_run(Path("runs/train")) == Path("runs/train2")
        assert next_free_run(Path("runs/train"), evaluations=True) == Path("runs/train2")  # `test`'s default too
    finally:
        proc.kill()
        proc.wait()
    assert next_free_run(Path("runs/train")) == Path("runs/train")
