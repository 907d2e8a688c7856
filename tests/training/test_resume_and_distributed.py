"""Interrupted runs resume to the same weights, under torchrun too; torchrun with 2 CPU processes trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.detector import Detector
from skipganomaly.errors import CheckpointError, ConfigError
from skipganomaly.training import TrainConfig, make_optimizers, train, train_step
from skipganomaly.training.loop import load_train_state
from tests.conftest import SMALL_WIDTHS, blob_images, noise_images, write_images

PAPER_SMALL = ["--model", "skipganomaly++", "--model-arg", "widths=[8,8,16,16,32]"]  # the paper's model, small
ARGS = ["--epochs", "4", "--batch-size", "8", "--lr", "1e-3", *PAPER_SMALL,
        "--model-arg", "noise_sigma=0.05", "--no-progress", "--device", "cpu"]  # noise: the RNG state matters too


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "skipganomaly", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in every process, so results can match


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_images(root / "train", blob_images(160, seed=2))
    write_images(root / "test" / "normal", blob_images(8, seed=9))
    write_images(root / "test" / "abnormal", noise_images(8))
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd("--data", str(data / "train"), "--out", str(whole), *ARGS), check=True,
                   env=_env(), capture_output=True, timeout=300)

    proc = subprocess.Popen(_train_cmd("--data", str(data / "train"), "--out", str(killed), *ARGS), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().count("\n") >= 1):  # epoch 1 is complete, epoch 2 running
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = load_train_state(killed / "model.state.pt")
    assert state["epoch"] < 4, "the run was not interrupted"
    assert Detector.load(killed / "model.pt").threshold_ is None  # an unfinished run's per-epoch checkpoint

    done = subprocess.run(_train_cmd("--resume", str(killed), "--no-progress"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming after epoch {state['epoch']}" in done.stdout
    a, b = _weights(whole / "model.pt"), _weights(killed / "model.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert Detector.load(killed / "model.pt").threshold_ == Detector.load(whole / "model.pt").threshold_


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    images = torch.from_numpy(blob_images(24, channels=1)).permute(0, 3, 1, 2).contiguous()
    state = tmp_path / "s.pt"
    config = dict(epochs=1, batch_size=8, device="cpu", progress=False)
    model = _model()
    train(model, images[:20], images[20:], TrainConfig(**config), state_path=state)
    with pytest.raises(ConfigError, match="lr"):
        train(_model(), images[:20], images[20:], TrainConfig(**{**config, "lr": 1e-3}), state_path=state, resume=True)
    history = train(_model(), images[:20], images[20:], TrainConfig(**{**config, "epochs": 2}), state_path=state,
                    resume=True)  # more epochs is fine: it continues
    assert [r.epoch for r in history] == [1, 2]


def test_resume_refuses_other_training_images(tmp_path: Path) -> None:
    """The state keeps a fingerprint of the images: other pixels, or another count, are refused."""
    images = torch.from_numpy(blob_images(24, channels=1)).permute(0, 3, 1, 2).contiguous()
    state = tmp_path / "s.pt"
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False)
    train(_model(), images[:20], images[20:], config, state_path=state)
    more = TrainConfig(epochs=2, batch_size=8, device="cpu", progress=False)
    other = images[:20].clone()
    other[3, 0, 5, 5] ^= 1  # one pixel of one image
    with pytest.raises(ConfigError, match=r"not the interrupted run's \(other pixels"):
        train(_model(), other, images[20:], more, state_path=state, resume=True)
    with pytest.raises(ConfigError, match=r"\(20 images of 1x32x32 then, 16 of 1x32x32 now\)"):
        train(_model(), images[:16], images[20:], more, state_path=state, resume=True)
    assert len(train(_model(), images[:20], images[20:], more, state_path=state, resume=True)) == 2


def test_training_a_finished_detector_on_keeps_it_usable_until_the_end(tmp_path: Path) -> None:
    """A deployed run trained on for more epochs: its checkpoint keeps the calibrated detector (weights and threshold)
    until the new one is calibrated, so `predict` on it works throughout, and an interruption loses nothing (the
    epochs are in the state file, from which training continues)."""
    x = blob_images(40, channels=1)
    settings = dict(in_channels=1, widths=[8, 16, 32], batch_size=8, device="cpu", progress=False)
    first = Detector("rotation", epochs=1, **settings).fit(x, checkpoint_path=tmp_path / "m.pt")
    scores = first.decision_function(x[:4])

    def stop_after_epoch_2(record) -> None:  # type: ignore[no-untyped-def]
        kept = Detector.load(tmp_path / "m.pt")
        assert kept.threshold_ == first.threshold_
        np.testing.assert_array_equal(kept.decision_function(x[:4]), scores)
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Detector("rotation", epochs=3, **settings).fit(x, checkpoint_path=tmp_path / "m.pt", resume=True,
                                                      on_epoch_end=stop_after_epoch_2)
    assert Detector.load(tmp_path / "m.pt").threshold_ == first.threshold_
    done = Detector("rotation", epochs=3, **settings).fit(x, checkpoint_path=tmp_path / "m.pt", resume=True)
    assert [r["epoch"] for r in done.history_] == [1, 2, 3]
    assert Detector.load(tmp_path / "m.pt").history_ == done.history_ and done.threshold_ is not None


def test_resume_refuses_another_model_or_other_options_in_one_line(tmp_path: Path) -> None:
    """The API path (the CLI keeps options in config.yaml): weights of another network are a ConfigError
    naming what differs, not load_state_dict's dump of missing keys."""
    x = blob_images(40, channels=1)
    Detector("rotation", in_channels=1, widths=[8, 16, 32], epochs=1, batch_size=8, device="cpu",
             progress=False).fit(x, checkpoint_path=tmp_path / "m.pt")
    with pytest.raises(ConfigError, match=r"it trained 'rotation' with other widths \(\[8, 16, 32\] then, "
                                          r"\[8, 16, 16\] now\)"):
        Detector("rotation", in_channels=1, widths=[8, 16, 16], epochs=2, batch_size=8, device="cpu",
                 progress=False).fit(x, checkpoint_path=tmp_path / "m.pt", resume=True)
    with pytest.raises(ConfigError, match="it trained 'rotation' with other .*model \\('rotation' then, 'ganomaly' now"):
        Detector("ganomaly", in_channels=1, epochs=2, batch_size=8, device="cpu",
                 progress=False).fit(x, checkpoint_path=tmp_path / "m.pt", resume=True)


def test_cli_resume_from_another_folder_reads_the_saved_data_and_refuses_other_data(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """config.yaml keeps absolute folders, so `--resume` works from any current folder; `--data` given
    anew with other images is refused before the run directory is touched."""
    from skipganomaly.cli import main

    monkeypatch.chdir(data)
    small = ["--batch-size", "8", *PAPER_SMALL, "--no-progress", "--device", "cpu"]
    assert main(["train", "--data", "train", "--out", str(tmp_path / "run"), "--epochs", "1", *small]) == 0
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere / "noise", noise_images(30))
    monkeypatch.chdir(elsewhere)
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    assert main(["train", "--resume", "../run", "--data", "noise", "--epochs", "2", "--no-progress"]) == 2
    assert "not the interrupted run's (160 images of 3x32x32 then, 30 of 3x32x32 now)" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before
    assert main(["train", "--resume", "../run", "--epochs", "2", "--no-progress"]) == 0
    assert len(Detector.load(tmp_path / "run" / "model.pt").history_) == 2


def test_a_resume_that_would_not_continue_the_run_is_refused(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Three resumes whose result would silently not be the run's: fewer --epochs than it trained (nothing trained,
    the record saying 1 epoch of a 2-epoch model), a state file deleted (training again from epoch 1 over the run),
    and more epochs of a cosine schedule (laid out over the first --epochs: the epochs trained would differ). Each
    is one line, and the run is left as it was."""
    from skipganomaly.cli import main

    write_images(tmp_path / "train", blob_images(24))
    small = ["--model", "rotation", "--model-arg", "widths=[8,16,32]", "--batch-size", "8", "--no-progress",
             "--device", "cpu"]
    for name, schedule in (("run", "constant"), ("cosine", "cosine")):
        assert main(["train", "--data", str(tmp_path / "train"), "--out", str(tmp_path / name), "--epochs", "2",
                     "--lr-schedule", schedule, *small]) == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "model.pt").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]) == 2
    assert "it has trained 2 epochs already; give at least that many" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "cosine"), "--epochs", "3", "--no-progress"]) == 2
    assert "its cosine learning-rate schedule is laid out over 2 epochs" in capsys.readouterr().err
    # the same rules where the library resumes (fit(..., resume=True)), with the cosine run's own settings
    rotation = {"widths": [8, 16, 32], "batch_size": 8, "progress": False, "device": "cpu"}
    images = str(tmp_path / "train")
    with pytest.raises(ConfigError, match="for 1 epochs: it has trained 2 epochs already"):
        Detector(**rotation, epochs=1).fit(images, checkpoint_path=tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="for 3 epochs: its cosine learning-rate schedule is laid out over 2"):
        Detector(**rotation, epochs=3, lr_schedule="cosine").fit(images, checkpoint_path=tmp_path / "cosine",
                                                                 resume=True)
    (tmp_path / "run" / "model.state.pt").unlink()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--no-progress"]) == 2
    assert "its training state model.state.pt is missing (deleted?)" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.pt").read_bytes() == before


def test_a_run_that_stopped_early_says_a_resume_trains_no_further(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Early stopping ends a run for good: resumed with more epochs it trains none, and says so."""
    from skipganomaly.models import get_model_class

    settings = {"widths": [8, 16, 32], "batch_size": 8, "progress": False, "device": "cpu", "patience": 1}
    calls = []

    def worse_each_epoch(self: object, x: torch.Tensor) -> torch.Tensor:  # 2 held-out images: one batch an epoch
        calls.append(1)
        return torch.full((len(x),), float(len(calls)))

    with monkeypatch.context() as patch:
        patch.setattr(get_model_class("rotation"), "validation_loss", worse_each_epoch)
        det = Detector(**settings, epochs=4).fit(blob_images(40), checkpoint_path=tmp_path)
    assert len(det.history_) == 2  # no better loss after epoch 1: stopped after epoch 2 at patience 1
    with caplog.at_level("WARNING", logger="skipganomaly"):
        again = Detector(**settings, epochs=6).fit(blob_images(40), checkpoint_path=tmp_path, resume=True)
    assert len(again.history_) == 2 and "stopped early at epoch 2" in caplog.text


def test_a_resumed_run_keeps_every_calls_environment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """config.yaml keeps the first call's environment (command, commit, threads) beside the resuming call's, and a
    resume on other threads says its rounding differs from an uninterrupted run's."""
    import logging

    import yaml

    from skipganomaly.cli import main

    write_images(tmp_path / "train", blob_images(24))
    small = ["--model", "rotation", "--model-arg", "widths=[8,16,32]", "--batch-size", "8", "--no-progress",
             "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert main(["train", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--epochs", "1",
                     *small]) == 0
    finally:
        torch.set_num_threads(threads)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"]) == 0
    assert f"resuming with threads {threads + 1} then, {threads} now" in caplog.text
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    [first] = saved["earlier_environments"]
    assert first["threads"] == threads + 1 and saved["environment"]["threads"] == threads


def test_a_full_disk_while_saving_is_an_os_error_naming_the_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's zip writer reports a failed write as a RuntimeError (a traceback and exit 70 for a full disk): it
    reaches the command as the OSError it is (one line naming the file), and no temporary file is left."""
    from skipganomaly.files import save_torch_atomic

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="could not write it .*is the disk full") as raised:
        save_torch_atomic(tmp_path / "model.pt", {"x": 1})
    assert raised.value.filename == str(tmp_path / "model.pt") and list(tmp_path.iterdir()) == []


def test_truncated_or_foreign_state_is_a_one_line_error(tmp_path: Path) -> None:
    images = torch.from_numpy(blob_images(24, channels=1)).permute(0, 3, 1, 2).contiguous()
    state = tmp_path / "s.pt"
    train(_model(), images[:20], images[20:], TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False),
          state_path=state)
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable training state"):
        load_train_state(state)
    torch.save({"something": 1}, state)
    with pytest.raises(CheckpointError, match="not a skipganomaly training state"):
        load_train_state(state)


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {_Exploit.marker}",))  # type: ignore[attr-defined]


def test_a_training_state_cannot_run_code(tmp_path: Path) -> None:
    _Exploit.marker = tmp_path / "pwned"  # type: ignore[attr-defined]
    evil = tmp_path / "model.state.pt"
    torch.save({"format": "skipganomaly-train-state", "x": _Exploit()}, evil)
    with pytest.raises(CheckpointError, match="not a readable training state"):
        load_train_state(evil)
    assert not (tmp_path / "pwned").exists()


def test_resume_without_a_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(_train_cmd("--resume", str(tmp_path / "nope")), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "no config.yaml" in result.stderr and "Traceback" not in result.stderr


def _model() -> torch.nn.Module:
    from skipganomaly.models import create

    torch.manual_seed(0)
    return create("skipganomaly++", in_channels=1, widths=SMALL_WIDTHS)


def test_torchrun_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    """torchrun, 2 processes, each with half of every batch of 8: the run finishes, rank 0 alone writes,
    and the checkpoint loads and scores like a single-process run's. They are not identical: each
    process's BatchNorm normalises 4 images instead of 8, which moved scores by 21-30% here after one
    epoch, depending on rounding elsewhere in the network (the gradient maths itself is tested exactly
    below), so the check is on agreement in ranking and within 40%."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["--data", str(data / "train"), "--epochs", "1", "--batch-size", "8",
            *PAPER_SMALL, "--no-progress", "--device", "cpu"]
    subprocess.run(_train_cmd("--out", str(single), *args), check=True, env=_env(), capture_output=True,
                   timeout=300)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "skipganomaly", "train", "--out", str(multi), *args],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training skipganomaly++") == 1  # rank 0 alone reports and writes
    assert result.stderr.count("threshold_ rests on 8 held-out normal images") == 1  # and warns
    assert {"config.yaml", "metrics.json", "metrics.jsonl", "model.pt", "model.state.pt", "report.html"} <= {
        p.name for p in multi.iterdir()}
    assert not list(multi.glob("*.tmp"))
    det_multi = Detector.load(multi / "model.pt", device="cpu")
    det_single = Detector.load(single / "model.pt", device="cpu")
    test = [str(p) for p in sorted((data / "test").rglob("*.png"))]
    s_multi, s_single = det_multi.decision_function(test), det_single.decision_function(test)
    np.testing.assert_allclose(s_multi, s_single, rtol=0.4)
    assert np.corrcoef(s_multi, s_single)[0, 1] > 0.9
    assert det_multi.history_[0]["val_loss"] == pytest.approx(det_single.history_[0]["val_loss"], rel=0.3)


def _sharded_steps(rank: int, rendezvous: str, out: str) -> None:
    from skipganomaly.training.distributed import rank_zeros

    torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        # each rank picks the default run folder itself (one rank 0 holds is skipped by the others): rank 0's is taken
        Path(f"{out}.folder{rank}").write_text(str(rank_zeros(Path(f"runs/train{rank + 1}"))))
        model, x, opts, config = _exact_setup()
        for _ in range(2):
            train_step(model, x[rank * 4:(rank + 1) * 4], opts, config, torch.device("cpu"))
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        torch.distributed.destroy_process_group()


def _exact_setup() -> tuple[torch.nn.Module, torch.Tensor, tuple, TrainConfig]:
    """float64 and BatchNorm in eval mode: then nothing depends on how a batch is split, and the mean of
    two half-batch gradients is exactly the full batch's gradient."""
    model = _model().double().eval()
    x = torch.from_numpy(blob_images(8, channels=1)).permute(0, 3, 1, 2).double() / 127.5 - 1.0
    config = TrainConfig(batch_size=8, device="cpu", progress=False)
    return model, x, make_optimizers(model, config), config


def test_gradients_averaged_over_processes_equal_the_full_batch_gradient(tmp_path: Path) -> None:
    """Two processes (gloo): averaged half-batch gradients give the full batch's step, and both ranks take rank 0's
    run folder (`rank_zeros`, as `train_run` does)."""
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(_sharded_steps, args=(f"file://{tmp_path / 'rdv'}", str(out)), nprocs=2)
    assert [Path(f"{out}.folder{rank}").read_text() for rank in (0, 1)] == ["runs/train1", "runs/train1"]
    model, x, opts, config = _exact_setup()
    for _ in range(2):
        train_step(model, x, opts, config, torch.device("cpu"))
    sharded = torch.load(out, weights_only=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(sharded[key], value, rtol=1e-6, atol=1e-6, msg=key)


def test_resume_with_more_epochs_trains_on(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--epochs above those trained trains on; a finished run resumed as it is says that nothing is trained."""
    from skipganomaly.cli import main

    run = tmp_path / "run"
    small = ["--batch-size", "8", *PAPER_SMALL, "--no-progress", "--device", "cpu"]
    assert main(["train", "--data", str(data / "train"), "--out", str(run), "--epochs", "1", *small]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(Detector.load(run / "model.pt").history_) == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "it had finished (2 of 2 epochs), so nothing is trained: its threshold and report are made again" in \
        capsys.readouterr().out
    assert len(Detector.load(run / "model.pt").history_) == 2


def test_torchrun_resume_equals_an_uninterrupted_torchrun(data: Path, tmp_path: Path) -> None:
    """Under torchrun every process reads the state that rank 0 wrote (weights, optimisers, shuffler and
    RNG states; input noise on, so the RNG matters): 1 epoch, then resumed to 2, gives the weights of an
    uninterrupted 2-epoch run with the same 2 processes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "skipganomaly", "train"]
    args = ["--data", str(data / "train"), "--batch-size", "8", *PAPER_SMALL,
            "--model-arg", "noise_sigma=0.05", "--no-progress", "--device", "cpu"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for cmd in ([*torchrun, "--out", str(whole), "--epochs", "2", *args],
                [*torchrun, "--out", str(resumed), "--epochs", "1", *args],
                [*torchrun, "--resume", str(resumed), "--epochs", "2", "--no-progress"]):
        result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 1" in result.stdout
    a, b = _weights(whole / "model.pt"), _weights(resumed / "model.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_a_state_written_before_optimiser_groups_still_resumes(tmp_path: Path) -> None:
    """Format 1 held the GAN optimisers as opt_g / opt_d: such a file resumes to the same weights."""
    from skipganomaly.models import create

    images = torch.from_numpy(blob_images(16)).permute(0, 3, 1, 2).contiguous()
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False)
    state = tmp_path / "m.state.pt"
    torch.manual_seed(0)
    model = create("skipganomaly++", widths=SMALL_WIDTHS)
    train(model, images, images[:0], config, state_path=state)
    saved = torch.load(state, weights_only=True)
    optimizers = saved.pop("optimizers")
    old = {**saved, "format_version": 1, "opt_g": optimizers["generator"], "opt_d": optimizers["discriminator"]}
    torch.save(old, tmp_path / "old.state.pt")
    more = TrainConfig(epochs=2, batch_size=8, device="cpu", progress=False)
    resumed, fresh = create("skipganomaly++", widths=SMALL_WIDTHS), create("skipganomaly++", widths=SMALL_WIDTHS)
    train(resumed, images, images[:0], more, state_path=tmp_path / "old.state.pt", resume=True)
    train(fresh, images, images[:0], more, state_path=state, resume=True)
    for (name, a), b in zip(resumed.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_closed_form_model_resumes_as_finished(tmp_path: Path) -> None:
    det = Detector(model="knn", device="cpu", progress=False).fit(blob_images(20), checkpoint_path=tmp_path / "m.pt")
    again = Detector(model="knn", device="cpu", progress=False).fit(blob_images(20), checkpoint_path=tmp_path / "m.pt",
                                                                    resume=True)
    x = noise_images(3)
    assert np.array_equal(again.decision_function(x), det.decision_function(x))
    assert len(again.history_) == 1
