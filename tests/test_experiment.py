"""One run through the compose API on tiny synthetic data, MLflow in a temporary SQLite file."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from mlp.errors import DivergedError
from mlp.run.experiment import run
from mlp.run.tracking import flatten, tracking_uri

EPOCH_METRICS = ["train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_seconds"]
ARTIFACTS = {
    "config.yaml",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "learning_curves.png",
    "misclassified.png",
    "per_class_metrics.csv",
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory):
    """One tiny run with model logging on; shared by the assertions below."""
    from omegaconf import OmegaConf

    from tests.helpers import TINY, compose_cfg

    mlruns = tmp_path_factory.mktemp("store") / "mlruns"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = compose_cfg([*TINY, "trainer.epochs=3", f"tracking.dir={mlruns}"])
        result = run(cfg)
        client = MlflowClient(tracking_uri(cfg.tracking))
        yield cfg, result, client, client.get_run(result.run_id), OmegaConf


def test_run_returns_validation_accuracy_and_logs_it(logged) -> None:
    cfg, result, client, mlrun, _ = logged
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == "mlp-4x512-leaky_relu"
    assert result.val_acc == mlrun.data.metrics["val/acc"]
    assert result.test_acc == mlrun.data.metrics["test/acc"]
    assert 0.5 < result.val_acc <= 1.0  # the synthetic digits are learnable


def test_every_epoch_metric_is_logged_with_step_epoch(logged) -> None:
    cfg, result, client, mlrun, _ = logged
    for key in EPOCH_METRICS:
        history = client.get_metric_history(mlrun.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    losses = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "train/loss")}
    assert losses[3] < losses[1]  # it learns


def test_final_metrics_and_the_per_class_table(logged, tmp_path) -> None:
    _, result, client, mlrun, _ = logged
    metrics = mlrun.data.metrics
    for key in ("test/loss", "test/acc"):
        assert key in metrics
    assert not [k for k in metrics if k.count("/") > 1]  # per-class figures are a table, not 30 metrics
    assert metrics["test/acc"] * 200 == round(metrics["test/acc"] * 200)  # exact: a count over 200 images
    assert repr(metrics["val/acc"]) == repr(round(metrics["val/acc"], 2))  # e.g. 0.97, not 0.9700000286
    path = client.download_artifacts(mlrun.info.run_id, "per_class_metrics.csv", str(tmp_path))
    table = np.loadtxt(path, delimiter=",", skiprows=1)  # digit, precision, recall, f1
    assert table.shape == (10, 4) and ((0 <= table[:, 1:]) & (table[:, 1:] <= 1)).all()
    # Recall averaged over equally sized classes is the accuracy (synthetic test labels are balanced).
    assert table[:, 2].mean() == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_params_are_the_whole_resolved_config(logged) -> None:
    cfg, _, _, mlrun, OmegaConf = logged
    expected = {k: str(v) for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}
    assert mlrun.data.params == {k: v for k, v in expected.items() if not k.startswith("sweep.")}
    assert {k for k in expected if k.startswith("sweep.")} == {f"sweep.{k}" for k in cfg.sweep}  # all null here
    assert "${" not in "".join(mlrun.data.params.values())  # interpolations resolved


def test_tags_make_the_run_rebuildable(logged) -> None:
    _, _, _, mlrun, _ = logged
    tags = mlrun.data.tags
    assert tags["device"] == "cpu" and tags["seed"] == "0"
    assert tags["cpu"] and tags["cpu"] != "unknown CPU"  # which machine gave the time/* figures
    assert "hydra.overrides" in tags
    assert tags["versions.torch"] and tags["versions.mlflow"] and tags["versions.hydra-core"]
    assert len(tags["mlflow.source.git.commit"]) == 40


def test_artifacts_are_there_and_readable(logged, tmp_path) -> None:
    _, _, client, mlrun, _ = logged
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert ARTIFACTS <= names
    for name in ("confusion_matrix.png", "learning_curves.png", "misclassified.png"):
        image = imread(client.download_artifacts(mlrun.info.run_id, name, str(tmp_path)))
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.01  # a real picture
    csv = np.loadtxt(
        client.download_artifacts(mlrun.info.run_id, "confusion_matrix.csv", str(tmp_path)), delimiter=",", skiprows=1
    )
    assert csv.shape == (10, 11) and csv[:, 1:].sum() == 200  # every test image counted once
    metrics = mlrun.data.metrics
    assert np.trace(csv[:, 1:]) / 200 == pytest.approx(metrics["test/acc"])


def test_model_is_logged_and_loads_without_pickle(logged, tmp_path) -> None:
    cfg, _, client, mlrun, _ = logged
    import torch

    from mlp.run import data

    models = mlflow.search_logged_models(experiment_ids=[mlrun.info.experiment_id], output_format="list")
    model = [m for m in models if m.source_run_id == mlrun.info.run_id][0]
    loaded = mlflow.pytorch.load_model(model.model_uri)
    splits = data.load(
        "synthetic", "", cfg.data.val_size, cfg.data.split_seed, "cpu", cfg.data.num_train, cfg.data.num_test
    )
    probs = loaded(splits.test_images)  # the model takes 0-255 pixels [N, 28, 28] and returns probabilities
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)))
    preds = probs.argmax(dim=1)
    # The loaded model predicts what the trained one did, image by image: the same confusion
    # matrix as the run logged, so the same test accuracy to the last digit.
    cm = torch.bincount(splits.test_y * 10 + preds, minlength=100).reshape(10, 10)
    logged_cm = np.loadtxt(
        client.download_artifacts(mlrun.info.run_id, "confusion_matrix.csv", str(tmp_path)), delimiter=",", skiprows=1
    )[:, 1:]
    assert cm.tolist() == logged_cm.astype(int).tolist()
    assert (preds == splits.test_y).sum().item() / len(preds) == mlrun.data.metrics["test/acc"]
    assert isinstance(loaded, torch.nn.Module)
    local = Path(mlflow.artifacts.download_artifacts(model.model_uri))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "data/model.pt2" in files  # a torch.export graph
    assert not [f for f in files if f.endswith((".pth", ".pkl", ".pickle"))]  # no pickled objects
    # The signature and the input example say what the model takes and gives.
    info = mlflow.models.get_model_info(model.model_uri)
    (inputs,), (outputs,) = info.signature.inputs.to_dict(), info.signature.outputs.to_dict()
    assert inputs["tensor-spec"] == {"dtype": "uint8", "shape": (-1, 28, 28)}
    assert outputs["tensor-spec"] == {"dtype": "float32", "shape": (-1, 10)}
    example = np.asarray(json.loads((local / "input_example.json").read_text()))
    assert example.shape == (4, 28, 28) and example.max() > 200  # raw pixels, not normalised ones
    assert "mnist-mlp" not in [m.name for m in client.search_registered_models()]  # a plain run registers nothing


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_same_config_and_seed_give_identical_metrics(tiny_cfg) -> None:
    cfg = tiny_cfg("tracking.log_model=false", "model.dropout=0.2")
    a, b = run(cfg), run(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    for key in EPOCH_METRICS[:4]:
        ha = [m.value for m in sorted(client.get_metric_history(a.run_id, key), key=lambda m: m.step)]
        hb = [m.value for m in sorted(client.get_metric_history(b.run_id, key), key=lambda m: m.step)]
        assert ha == hb, key
    assert a.test_acc == b.test_acc
    c = run(tiny_cfg("tracking.log_model=false", "model.dropout=0.2", "trainer.seed=1"))
    assert c.metrics["train/loss"] != a.metrics["train/loss"]  # the seed matters


@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_divergence_fails_the_run_in_mlflow(tiny_cfg) -> None:
    cfg = tiny_cfg("optimizer=sgd", "optimizer.lr=1e30", "schedule=constant", "tracking.log_model=false")
    with pytest.raises(DivergedError, match="non-finite"):
        run(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    [failed] = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert failed.info.status == "FAILED"
    assert "non-finite" in failed.data.tags["failure_reason"]


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_bf16_autocast_trains_and_differs_from_fp32_only_in_rounding(tiny_cfg) -> None:
    fp32 = run(tiny_cfg("tracking.log_model=false", "trainer.precision=fp32"))
    bf16 = run(tiny_cfg("tracking.log_model=false", "trainer.precision=bf16"))
    assert bf16.metrics["train/loss"] != fp32.metrics["train/loss"]  # the forward pass really ran in bfloat16
    assert bf16.val_acc > 0.5 and abs(bf16.val_acc - fp32.val_acc) <= 0.05  # it learns as much


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("flags\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni", True),  # AVX512-BF16 (AMD Zen 4, Cooper Lake)
        ("flags\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile", True),  # AMX (Sapphire Rapids)
        ("flags\t: fpu sse2 avx2 fma avx512f avx512bw", False),  # AVX-512 without BF16: emulated, slower
        ("flags\t: fpu sse2 avx2 fma", False),
    ],
)
def test_precision_auto_is_bf16_only_where_the_cpu_has_it(flags: str, expected: bool) -> None:
    import torch

    from mlp.run.device import native_bf16, pick_precision

    assert native_bf16(torch.device("cpu"), flags) is expected
    assert (
        pick_precision("fp32", torch.device("cpu")) == "fp32" and pick_precision("bf16", torch.device("cpu")) == "bf16"
    )
    assert pick_precision("auto", torch.device("cpu")) == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")


@pytest.mark.slow  # trains a model (the fast path keeps test_experiment's one shared run)
@pytest.mark.usefixtures("seeded_store")  # logs to a copy of an empty store: see conftest
def test_a_run_records_the_precision_it_trained_in(tiny_cfg) -> None:
    import torch

    from mlp.run.device import pick_precision

    result = run(tiny_cfg("tracking.log_model=false", "trainer.precision=auto"))
    tags = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert tags["precision"] == pick_precision("auto", torch.device("cpu"))  # what auto meant on this machine
