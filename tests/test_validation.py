"""The validation split: ``[data] validation = N`` training images held out with the run's seed,
never trained on, scored every epoch as the test images are, and scored again by
``spikeep eval --split val`` from the checkpoint alone."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import assert_usage_error, run
from test_faults import train_argv

from spikeep import batches, data, plots
from spikeep import train as train_mod
from spikeep.plots import read_metrics

HELD = 60  # of mnist-embedded's 10,000 training images
OVER = {"data.validation": HELD, "data.augment": False, "train.epochs": 2}


def keys(images: torch.Tensor) -> set[bytes]:
    return {bytes(im.flatten().tolist()) for im in images}


def test_validation_images_never_appear_in_a_training_batch(tmp_path, monkeypatch, capsys):
    full = data.load("mnist-embedded", "train")
    assert len(keys(full.images)) == len(full.images)  # no duplicates: an image names itself
    trained, val = batches.split_train(full, HELD, 100, seed=0)
    assert len(val) == HELD and len(trained) == 100
    assert keys(val.images) <= keys(full.images) and not keys(val.images) & keys(trained.images)
    _, other = batches.split_train(full, HELD, 100, seed=1)
    assert keys(other.images) != keys(val.images)  # drawn with the seed

    seen = []
    prepare = train_mod.prepare_batch

    def spy(net, images, *args):
        seen.append(images.clone())
        return prepare(net, images, *args)

    monkeypatch.setattr(train_mod, "prepare_batch", spy)
    code, _, err = run(train_argv(tmp_path / "run", **OVER), capsys)
    assert code == 0, err
    assert len(seen) == 2 * 100 // 20  # every batch of both epochs
    batches_seen = keys(torch.cat(seen))
    assert batches_seen == keys(trained.images)  # all trained on, none held out
    assert not batches_seen & keys(val.images)
    assert f"100 training, {HELD} validation, 50 test images" in err
    rows = read_metrics(tmp_path / "run")
    assert all({"val_error", "val_loss"} <= set(r) for r in rows)
    assert err.count("val error") == 2


def _eval(checkpoint, capsys, *extra):
    code, out, err = run(["eval", str(checkpoint), "--json", *extra], capsys)
    return code, (json.loads(out) if code == 0 else None), err


def test_val_error_equals_eval_split_val(tmp_path, capsys):
    out = tmp_path / "run"
    code, summary, err = run(train_argv(out, "--json", **OVER), capsys)
    assert code == 0, err
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads(summary)["val_error"] == row["val_error"]
    code, val, _ = _eval(out / "checkpoint.pt", capsys, "--split", "val")
    assert code == 0 and val["images"] == HELD and val["split"] == "val"
    assert val["error"] == row["val_error"] and val["loss"] == row["val_loss"]
    code, test, _ = _eval(out / "checkpoint.pt", capsys)
    assert test["error"] == row["test_error"]
    # the training images the run used: the first train_subset of those not held out
    code, trained, _ = _eval(out / "checkpoint.pt", capsys, "--split", "train")
    assert code == 0 and trained["images"] == 100
    code, rest, _ = _eval(out / "checkpoint.pt", capsys, "--split", "train", "--all")
    assert code == 0 and rest["images"] == 10_000 - HELD
    fig = plots.curves(plots.read_metrics(out), "run")  # spikeep plot shows the curve
    assert [line.get_label() for line in fig.axes[1].lines] == ["train", "validation", "test"]


def test_split_val_needs_a_run_that_held_images_out(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_argv(out), capsys)[0] == 0
    ckpt = str(out / "checkpoint.pt")
    code, text, err = run(["eval", ckpt, "--split", "val"], capsys)
    assert_usage_error(code, text, err, "--split val", "data.validation = 0")


@pytest.mark.parametrize("held", [10_000, 20_000])
def test_holding_out_every_training_image_is_one_line(tmp_path, capsys, held):
    out = tmp_path / "run"
    code, text, err = run(train_argv(out, **{"data.validation": held}), capsys)
    assert_usage_error(code, text, err, "data.validation", str(held), "10000")
    assert not out.exists()


def test_a_spiking_run_scores_its_validation_images_in_spikes(tmp_path, capsys):
    """The snntorch engine scores the held-out images as it scores the test images (spiking,
    with the rate twin beside); ``eval --split val --engine snntorch`` gives the same."""
    out = tmp_path / "snn"
    over = {
        "data.name": "mnist-embedded",
        "data.validation": 30,
        "data.test_subset": 20,
        "snntorch.settle": 10,
        "snntorch.window": 20,
        "snntorch.eval_settle": 10,
        "snntorch.eval_window": 20,
    }
    code, _, err = run(train_argv(out, protocol="snn_mnist_mlp", **over), capsys)
    assert code == 0, err
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_error", "val_spikes_per_sample", "val_error_rate"} <= set(row)
    code, val, err = _eval(out / "checkpoint.pt", capsys, "--split", "val", "--engine", "snntorch")
    assert code == 0, err
    assert (val["images"], val["error"], val["loss"]) == (30, row["val_error"], row["val_loss"])
    code, rated, _ = _eval(out / "checkpoint.pt", capsys, "--split", "val")  # the rate engine's
    assert rated["error"] == row["val_error_rate"]
