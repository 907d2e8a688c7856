"""The one settings object: model options from constructor signatures, scikit-learn conventions, files
written by earlier versions, and CLI flags derived from the settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from skipganomaly import Detector
from skipganomaly.cli import build_parser, main
from skipganomaly.detector import DetectorSettings, model_option_names, setting_defaults, setting_fields, setting_names
from skipganomaly.errors import ConfigError, SkipGanomalyError
from skipganomaly.models import create, get_model_class, list_models
from skipganomaly.options import parse_model_args

from .conftest import smooth_images

FIXTURE = Path(__file__).parent / "fixtures" / "run-v1"

# String options have no generic "other value": the one to try instead of each default.
OTHER_TEXT = {"paper": "rotation", "rotation": "paper", "ce+knn": "ce", "map": "ce+knn", "first": "all"}
OTHER_TEXT_OF_MODEL = {("skipganomaly++rot", "map"): "rotation",  # where a value means another thing
                       ("rotation", "map"): "ce+patch"}  # (and the patch dictionary is fitted, saved, loaded)


def _other(name: str, default: Any, model: str = "") -> Any:
    """A valid value different from `default`, by type (a new option of another type fails here: add it)."""
    if isinstance(default, bool):
        return not default
    if name == "in_channels":
        return 1
    if name == "image_size":
        return 64
    if name == "mask_grid":  # 0 = off; 1 is not a grid
        return 4
    if isinstance(default, int):  # counts and widths: smaller where large, so the fit below stays quick
        return default // 4 + 1 if default >= 16 else default + 1
    if isinstance(default, float):
        return round(default * 0.5 + 0.01, 6)
    if isinstance(default, (list, tuple)):
        return [int(v) // 4 + 1 if int(v) >= 16 else int(v) + 1 for v in default]
    if isinstance(default, str):
        return OTHER_TEXT_OF_MODEL.get((model, default), OTHER_TEXT[default])
    raise AssertionError(f"no alternative value for option {name!r} = {default!r}; add one to this test")


@pytest.mark.parametrize("name", list_models())
def test_every_constructor_argument_survives_save_and_load(name: str, tmp_path: Path) -> None:
    defaults = get_model_class(name).param_defaults()
    changed = {k: _other(k, v, name) for k, v in defaults.items()}
    assert all(changed[k] != (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items())
    geometry = {"image_size": changed.pop("image_size"), "in_channels": changed.pop("in_channels")}
    assert create(name, **geometry, **changed).config() == {**geometry, **changed}
    det = Detector(name, **geometry, epochs=1, batch_size=2, val_fraction=0.0, device="cpu", progress=False, **changed)
    det.fit(smooth_images(10, size=geometry["image_size"], channels=geometry["in_channels"]))
    det.save(tmp_path / "model.pt")
    loaded = Detector.load(tmp_path / "model.pt", device="cpu")
    assert loaded.model_.config() == {**geometry, **changed}
    assert loaded.settings == det.settings  # progress too: as saved unless load is told otherwise


@pytest.mark.parametrize("name", list_models())
def test_model_options_and_settings_never_share_a_name(name: str) -> None:
    assert not set(model_option_names(name)) & set(setting_names()), name


def test_an_option_named_like_a_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`seed=7` would set the training seed and leave a model's own `seed` option at its default, unseen."""
    from skipganomaly.models.knn.model import Knn

    monkeypatch.setattr(Knn, "param_defaults", classmethod(lambda cls: {"k": 5, "seed": 0}))
    with pytest.raises(ConfigError, match=r"model 'knn' takes option\(s\) named like detector settings \(seed\)"):
        Detector("knn", seed=7)


def test_a_model_that_does_not_store_an_argument_cannot_save(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create("knn")
    del model.k
    with pytest.raises(TypeError, match="does not store its constructor argument 'k'"):
        model.config()


def test_sklearn_clone_get_params_and_set_params() -> None:
    from sklearn.base import clone

    det = Detector("knn", k=3, epochs=2, seed=4, progress=False).fit(smooth_images(12))
    copy = clone(det)
    assert copy is not det and copy.get_params() == det.get_params()
    listed = Detector("rotation", widths=[8, 16, 32], seed=np.int64(2), k=np.int64(3))  # a list option, numpy scalars
    assert clone(listed).get_params() == listed.get_params() and listed.get_params()["k"] == 3
    assert copy.model_ is None and det.model_ is not None  # a clone has the settings, not the fitted state
    assert det.get_params()["k"] == 3 and det.get_params()["seed"] == 4
    assert det.set_params(k=7, lr=1e-3) is det
    assert det.settings.model_options == {"k": 7} and det.train_config.lr == 1e-3
    with pytest.raises(ConfigError, match="has no option 'kk'.*its options: k"):
        det.set_params(kk=1)
    with pytest.raises(ConfigError, match="has no option 'epoch'"):
        Detector(epoch=3)


def test_not_fitted_error_is_the_projects_and_scikit_learns() -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from skipganomaly.errors import NotFittedError as Ours

    det = Detector("pca", progress=False)
    with pytest.raises(NotFittedError):
        check_is_fitted(det)
    with pytest.raises(Ours) as caught:
        det.decision_function(smooth_images(2))
    assert isinstance(caught.value, NotFittedError) and isinstance(caught.value, SkipGanomalyError)
    det.fit(smooth_images(20))
    check_is_fitted(det)  # fitted now: no error


def test_settings_round_trip_through_plain_dicts() -> None:
    settings = DetectorSettings.from_params(model="rotation", widths=(8, 16), epochs=2, patience=1)
    plain = settings.as_dict()
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # plain values only
    assert DetectorSettings.from_dict(plain).as_dict() == plain
    older = {k: v for k, v in plain.items() if k != "contamination"}  # written before that setting existed
    assert DetectorSettings.from_dict(older).contamination == setting_defaults()["contamination"]
    with pytest.raises(ConfigError, match="unknown setting.*warp"):
        DetectorSettings.from_dict({**plain, "warp": 9})


def test_result_settings_leave_out_where_and_how_fast() -> None:
    keyed = DetectorSettings().result_settings()
    assert {"epochs", "lr", "amp", "seed", "model_options", "contamination"} <= set(keyed)
    assert not {"device", "progress", "compile", "eval_batch_size"} & set(keyed)


def test_a_version_1_checkpoint_loads_with_the_same_scores() -> None:
    det = Detector.load(FIXTURE / "model.pt", device="cpu")
    expected = json.loads((FIXTURE / "expected_scores.json").read_text())["scores"]
    np.testing.assert_allclose(det.decision_function(smooth_images(6, seed=5)), expected, rtol=1e-5)
    assert det.settings.model_options["widths"] == [4, 4, 8, 8, 8] and det.train_config.seed == 3
    assert det.n_train_images_ == 19 and det.threshold_ is not None


def _fixture_run(tmp_path: Path) -> Path:
    """The committed run directory, with its training images where its config.yaml says they are."""
    images = tmp_path / "imgs"
    images.mkdir()
    for i, array in enumerate(smooth_images(24, seed=1)):
        Image.fromarray(array).save(images / f"{i:02d}.png")
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "data": str(images), "out": str(run)}))
    return run


def test_a_version_1_run_directory_resumes(tmp_path: Path) -> None:
    run = _fixture_run(tmp_path)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    first = json.loads((FIXTURE / "metrics.jsonl").read_text().splitlines()[0])
    assert records[0] == first  # epoch 1 is the interrupted run's, kept, not trained again
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["format_version"] == 2 and saved["settings"]["epochs"] == 2
    assert saved["settings"]["model_options"]["nz"] == 8 and saved["settings"]["seed"] == 3
    assert len(Detector.load(run / "model.pt").history_) == 2


def test_resume_refuses_a_changed_setting_that_must_stay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _fixture_run(tmp_path)
    assert main(["train", "--resume", str(run), "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "with other --lr:" in err and "only --compile, --device, --epochs, --no-progress may be given anew" in err
    assert main(["train", "--resume", str(run), "--model-arg", "nz=4"]) == 2
    assert "with other --model-arg:" in capsys.readouterr().err
    # the same values as saved, as the original command plus --resume gives them: no change, so no refusal
    assert main(["train", "--resume", str(run), "--lr", "0.0002", "--model-arg", "nz=8", "--device", "cpu",
                 "--epochs", "2"]) == 0


def _flags(command: str) -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.option_strings[0]: a.help for a in sub._actions if a.option_strings}


def test_training_flags_come_from_the_settings_and_read_the_same_everywhere() -> None:
    train, benchmark, speed = _flags("train"), _flags("benchmark"), _flags("bench-speed")
    for f in setting_fields():
        flag = f.metadata["flag"]
        if flag is None:
            continue
        assert flag in train, flag  # every setting with a flag can be given to train
        if flag in benchmark:
            assert benchmark[flag].split(" (default")[0] == train[flag].split(" (default")[0]
    assert {"--epochs", "--lr", "--lr-schedule", "--amp", "--model-arg"} <= set(benchmark)
    assert "--batch-size" in speed and "--model-arg" in speed and "--seed" not in benchmark


def test_model_arg_is_one_rule_with_or_without_a_model_prefix() -> None:
    assert parse_model_args(["k=3"], ["knn"]) == parse_model_args(["knn:k=3"], ["knn"]) == {"knn": {"k": 3}}
    both = parse_model_args(["k=3", "pca:explained_variance=0.5"], ["knn", "pca"])
    assert both == {"knn": {"k": 3}, "pca": {"k": 3, "explained_variance": 0.5}}
    assert parse_model_args(["rotation:widths=[8,16]"], ["rotation"]) == {"rotation": {"widths": [8, 16]}}
    with pytest.raises(ConfigError, match="names model 'anogan'"):
        parse_model_args(["anogan:search_steps=3"], ["knn"])
    with pytest.raises(ConfigError, match="expects"):
        parse_model_args(["k"], ["knn"])


def test_a_cosine_learning_rate_schedule_reaches_every_optimiser(tmp_path: Path) -> None:
    import math

    import torch

    from skipganomaly.training import TrainConfig, train
    from skipganomaly.training.loop import load_train_state

    from .conftest import SMALL_WIDTHS

    config = TrainConfig(epochs=3, batch_size=8, lr=1e-3, lr_schedule="cosine", device="cpu", progress=False)
    assert [config.epoch_lr(e) for e in (1, 2, 3)] == pytest.approx(
        [1e-3, 1e-3 * (1 + math.cos(math.pi / 3)) / 2, 1e-3 * (1 + math.cos(2 * math.pi / 3)) / 2])
    assert TrainConfig().epoch_lr(3) == 2e-4  # constant by default, as the reference
    images = torch.from_numpy(smooth_images(24, channels=1)).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(0)
    model = create("skipganomaly++", in_channels=1, widths=SMALL_WIDTHS)
    train(model, images[:16], images[16:], config, state_path=tmp_path / "state.pt")
    state = load_train_state(tmp_path / "state.pt")
    for name in ("generator", "discriminator"):
        assert state["optimizers"][name]["param_groups"][0]["lr"] == pytest.approx(config.epoch_lr(3))
    # The new option is a setting like the others: a flag, a cell-key entry, fixed on resume.
    assert "--lr-schedule" in _flags("train") and "--lr-schedule" in _flags("benchmark")
    assert DetectorSettings().result_settings()["lr_schedule"] == "constant"
    assert "lr_schedule" in TrainConfig.names(on_resume="fixed")


WRONG_VALUE = {bool: "maybe", int: "abc", float: "abc", str: 3}  # YAML reads `--model-arg k=abc` as text


@pytest.mark.parametrize("model", list_models())
def test_every_typed_option_refuses_a_value_of_another_type_in_one_line(model: str) -> None:
    """Read from each constructor's annotations: a wrong-typed value is a ConfigError naming the option
    when the Detector is built (not a traceback from inside the network, nor a value stored as given)."""
    from typing import Sequence

    from skipganomaly.detector import model_option_names
    from skipganomaly.models import get_model_class

    hints = get_model_class(model).param_hints()
    checked = 0
    for name in model_option_names(model):
        hint = hints.get(name)
        wrong = WRONG_VALUE.get(hint, "abc" if hint == Sequence[int] else None)
        if wrong is None:
            continue
        with pytest.raises(ConfigError, match=f"option {name}="):
            Detector(model, **{name: wrong})
        checked += 1
    assert checked >= 1


def test_list_options_check_their_items_and_floats_take_integers() -> None:
    with pytest.raises(ConfigError, match=r"widths=\[8, 'x'\] is not a list of integers"):
        Detector(widths=[8, "x"])
    with pytest.raises(ConfigError, match="widths=5 is not a list of integers"):
        Detector(widths=5)
    assert Detector(contrastive=1, widths=(8, 16, 32)).get_params()["contrastive"] == 1
