"""``spikeep compare`` (spikeep/compare.py), the spiking half of ``make demo``: one checkpoint's
test error on every registered engine, and a Brian2 raster of one test image.

Runs on the embedded MNIST subset only. A rate-engine run of a tiny ``[spiking]`` network
(784-16-10, tests/test_brian2_train.py's) trains in seconds; its raster runs Brian2's runtime
device (nothing compiles), the brian2 engine's row compiles one cpp_standalone project (about
35 s the first time on two shared cores), so the whole command is marked ``slow``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT
from test_brian2_train import write_tiny
from test_cli import assert_usage_error, run

from spikeep import compare, engine
from spikeep.cli import main

QUICK = ROOT / "protocols" / "quickstart.toml"
SHORT = [
    "--set=data.train_subset=40",
    "--set=data.test_subset=20",
    "--set=train.epochs=1",
    "--set=train.batch_size=20",
    "--set=estimator.free_steps=5",
    "--set=estimator.nudged_steps=2",
    "--set=estimator.eval_free_steps=10",
]


@pytest.fixture(scope="module")
def spiking_run(tmp_path_factory) -> Path:
    """The checkpoint of a one-epoch rate run of the tiny [spiking] network (8 images per
    spiking phase of the snntorch engine: short)."""
    d = tmp_path_factory.mktemp("compare")
    p = write_tiny(d)
    text = p.read_text() + "[snntorch]\ntau = 4\neval_settle = 10\neval_window = 30\n"
    p.write_text(text.replace('engine = "brian2"', 'engine = "rate"'))
    argv = ["train", str(p), "--out", str(d / "run"), *SHORT, "--set=train.batch_size=4"]
    assert main(argv) == 0
    return d / "run" / "checkpoint.pt"


@pytest.fixture(scope="module")
def readout_run(tmp_path_factory) -> Path:
    """The checkpoint of a one-epoch quickstart run with its cross-entropy model: no [spiking]
    section, so the brian2 engine cannot run it."""
    d = tmp_path_factory.mktemp("readout")
    model = ROOT / "models" / "mlp_784_500_10_ce.toml"
    argv = ["train", str(QUICK), "--out", str(d / "run"), *SHORT, f'--set=model="{model}"']
    assert main(argv) == 0
    return d / "run" / "checkpoint.pt"


def test_an_engine_that_cannot_run_the_network_is_a_row_saying_why(readout_run, capsys):
    capsys.readouterr()
    code, out, err = run(["compare", str(readout_run), "--images", "12"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("mnist-embedded test, the first 12 images")
    rows = {line.split()[0]: line for line in lines[2 : 2 + len(engine.names())]}
    assert list(rows) == list(engine.names())  # every registered engine, in order
    assert re.fullmatch(r"rate +\d+\.\d\d% +- +10 steps +\d+\.\d", rows["rate"])
    # the quickstart's own [snntorch] test pass
    assert re.fullmatch(r"snntorch +\d+\.\d\d% +\d+ +40 \+ 100 steps +\d+\.\d", rows["snntorch"])
    assert "skipped:" in rows["brian2"] and "[spiking]" in rows["brian2"]
    assert lines[-1].startswith("raster: skipped:") and "[spiking]" in lines[-1]
    assert not (readout_run.parent / "raster.png").exists()


def test_the_json_has_the_same_rows(readout_run, capsys):
    capsys.readouterr()
    code, out, err = run(["compare", str(readout_run), "--images", "12", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert (r["images"], r["data"]) == (12, "mnist-embedded")
    rate, snn, b2 = r["rows"]
    assert rate["spikes_per_image"] is None and snn["spikes_per_image"] > 0
    assert 0 <= rate["error"] <= 100 and "skipped" in b2


def test_the_raster_of_one_image_is_written_without_compiling(spiking_run, tmp_path):
    png = tmp_path / "r.png"
    r = compare.raster(spiking_run, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the tiny run's protocol is one-sided: a free and a nudged phase, 20 ms each
    assert [name for name, _, _ in r["phases"]] == ["free", "nudged, beta +0.5"]
    assert r["phases"][-1][2] == pytest.approx(0.04)
    hidden, out = r["spikes"].values()
    assert hidden > 0 and out > 0 and 0 <= r["prediction"] < 10


@pytest.mark.slow
def test_the_command_prints_three_rows_and_writes_the_raster(spiking_run, capsys):
    capsys.readouterr()
    code, out, err = run(["compare", str(spiking_run), "--images", "8"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    rows = lines[2:5]
    assert [row.split()[0] for row in rows] == ["rate", "snntorch", "brian2"]
    for row in rows:  # an error, and spikes per image except for the rate engine
        assert re.match(r"\w+ +\d+\.\d\d% +(-|\d+) ", row), row
    assert rows[2].split()[2] != "-" and "10 + 10 ms" in rows[2]
    png = spiking_run.parent / "raster.png"
    assert lines[5] == (
        f"raster: {png} (Brian2, the first test image, label 7, predicted "
        f"{lines[5].split('predicted ')[1][0]}; free 20 ms, nudged, beta +0.5 20 ms)"
    )
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "argv,names",
    [
        (["compare", "no/such/checkpoint.pt"], ["no/such/checkpoint.pt", "no such checkpoint"]),
        (["compare", "x.pt", "--images", "0"], ["--images", "'0'"]),
        (["compare", "x.pt", "--images", "many"], ["--images", "'many'"]),
        (["compare", "x.pt", "--threads", "0"], ["--threads", "'0'"]),
    ],
    ids=["missing-checkpoint", "images-0", "images-text", "threads-0"],
)
def test_bad_input_is_one_line_and_exit_2(argv, names, capsys):
    assert_usage_error(*run(argv, capsys), *names)


def test_an_unwritable_raster_is_one_line(spiking_run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "r.png"  # a folder that is a file
    code, out, err = run(
        ["compare", str(spiking_run), "--images", "4", "--raster", str(bad)], capsys
    )
    assert_usage_error(code, "", err, "--raster", str(bad))
