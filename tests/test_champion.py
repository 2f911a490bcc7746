"""The champion means one thing: the best model trained on MNIST's canonical split. Runs on
other data or another split, even with tracking.register=true and a "perfect" validation score,
are registered without taking the alias. Uses the session's champion (real MNIST) and its store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlp.run import registry
from mlp.run.experiment import run
from tests.helpers import compose_cfg

# The command: tracking.register=true trainer.epochs=1 (on a small network: seconds)
SMALL = ["tracking.register=true", "trainer.epochs=1", "model.num_layers=1", "model.layer_size=16"]


def _store(champion: dict) -> tuple[MlflowClient, Path]:
    uri = champion["tracking_uri"]
    return MlflowClient(uri), Path(uri.removeprefix("sqlite:///")).parent


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,trained_on",
    [
        (["data.val_size=1"], "MNIST with val_size 1, split_seed 0"),  # the issue's: 1/1 "beat" 0.9922
        (["data=synthetic"], "data=synthetic"),  # its model read 7 as 8
    ],
)
def test_other_data_or_split_never_moves_the_champion(
    champion: dict, monkeypatch: pytest.MonkeyPatch, overrides: list[str], trained_on: str
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client, mlruns = _store(champion)
    before = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert (before.tags["data.name"], before.tags["champion_eligible"]) == ("mnist", "true")
    cfg = compose_cfg([*SMALL, "trainer.device=cpu", "trainer.progress=false", *overrides, f"tracking.dir={mlruns}"])
    result = run(cfg)
    assert result.registered is not None and not result.registered.champion
    assert (
        f"champion stays version {before.version}: this model was trained on {trained_on}, the champion on "
        "MNIST's canonical split (val_size 10000, split_seed 0); only such models are compared"
    ) in result.summary()
    after = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert after.version == before.version
    mine = client.get_model_version("mnist-mlp", result.registered.version)
    assert mine.tags["champion_eligible"] == "false" and mine.run_id == result.run_id


@pytest.mark.slow
def test_a_champion_without_data_tags_is_read_from_its_runs_params(champion: dict) -> None:
    """A version registered before versions recorded their data (no data tags): its run, trained on
    the canonical split, makes it comparable, so another split does not take the alias, and a
    canonical model must beat its validation accuracy."""
    client, _ = _store(champion)
    result = champion["result"]
    mlflow.set_tracking_uri(champion["tracking_uri"])
    logged = mlflow.search_logged_models(experiment_ids=[result.experiment_id], output_format="list")
    model_uri = next(m.model_uri for m in logged if m.source_run_id == result.run_id)  # not the runs above
    old = mlflow.register_model(model_uri, "legacy", tags={"run_id": result.run_id, "val_acc": repr(result.val_acc)})
    client.set_registered_model_alias("legacy", "champion", old.version)
    other = registry.register(model_uri, "legacy", result.run_id, 1.0, {}, registry.TrainedOn("mnist", 1, 0))
    assert not other.champion and "the champion on MNIST's canonical split" in other.summary()
    same = registry.register(model_uri, "legacy", result.run_id, result.val_acc, {}, registry.canonical_split())
    assert not same.champion and "is not above" in same.summary()
    assert client.get_model_version_by_alias("legacy", "champion").version == old.version
