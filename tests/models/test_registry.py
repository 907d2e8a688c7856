"""Every registered model: created by name, forward, one training step reaches every parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skipganomaly.data.images import as_image_tensor, to_unit_range
from skipganomaly.errors import ConfigError
from skipganomaly.models import AnomalyModel, create, list_models
from tests.conftest import blob_images, fast, noise_images


def test_default_model_is_registered_first() -> None:
    from skipganomaly.detector import DEFAULT_MODEL
    assert list_models()[0] == DEFAULT_MODEL


def test_unknown_model_and_argument_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        create("nope")
    with pytest.raises(ConfigError, match="bad arguments"):
        create("skipganomaly++", not_an_option=1)


@pytest.mark.parametrize("name", list_models())
def test_config_rebuilds_an_identical_model(name: str) -> None:
    model = create(name, in_channels=1, image_size=32)
    again = create(name, **model.config())
    assert again.config() == model.config()
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels", [1, 3])
def test_every_parameter_gets_a_gradient(name: str, channels: int) -> None:
    """Each phase's loss reaches every parameter of its optimiser group; the groups split the model."""
    torch.manual_seed(0)
    model: AnomalyModel = create(name, in_channels=channels, image_size=32)
    if not list(model.parameters()):
        assert not model.trained_by_gradient and not model.training_phases()
        pytest.skip(f"{name} has no parameters (fitted in closed form)")
    model.train()
    x = _varied_batch(channels)
    groups = model.optimizer_groups()
    phases = model.training_phases()
    assert {phase.group for phase in phases} == set(groups)
    cache: dict[str, torch.Tensor] = {}
    for phase in phases:
        model.zero_grad(set_to_none=True)
        step = phase.loss(x, cache)
        step.loss.backward()
        cache.update(step.cache)
        _assert_all_have_gradients(groups[phase.group], name, phase.group)
    ids = [set(map(id, params)) for params in groups.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)), "optimiser groups overlap"
    assert len(set().union(*ids)) == len(list(model.parameters())), "a parameter is in no optimiser group"


def _varied_batch(channels: int) -> torch.Tensor:
    """Images that differ in brightness and structure, so that no ReLU is dead for the whole batch."""
    images = np.concatenate([blob_images(4, channels=channels), noise_images(4, channels=channels)])
    images[::2] = 255 - images[::2]
    return to_unit_range(as_image_tensor(images, 32, channels))


def _assert_all_have_gradients(params: list[torch.nn.Parameter], name: str, which: str) -> None:
    missing = [i for i, p in enumerate(params) if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{name}: {len(missing)} {which} parameters got no gradient"


def _fitted(name: str) -> tuple[AnomalyModel, torch.Tensor]:
    """The model in eval mode, fitted (closed form, statistics) where its score needs it, and its training images:
    images that differ in place and colour (on plain noise an untrained network gives every image nearly the same
    features, and a score standardised by their spread only amplifies rounding)."""
    torch.manual_seed(0)
    model = create(name, in_channels=3, image_size=32, **fast(name)).eval()
    train = torch.from_numpy(blob_images(40)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        if not model.trained_by_gradient:
            model.fit_closed_form(train)
        if model.fits_statistics:
            model.fit_statistics(train)
    return model, train


@pytest.mark.parametrize("name", list_models())
def test_the_grids_name_what_the_model_shows(name: str) -> None:
    """A model that rebuilds nothing (its `reconstruct` is the input) says so (no output row in the reports), and a
    map that is not a residual of its output is named a saliency: the example grids must not claim otherwise."""
    from skipganomaly.models.base import RESIDUAL_NAME, SALIENCY_NAME

    model, _ = _fitted(name)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        rebuilt = model.reconstruct(x)
    assert (model.output_name() is None) == torch.equal(rebuilt, x)
    if model.map_name() != SALIENCY_NAME:  # a residual: the map is |x - output| averaged over channels
        torch.testing.assert_close(model.anomaly_map(x), (x - rebuilt).abs().mean(1), rtol=1e-4, atol=1e-5)
        assert model.map_name() == RESIDUAL_NAME or "|input - " in model.map_name()


@pytest.mark.parametrize("name", list_models())
def test_score_is_independent_of_batch_size_and_order(name: str) -> None:
    model, _ = _fitted(name)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        together = model.score(x)
        alone = torch.cat([model.score(x[i:i + 1]) for i in range(len(x))])
        perm = torch.tensor([5, 2, 0, 4, 1, 3])
        shuffled = model.score(x[perm])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shuffled, together[perm], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, options, message", [
    ("ganomaly", {"ngf": 0}, "ngf must be at least 1"), ("ganomaly", {"nz": 0}, "nz must be at least 1"),
    ("skipganomaly++", {"nz": 0}, "nz must be at least 1"), ("egbad", {"width": 0}, "width must be at least 1"),
    ("anogan", {"nz": 0}, "nz must be at least 1"), ("skipganomaly", {"ngf": 0}, "ngf must be at least 1"),
    ("skipganomaly++", {"widths": [8, 16, 32]}, "widths needs 5 entries"),
])
def test_options_a_network_cannot_be_built_with_are_config_errors(name: str, options: dict, message: str) -> None:
    """A zero width built empty layers that failed only in training, and a constructor's ValueError was a
    traceback: both are one-line ConfigErrors when the model is created."""
    with pytest.raises(ConfigError, match=message):
        create(name, **options)


def _contract_error(cls: type, name: str) -> str:
    from skipganomaly.models.registry import register

    before = list_models()
    with pytest.raises(TypeError) as err:
        register(name)(cls)
    assert list_models() == before  # a refused class is not registered
    return str(err.value)


def test_register_refuses_a_model_that_breaks_the_contract() -> None:
    """Said at import, in one line naming what is missing: not a bare NotImplementedError after an epoch, not
    options that go unchecked, not a name that --models would split."""
    from skipganomaly.models.base import ClosedFormModel

    class NoScore(AnomalyModel):
        def optimizer_groups(self):  # type: ignore[no-untyped-def]
            return {}

        def training_phases(self):  # type: ignore[no-untyped-def]
            return []

        def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3))

    class NoPhases(AnomalyModel):
        def score(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3))

        validation_loss = score

    class NoFit(ClosedFormModel):
        score = NoPhases.score

    class Complete(NoPhases):
        optimizer_groups, training_phases = NoScore.optimizer_groups, NoScore.training_phases

    class Unhinted(Complete):
        def __init__(self, in_channels: int = 3, image_size: int = 32, power=2) -> None:  # type: ignore[no-untyped-def]
            super().__init__(in_channels, image_size)
            self.power = power

    class Unresolvable(Complete):
        def __init__(self, in_channels: int = 3, image_size: int = 32, widths: "Undefined" = None) -> None:  # type: ignore[name-defined]  # noqa: F821
            super().__init__(in_channels, image_size)
            self.widths = widths

    assert "does not define score" in _contract_error(NoScore, "noscore")
    assert "does not define optimizer_groups, training_phases" in _contract_error(NoPhases, "nophases")
    assert "fitted in closed form) does not define fit_closed_form" in _contract_error(NoFit, "nofit")
    assert "power have no type hint" in _contract_error(Unhinted, "unhinted")
    assert "cannot be resolved" in _contract_error(Unresolvable, "unresolvable")
    for bad in ("conv,ae", "KNN", "a:b", ""):
        assert "use lower-case letters" in _contract_error(NoPhases, bad)
    assert "is taken by skipganomaly.models.knn.model.Knn" in _contract_error(Complete, "knn")


def test_every_model_folder_registers_a_model() -> None:
    """A model folder whose module `models/__init__.py` forgets to import registers nothing: caught here, not
    by a `-k name` that silently selects no test."""
    from pathlib import Path

    import skipganomaly.models as package
    from skipganomaly.models import get_model_class

    folders = {p.parent.name for p in Path(package.__file__).parent.glob("*/__init__.py")}
    registered = {get_model_class(name).__module__.split(".")[2] for name in list_models()}
    assert folders <= registered, f"folders that register no model: {sorted(folders - registered)}"


@pytest.mark.parametrize("name", list_models())
def test_outputs_have_the_documented_shapes(name: str) -> None:
    """score and validation_loss [B], anomaly_map [B, H, W], reconstruct the shape of x (3 channels in, 3 out)."""
    model, train = _fitted(name)
    x = train[:5]
    with torch.no_grad():
        assert model.score(x).shape == (5,)
        assert model.validation_loss(x).shape == (5,)
        assert model.reconstruct(x).shape == x.shape
    assert model.anomaly_map(x).shape == (5, 32, 32)


def test_every_model_has_a_row_in_the_readme_models_table() -> None:
    """The README's table of models is where a reader looks first: a registered model missing from it is a
    model nobody finds."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().split()[0].strip("`") for line in table.splitlines()
            if line.startswith("| `")}
    assert set(list_models()) <= rows, f"models without a README row: {sorted(set(list_models()) - rows)}"
