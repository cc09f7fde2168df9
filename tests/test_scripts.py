"""The diagnostic scripts' own logic (``scripts/``), on small networks with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import script, variant


@pytest.mark.parametrize("activation, slope", [("hard_sigmoid", 1.0), ("hard_sigmoid_half", 0.5)])
def test_saturation_counts_clipped_rates(activation, slope):
    net = variant("tiny", activation=activation)  # 5-7-6-3, every layer but x dynamic
    params = {k: torch.zeros_like(v) for k, v in net.init_params(0).items()}
    x = torch.randn(8, 5, dtype=torch.float64)
    x[:, 0] = torch.tensor([1.0, -1.0] * 4)
    params["b1"][:3], params["b1"][3:] = 5.0, -5.0  # h1: units 0-2 at 1, 3-6 at 0 ...
    params["W1"][3, 0] = 10.0  # ... but unit 3 at 1 for the 4 images with x_0 = 1
    params["b2"][:] = -5.0  # h2 at 0 ...
    params["W2"][0, 0] = 10.0  # ... but unit 0, driven by h1's unit 0, at 1
    params["b3"][1:] = 0.5 / slope  # y: unit 0 at 0, units 1-2 at rate 0.5
    h1, h2, y = script("saturation").saturation(net, params, x, steps=20)
    assert h1["shape"] == (7,)
    assert h1["high"] == pytest.approx(28 / 56) and h1["low"] == pytest.approx(28 / 56)
    assert h1["dead_high"] == pytest.approx(3 / 7) and h1["dead_low"] == pytest.approx(3 / 7)
    assert h2["high"] == pytest.approx(1 / 6) and h2["dead_high"] == pytest.approx(1 / 6)
    assert h2["low"] == pytest.approx(5 / 6) and h2["dead_low"] == pytest.approx(5 / 6)
    assert h1["inside"] == h2["inside"] == 0.0
    assert y["low"] == y["dead_low"] == pytest.approx(1 / 3)
    assert y["inside"] == pytest.approx(2 / 3) and y["mean"] == pytest.approx(1 / 3)


def test_saturation_refuses_an_activation_without_a_box():
    net = variant("tiny")  # sigmoid4
    with pytest.raises(ValueError, match="'sigmoid4' has no box"):
        script("saturation").saturation(net, net.init_params(0), torch.zeros(2, 5), steps=1)


def test_table1_compare_reports_the_gap_to_the_authors_band(tmp_path, capsys):
    compare = script("table1_compare")
    anchors = tmp_path / "logs.csv"
    lines = ["setting,algo,run,epoch,train_accuracy,val_accuracy,epoch_seconds"]
    for run, accs in (("run1", (0.90, 0.95, 0.96)), ("run2", (0.92, 0.94, 0.97))):
        for epoch, acc in enumerate(accs, start=1):
            lines.append(f"noise,hep,{run},{epoch},0.9,{acc},140.0")
    lines.append("noise,continuous_hep,run1,1,0.5,0.5,600.0")
    anchors.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": 1, "test_error": 9.0}, {"epoch": 2, "test_error": 3.0}]
    rows.append({"epoch": 3, "test_error": 4.5})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    figure = tmp_path / "table1.png"
    argv = [f"{run}=noise/hep", "--anchors", str(anchors), "--out", str(figure), "--json"]
    assert compare.main(argv) == 0
    out = json.loads(capsys.readouterr().out)[f"{run}=noise/hep"]
    report = out["epochs"]
    assert [r["where"] for r in report] == ["inside", "above", "below"]
    assert [r["low"] for r in report] == pytest.approx([90.0, 94.0, 96.0])
    assert [r["gap"] for r in report] == pytest.approx([1.0, 3.0, -0.5])
    # the spread over epochs 2-3: ours below both runs' band at 3 only; each of their runs
    # below the other's "band" (one run) when it is the lower one: run1 at 3, run2 at 2
    spread = out["spread"]
    assert spread["epochs"] == [2, 3]
    assert [e for e, _ in spread["ours"]] == [3] and spread["ours"][0][1] == pytest.approx(-0.5)
    assert [e for e, _ in spread["ours_vs_two"]["run1+run2"]] == [3]
    assert {k: [e for e, _ in d] for k, d in spread["theirs"].items()} == {
        "run1": [3],
        "run2": [2],
    }
    assert spread["theirs"]["run2"][0][1] == pytest.approx(-1.0)
    assert compare.main([f"{run}=noise/hep", "--anchors", str(anchors)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "epochs 2-3: below the band of their 2 runs at 1 (worst -0.50)" in line
    assert figure.stat().st_size > 0
    # --markdown: the docs' table, with the training accuracy and each epoch's wall time
    rows = [
        {**r, "train_error": 10.0 - r["epoch"], "wall_s": 100.0 * r["epoch"] ** 2} for r in rows
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert compare.main([f"{run}=noise/hep", "--anchors", str(anchors), "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| epoch | ours: test accuracy (train, with the noise) | their two runs |" in text
    assert "| 1 | 91.00% (91.00%) | 90.00-92.00% | +1.00 points, inside | 100 s |" in text
    assert "| 3 | 95.50% (93.00%) | 96.00-97.00% | -0.50 points, below | 500 s |" in text
    assert "Epochs after the first below the band: 3 (-0.50) (points)." in text
    assert "each of their runs below the band of the other one at 1 (worst -1.00) / 1" in text
    assert "Their GPU epochs after the first: 140-140 s (logs)." in text
    assert compare.main([f"{run}=noise/nothing", "--anchors", str(anchors)]) == 2
    capsys.readouterr()
    # a tie with the band's bottom is inside, whatever the floats' last bits
    assert 100 - 90.42 != 100 * 0.0958
    ours = compare.accuracies([{"epoch": 2, "test_error": 90.42}])
    assert compare.compare(ours, {2: (compare.percent(0.0958), 10.1)})[0]["where"] == "inside"
    # two runs of one algorithm share its panel; a folder with no checkpoint to read the key
    # from is one line, exit 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_error": 8.0}) + "\n")
    argv = [f"{run}=noise/hep", f"{other}=noise/hep", "--anchors", str(anchors), "--json"]
    assert compare.main([*argv, "--out", str(figure)]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {f"{run}=noise/hep", f"{other}=noise/hep"}
    assert compare.main([str(other), "--anchors", str(anchors)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err


def test_spiking_curves_plots_each_run_and_every_target(tmp_path, capsys):
    runs = []
    for name, errors in (("a", [4.0, 3.0]), ("b", [3.5, 1.9])):
        path = tmp_path / f"{name}.metrics.jsonl"
        rows = [
            {"epoch": k + 1, "test_error": e, "test_error_rate": e - 0.1, "train_error": 2 * e}
            for k, e in enumerate(errors)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(f"{name}={path}")
    out = tmp_path / "curves.png"
    argv = [*runs, "--target", "2.5", "--target", "3.0", "--out", str(out)]
    assert script("spiking_curves").main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and "test 1.90% (rate 1.80%)" in printed[3]
    assert out.stat().st_size > 0
    assert script("spiking_curves").main(["a=" + str(tmp_path / "none.jsonl")]) == 2
    assert script("spiking_curves").main(["no-label"]) == 2


def test_keep_runs_saves_a_run_into_the_repository_and_restores_it_to_resume(tmp_path, capsys):
    from spikeep import protocol as proto
    from spikeep import train as train_mod

    keep = script("keep_runs")
    small = {"data.train_subset": 100, "data.test_subset": 50, "train.batch_size": 20}
    small |= {"estimator.free_steps": 5, "estimator.nudged_steps": 2, "train.epochs": 1}
    small |= {"train.keep_epochs": 1}
    quickstart = Path(__file__).resolve().parents[1] / "protocols" / "quickstart.toml"
    quick = proto.load(quickstart, small)
    run, kept, runs = tmp_path / "runs" / "quick", tmp_path / "kept", tmp_path / "fresh"
    train_mod.train(quick, run, progress=False, log=lambda m: None)
    assert keep.main(["save", str(run), "--kept", str(kept)]) == 0
    row = capsys.readouterr().out.strip()
    assert (
        row.startswith("| `quick` | 1 of 1 epochs done, 0.0 h of wall time | ") and "UTC |" in row
    )
    for name in ("checkpoint.pt", "metrics.jsonl", "epochs/epoch_1.pt"):
        assert (kept / "quick" / name).read_bytes() == (run / name).read_bytes()
    assert keep.main(["restore", "quick", "--runs", str(runs), "--kept", str(kept)]) == 0
    more = proto.load(quickstart, {**small, "train.epochs": 2})
    train_mod.train(more, runs / "quick", resume=True, progress=False, log=lambda m: None)
    lines = (runs / "quick" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]  # went on from the kept epoch
    assert (runs / "quick" / "epochs" / "epoch_1.pt").is_file()  # restored beside the checkpoint
    assert lines[0] == (run / "metrics.jsonl").read_text().splitlines()[0]
    capsys.readouterr()
    # a runs folder holding a checkpoint, a name not kept, a folder without a checkpoint: one line
    for argv in (
        ["restore", "quick", "--runs", str(runs), "--kept", str(kept)],
        ["restore", "other", "--runs", str(runs), "--kept", str(kept)],
        ["save", str(tmp_path / "kept"), "--kept", str(kept)],
    ):
        assert keep.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("keep_runs: "), err
    mid = {"epoch": 1, "batch": 1234, "wall_s": 7200.0, "protocol": {"train": {"epochs": 50}}}
    assert keep.where(mid) == "1 of 50 epochs done, 1,234 batches into epoch 2, 2.0 h of wall time"


def test_average_checkpoints_means_the_parameters_and_refuses_other_shapes(tmp_path, capsys):
    from spikeep import checkpoint

    average = script("average_checkpoints")
    net = variant("tiny")
    paths = []
    for seed in range(3):
        params = net.init_params(seed)
        ckpt = {
            "format": "spikeep-checkpoint",
            "version": 1,
            "protocol": {},
            "model_source": "tiny",
            "params": params,
            "momentum": {k: torch.ones_like(v) for k, v in params.items()},
            "epoch": seed + 1,
            "batch": 0,
            "wall_s": 1.0,
        }
        paths.append(checkpoint.save(ckpt, tmp_path / f"epoch_{seed + 1}.pt"))
    out = tmp_path / "mean.pt"
    assert average.main([*map(str, paths), "--out", str(out)]) == 0
    mean = checkpoint.load(out)
    loaded = [checkpoint.load(p)["params"] for p in paths]
    for k, v in mean["params"].items():
        assert torch.allclose(v, (loaded[0][k] + loaded[1][k] + loaded[2][k]) / 3)
        assert not torch.equal(v, loaded[2][k])
    assert mean["epoch"] == 3 and all(not m.any() for m in mean["momentum"].values())
    assert mean["averaged_from"] == [str(p) for p in paths]

    other = checkpoint.load(paths[0])
    other["params"] = {**other["params"], "W1": torch.zeros(2, 2, dtype=torch.float64)}
    checkpoint.save(other, tmp_path / "other.pt")
    assert average.main([str(paths[1]), str(tmp_path / "other.pt"), "--out", str(out)]) == 2
    assert "epoch_2.pt: parameter W1 is (7, 5), in " in capsys.readouterr().err
