"""The generic training loop: learns, is reproducible, resets D, stops early, refuses NaN."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from skipganomaly.data.images import as_image_tensor, to_unit_range
from skipganomaly.errors import ConfigError
from skipganomaly.models import GanModel, create, get_model_class, list_models
from skipganomaly.training import TrainConfig, TrainingError, batched_apply, train
from skipganomaly.training.loop import make_optimizers, train_step
from skipganomaly.training.device import prepare_batch
from tests.conftest import SMALL_WIDTHS, blob_images, fast

CPU = dict(device="cpu", progress=False)


def _data(n: int = 48) -> torch.Tensor:
    return as_image_tensor(blob_images(n, channels=1), 32, 1)


def _model(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create("skipganomaly++", in_channels=1, image_size=32, widths=SMALL_WIDTHS, **kw)


def _val_loss(model: torch.nn.Module, images: torch.Tensor) -> float:
    return float(batched_apply(model.validation_loss, model, images, 64, torch.device("cpu")).mean())


def test_short_training_lowers_reconstruction_loss() -> None:
    data = _data(72)
    train_set, val = data[:64], data[64:]
    model = _model()
    before = _val_loss(model, val)
    history = train(model, train_set, val, TrainConfig(epochs=8, batch_size=16, lr=5e-3, **CPU))
    after = _val_loss(model, val)
    assert after < 0.95 * before, (before, after)
    assert history[-1].val_loss == pytest.approx(after, rel=1e-5)
    assert history[-1].losses["g_con"] < history[0].losses["g_con"]


def test_same_seed_gives_identical_weights() -> None:
    data = _data(24)
    states = []
    for _ in range(2):
        model = _model(noise_sigma=0.1)
        train(model, data[:20], data[20:], TrainConfig(epochs=2, batch_size=8, seed=3, **CPU))
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_discriminator_reset_rule_fires_below_threshold() -> None:
    data = _data(24)
    model = _model()
    history = train(model, data[:20], data[20:],
                    TrainConfig(epochs=1, batch_size=8, d_reset_threshold=1e9, **CPU))
    assert history[0].d_resets == 2  # 20 images // 8 = 2 steps, a reset after each


def test_early_stopping_stops_before_the_last_epoch_and_restores_the_best() -> None:
    """Validation losses 3, 1, 2, 2.5, ... with patience 2: the best is epoch 2, training stops after
    epoch 4 (of 8), and the model ends with epoch 2's weights, not epoch 4's."""
    data = _data(24)
    model = _model()
    planned = iter([3.0, 1.0, 2.0, 2.5, 0.5, 0.4, 0.3, 0.2])
    model.validation_loss = lambda x: torch.full((len(x),), next(planned))  # one call per epoch (4 images)
    seen: list[dict[str, torch.Tensor]] = []
    history = train(model, data[:20], data[20:], TrainConfig(epochs=8, batch_size=8, lr=5e-3, patience=2, **CPU),
                    on_epoch_end=lambda r: seen.append({k: v.clone() for k, v in model.state_dict().items()}))
    assert [r.val_loss for r in history] == [3.0, 1.0, 2.0, 2.5]
    assert any(not torch.equal(seen[1][k], seen[3][k]) for k in seen[1])  # epochs 2 and 4 differ
    for key, value in model.state_dict().items():
        assert torch.equal(value, seen[1][key]), key


@pytest.mark.parametrize("name", [n for n in list_models() if issubclass(get_model_class(n), GanModel)])
def test_a_discriminator_reset_changes_d_only(name: str) -> None:
    """The reset re-initialises D's weights; G's weights and both Adam states stay as they were
    (spec section C: the Adam state is not reset)."""
    torch.manual_seed(0)
    model = create(name, **{**fast(name), **({"widths": SMALL_WIDTHS} if name == "skipganomaly++" else {})})
    config = TrainConfig(batch_size=8, d_reset_threshold=math.inf, **CPU)
    opts = make_optimizers(model, config)
    x = prepare_batch(as_image_tensor(blob_images(8), 32, 3), torch.device("cpu"))
    before: dict[str, object] = {}
    reset = model.reset_discriminator

    def snapshot_then_reset() -> None:
        before["g"] = [p.detach().clone() for p in model.generator_parameters()]
        before["d"] = [p.detach().clone() for p in model.discriminator_parameters()]
        before["opt"] = copy.deepcopy([opts["generator"].state_dict(), opts["discriminator"].state_dict()])
        reset()

    model.reset_discriminator = snapshot_then_reset
    assert train_step(model, x, opts, config, torch.device("cpu"))["d_reset"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before["g"], model.generator_parameters(), strict=True))
    weights = [(a, b) for a, b in zip(before["d"], model.discriminator_parameters(), strict=True) if a.dim() > 1]
    assert weights and all(not torch.equal(a, b) for a, b in weights)
    after = [opts["generator"].state_dict(), opts["discriminator"].state_dict()]
    for saved, now in zip(before["opt"], after, strict=True):  # type: ignore[call-overload]
        assert saved["param_groups"] == now["param_groups"]
        for key in saved["state"]:
            for field, value in saved["state"][key].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(now["state"][key][field])), (key, field)


def test_non_finite_loss_stops_with_epoch_and_step() -> None:
    data = _data(24)
    model = _model()
    original = model.generator_loss

    def poisoned(x: torch.Tensor):  # type: ignore[no-untyped-def]
        step = original(x)
        step.loss = step.loss * float("nan")
        return step

    model.generator_loss = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        train(model, data[:20], data[20:], TrainConfig(epochs=1, batch_size=8, **CPU))


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(lr=0.0), dict(patience=0)])
def test_bad_training_options_are_config_errors(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_batched_apply_autocast_path_disabled_on_cpu_matches() -> None:
    model = _model().eval()
    data = _data(5)
    scores = batched_apply(model.score, model, data, 2, torch.device("cpu"), amp=False)
    with torch.no_grad():
        direct = model.score(to_unit_range(data))
    torch.testing.assert_close(scores, direct, rtol=1e-4, atol=1e-6)


def test_compiled_blocks_train_like_eager() -> None:
    """--compile must not change what is learned. The "eager" backend runs torch.compile's graph
    capture without code generation, so the test stays fast on a CPU; the state-dict keys stay as they
    were, so checkpoints of compiled runs load anywhere."""
    data = _data(24)
    states = []
    for backend in (None, "eager"):
        model = _model()
        train(model, data[:20], data[20:], TrainConfig(epochs=1, batch_size=8, compile=backend, **CPU))
        states.append(model.state_dict())
    assert list(states[0]) == list(states[1])
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_nan_keeps_the_last_complete_epoch_resumable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from skipganomaly.training.loop import load_train_state

    data = _data(24)
    model = _model()
    original = model.generator_loss
    calls = [0]

    def poisoned_in_epoch_2(x: torch.Tensor):  # type: ignore[no-untyped-def]
        calls[0] += 1
        step = original(x)
        if calls[0] > 2:  # 2 steps per epoch: the first step of epoch 2 goes bad
            step.loss = step.loss * float("nan")
        return step

    model.generator_loss = poisoned_in_epoch_2  # type: ignore[method-assign]
    state = tmp_path / "state.pt"
    config = TrainConfig(epochs=3, batch_size=8, **CPU)
    with pytest.raises(TrainingError, match="epoch 2, step 1"):
        train(model, data[:20], data[20:], config, state_path=state)
    saved = load_train_state(state, config)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    history = train(_model(), data[:20], data[20:], config, state_path=state, resume=True)
    assert [r.epoch for r in history] == [1, 2, 3]
    assert all(math.isfinite(r.val_loss) for r in history)


def test_amp_trains_under_bf16_autocast_on_the_cpu() -> None:
    """amp=True must really autocast on a CPU (weights differ from float32's after one step, by bf16
    rounding only); the default must not (float32 weights, bit for bit, as amp=False)."""
    from skipganomaly.training import make_optimizers, prepare_batch, train_step

    x = prepare_batch(_data(8), torch.device("cpu"))
    weights = {}
    for amp in ("default", False, True):
        model = _model().train()
        config = TrainConfig(batch_size=8, **CPU) if amp == "default" else TrainConfig(batch_size=8, amp=amp, **CPU)
        train_step(model, x, make_optimizers(model, config), config, torch.device("cpu"))
        weights[amp] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["default"], weights[False])
    assert not torch.equal(weights[True], weights[False])
    # One Adam step moves each weight by at most ~lr; bf16 rounding changes directions, not magnitudes.
    assert (weights[True] - weights[False]).abs().max() <= 2 * 2e-4 + 1e-6


@pytest.mark.parametrize("native, amp, warns", [(False, True, True), (True, True, False), (False, False, False)])
def test_training_warns_when_bf16_would_be_emulated(monkeypatch: pytest.MonkeyPatch, native: bool, amp: bool,
                                                    warns: bool) -> None:
    """--amp on a CPU with no bf16 arithmetic ran a training pass about 10 times slower than float32: say so."""
    import warnings

    from skipganomaly.training import device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_model(), _data(8), _data(4), TrainConfig(batch_size=8, epochs=1, amp=amp, **CPU))
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert len(emulated) == int(warns)


def test_batched_apply_shows_a_bar_only_when_named_and_over_several_batches(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from skipganomaly import progress
    from skipganomaly.training.inference import batched_apply

    monkeypatch.setattr(progress, "_terminal", lambda stream: True)  # in a terminal (a log file shows no such bar)
    model = torch.nn.Identity()
    images = as_image_tensor(blob_images(6), 32, 3)
    for desc, batch, shown in (("scoring", 2, True), ("scoring", 8, False), (None, 2, False)):
        out = batched_apply(lambda x: x.mean((1, 2, 3)), model, images, batch, torch.device("cpu"), desc=desc)
        assert out.shape == (6,)
        assert ("scoring" in capsys.readouterr().err) == shown


def test_a_model_whose_optimiser_groups_contradict_trained_by_gradient_is_refused() -> None:
    """The loop takes `trained_by_gradient` as the one signal of a closed-form fit: a model whose optimiser
    groups say otherwise is an error, not trained the other way."""
    config = TrainConfig(**CPU)
    closed = create("knn", image_size=32)
    closed.trained_by_gradient = True  # says gradient, has no optimiser group
    gradient = _model()
    gradient.trained_by_gradient = False  # says closed form, has optimiser groups
    for model in (closed, gradient):
        with pytest.raises(ConfigError, match="trained_by_gradient is"):
            make_optimizers(model, config)


def test_a_loss_that_is_not_finite_is_named_once_and_the_advice_fits_what_was_kept(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A NaN loss stops training, naming it ("loss", not "loss loss"); only a run with a checkpoint of an earlier
    epoch is told that one is kept."""
    import skipganomaly.training.loop as loop

    model = create("rotation", in_channels=3, image_size=32, widths=[8, 16, 32])
    images = as_image_tensor(blob_images(20), 32, 3)
    real_step, calls, nan_from = loop.train_step, [], [1]

    def step(*args, **kwargs):  # type: ignore[no-untyped-def]
        values = real_step(*args, **kwargs)
        calls.append(1)
        return {**values, "loss": math.nan} if len(calls) >= nan_from[0] else values

    monkeypatch.setattr(loop, "train_step", step)
    with pytest.raises(TrainingError, match=r"^loss is not finite at epoch 1, step 1; try a lower --lr"):
        train(model, images, images[:4], TrainConfig(epochs=1, batch_size=8, progress=False), None)
    calls.clear()
    nan_from[0] = 3  # 20 images at batch 8: two steps an epoch, so the first step of epoch 2
    with pytest.raises(TrainingError, match=r"^loss is not finite at epoch 2, step 1; the checkpoint of the last "
                                            "complete epoch is kept"):
        train(model, images, images[:4], TrainConfig(epochs=2, batch_size=8, progress=False), None,
              state_path=tmp_path / "m.state.pt")
