"""``pvf train classify`` learns a small real-format image set, ``pvf eval`` prints one JSON object, ``pvf models``
lists the registry, and every bad input stops the command with a message naming the problem before training."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from train_fixtures import NO_AUG, TINY_VIT, write_image_folder

from pyvision_fast import cli
from pyvision_fast.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained for 4 epochs on 4 classes x 24 images (32x32 PNG/JPEG), augmentation off."""
    root = tmp_path_factory.mktemp("classify")
    data = write_image_folder(root / "data")
    out = root / "run"
    rc = cli.main(["train", "classify", "--data", str(data), "--output", str(out), *TINY_VIT, *NO_AUG,
                   "--epochs", "4", "--batch-size", "16", "--workers", "0", "--lr", "2e-3", "--no-progress",
                   "--set", "warmup_epochs=1"])
    assert rc == 0
    return data, out


def test_train_classify_learns_and_writes_the_run_folder(trained):
    data, out = trained
    assert {"config.json", "metrics.csv", ckpt.MODEL_LAST, ckpt.MODEL_BEST, ckpt.TRAIN_STATE} <= {
        p.name for p in out.iterdir()}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out)).Reload()
    assert {"train/loss", "val/accuracy", "step/lr", "step/loss"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("step/lr")) == 4 * 6  # 96 images / batch 16, 4 epochs
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,split,loss,lr,accuracy,f1_macro" and len(rows) == 1 + 2 * 4
    final_val = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert final_val["split"] == "val" and float(final_val["accuracy"]) >= 0.95
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 4 and config["model_args"]["depth"] == 2 and config["aa"] is None
    assert config["lr"] == 2e-3 and config["world_size"] == 1
    state = torch.load(out / ckpt.TRAIN_STATE, weights_only=True)
    assert state["epoch"] == 4 and state["best_metric"] >= 0.95 and "optimizer" in state


def test_eval_prints_metrics_as_one_json_object(trained, capsys):
    data, out = trained
    capsys.readouterr()
    # the model name, arguments, class count and image size come from the checkpoint's metadata
    assert cli.main(["eval", "classify", "--data", str(data), "--checkpoint", str(out / ckpt.MODEL_BEST),
                     "--workers", "0", "--set", "crop_pct=1.0"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"loss", "accuracy", "f1_macro", "confusion_matrix"}
    cm = results["confusion_matrix"]
    assert len(cm) == 4 and all(len(r) == 4 for r in cm) and sum(map(sum, cm)) == 4 * 8
    assert results["accuracy"] >= 0.95 and results["accuracy"] == pytest.approx(
        sum(cm[i][i] for i in range(4)) / 32)


def test_models_lists_names_with_parameter_counts(capsys):
    assert cli.main(["models", "vit_t*"]) == 0
    assert capsys.readouterr().out.split() == ["vit_tiny_patch16_224", "5.72M"]
    assert cli.main(["models", "vit_*", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["vit_small_patch16_224"] == 22_050_664
    assert cli.main(["models", "no_such_*"]) == 1


def _fail(capsys, argv, match):
    """``pvf`` exits with status 2 and a one-line message matching ``match``; nothing was trained."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pvf {argv[0]}: error: ") and re.search(match, err), err


@pytest.fixture
def small(tmp_path):
    data = write_image_folder(tmp_path / "data", n_train=2, n_val=1, size=16)
    base = ["train", "classify", "--data", str(data), "--output", str(tmp_path / "out"), *TINY_VIT,
            "--img-size", "16", "--epochs", "1", "--workers", "0", "--no-progress"]
    return data, base, tmp_path / "out"


def test_bad_data_fails_before_training(small, capsys):
    data, base, out = small
    missing = [a if a != str(data) else str(data / "nope") for a in base]
    _fail(capsys, missing, r"does not exist")
    (data / "train" / "empty").mkdir()
    _fail(capsys, base, r"without images.*empty")
    (data / "train" / "empty").rmdir()
    victim = next((data / "train" / "flat").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:100])
    _fail(capsys, base, r"1 image\(s\).*cannot be decoded.*" + victim.name)
    with pytest.warns(UserWarning, match=r"skipped 1 image"):
        assert cli.main([*base, "--set", "bad_images=skip", "batch_size=2", "mixup=0", "cutmix=0"]) == 0
    victim.unlink()
    shutil.rmtree(out)
    _fail(capsys, [*base, "--set", "num_classes=3"], r"label 3 .*outside the class range \[0, 3\)")
    assert not out.exists()


def test_bad_arguments_fail_before_training(small, capsys):
    data, base, out = small
    _fail(capsys, ["train", "segment", *base[2:]], r"unknown recipe 'segment'; known recipes: .*classify")
    _fail(capsys, [*base, "--model", "vit_giant"], r"unknown model 'vit_giant'")
    _fail(capsys, [*base, "--set", "lr_typo=1"], r"unknown config key\(s\) \['lr_typo'\].*valid keys: .*warmup_epochs")
    _fail(capsys, [*base, "--model-arg", "depth"], r"--model-arg expects KEY=VALUE")
    _fail(capsys, [*base, "--model-arg", "wings=2"], r"unknown argument|unexpected keyword")
    assert not out.exists()


def test_output_and_resume_checks(small, capsys, tmp_path):
    data, base, out = small
    assert cli.main([*base, "--set", "mixup=0", "cutmix=0"]) == 0
    _fail(capsys, base, r"already holds a run.*--resume.*--overwrite")
    assert cli.main([*base, "--overwrite", "--set", "mixup=0", "cutmix=0", "--amp"]) == 0
    assert "--amp is ignored on CPU" in capsys.readouterr().err
    other = [a if a != "depth=2" else "depth=1" for a in base]
    _fail(capsys, [*other, "--resume", str(out)], r"another model.*depth")
    _fail(capsys, [*base, "--resume", str(tmp_path / "nothing")], r"does not exist")
