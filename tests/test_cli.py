"""The ``spikeep`` command line: bad arguments give one line on stderr and exit status 2; the
``gradcheck``, ``gdu`` and ``bench ep-step`` commands print the documented output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from spikeep.cli import main
from spikeep.estimators import ESTIMATORS

TINY = str(ROOT / "models" / "tiny.toml")
GC = ["gradcheck", "--model", TINY, "--estimator", "symmetric"]
PARAMS = ["W1", "b1", "W2", "b2", "W3", "b3"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``main`` in-process: the exit code (returned, or from argparse's SystemExit), stdout
    and stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, out: str, err: str, *names: str):
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("spikeep")
    assert err.endswith("\n") and err.count("\n") == 1, err
    for name in names:
        assert name in err


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "broken.toml").write_text('name = "x"\n[[layers]\nsize = 4\n')
    text = (ROOT / "models" / "tiny.toml").read_text()
    (d / "unknown_key.toml").write_text("bogus_key = 1\n" + text)
    return d


BAD_ARGS = [
    ("beta-abc", [*GC, "--beta", "abc"], ["--beta", "'abc'"]),
    ("beta-zero", [*GC, "--beta", "0"], ["--beta", "'0'"]),
    ("beta-nan", [*GC, "--beta", "nan"], ["--beta", "'nan'"]),
    ("beta-inf", [*GC, "--beta", "inf"], ["--beta", "'inf'"]),
    ("points-1", [*GC, "--beta", "0.01", "--points", "1"], ["--points", "'1'"]),
    ("batch-0", [*GC, "--beta", "0.01", "--batch", "0"], ["--batch", "'0'"]),
    ("seed-negative", [*GC, "--beta", "0.01", "--seed", "-1"], ["--seed", "'-1'"]),
    ("dtype-float16", [*GC, "--beta", "0.01", "--dtype", "float16"], ["--dtype", "float16"]),
    (
        "estimator-nope",
        ["gradcheck", "--model", TINY, "--estimator", "nope", "--beta", "0.01"],
        ["--estimator", "nope"],
    ),
    ("missing-model-arg", ["gradcheck", "--estimator", "symmetric", "--beta", "0.01"], ["--model"]),
    ("gdu-beta-zero", ["gdu", "--model", TINY, "--beta", "0"], ["--beta"]),
    ("gdu-missing-model", ["gdu"], ["--model"]),
    ("bench-negative-beta", ["bench", "ep-step", "--model", TINY, "--beta", "-1"], ["--beta"]),
    ("bench-no-what", ["bench"], ["what"]),
    ("no-command", [], ["command"]),
    ("unknown-option", [*GC, "--beta", "0.01", "--frobnicate"], ["--frobnicate"]),
]


@pytest.mark.parametrize(("argv", "names"), [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_bad_argument(capsys, argv, names):
    code, out, err = run(argv, capsys)
    assert_usage_error(code, out, err, *names)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (
            [
                "gradcheck",
                "--model",
                "{d}/absent.toml",
                "--estimator",
                "symmetric",
                "--beta",
                "0.1",
            ],
            ["{d}/absent.toml", "no such model spec file"],
        ),
        (
            [
                "gradcheck",
                "--model",
                "{d}/broken.toml",
                "--estimator",
                "symmetric",
                "--beta",
                "0.1",
            ],
            ["{d}/broken.toml", "not valid TOML"],
        ),
        (
            ["gradcheck", "--model", "{d}/unknown_key.toml", "--estimator", "all", "--beta", "0.1"],
            ["{d}/unknown_key.toml", "bogus_key"],
        ),
        (["gdu", "--model", "{d}/unknown_key.toml"], ["{d}/unknown_key.toml", "bogus_key"]),
        (["bench", "ep-step", "--model", "{d}/broken.toml"], ["{d}/broken.toml", "not valid TOML"]),
    ],
    ids=["missing-file", "invalid-toml", "unknown-key", "gdu-unknown-key", "bench-invalid-toml"],
)
def test_bad_model_file(capsys, bad_models, argv, names):
    argv = [a.format(d=bad_models) for a in argv]
    code, out, err = run(argv, capsys)
    assert_usage_error(code, out, err, *(n.format(d=bad_models) for n in names))
    assert err.startswith(f"spikeep {argv[0]}: error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_bench_cuda_absent(capsys):
    argv = ["bench", "ep-step", "--model", TINY, "--device", "cuda", "--repeats", "1"]
    code, out, err = run(argv, capsys)
    assert_usage_error(code, out, err, "--device cuda", "no CUDA device")


def test_bench_bad_device(capsys):
    argv = ["bench", "ep-step", "--model", TINY, "--device", "tpu", "--repeats", "1"]
    code, out, err = run(argv, capsys)
    assert_usage_error(code, out, err, "--device", "'tpu'")


def test_gdu_steps_not_fewer_than_free_steps(capsys):
    argv = ["gdu", "--model", TINY, "--steps", "400", "--free-steps", "300"]
    code, out, err = run(argv, capsys)
    assert_usage_error(code, out, err, "--steps 400", "--free-steps 300")


def test_gdu_refuses_the_alternating_dynamics(capsys):
    argv = ["gdu", "--model", str(ROOT / "models" / "conv_ce_alternating.toml")]
    code, out, err = run(argv, capsys)
    assert_usage_error(code, out, err, "'alternating' dynamics", "conv_ce_alternating.toml")


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([*GC, "--beta", "abc"], ["--beta", "'abc'"]),
        ([*GC, "--beta", "0.1", "--model", "no/such/model.toml"], ["no/such/model.toml"]),
    ],
    ids=["argparse-error", "model-error"],
)
def test_subprocess_bad_argument(argv, names):
    """The real entry point: one line on stderr, no traceback, exit status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "spikeep.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_usage_error(proc.returncode, proc.stdout, proc.stderr, *names)


def test_gradcheck_json(capsys):
    argv = [*GC, "--beta", "0.001", "--dtype", "float64", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert err == ""
    assert out.count("\n") == 1
    result = json.loads(out)
    assert isinstance(result, dict)
    assert {
        "model",
        "estimator",
        "beta",
        "reference",
        "cosine",
        "rel_error",
        "per_param",
        "free_residual",
    } <= set(result)
    assert result["model"] == TINY
    assert result["estimator"] == "symmetric"
    assert result["beta"] == 0.001
    assert result["reference"] == "implicit"
    assert result["dtype"] == "float64"
    assert 0 <= result["rel_error"] < 1e-4
    assert result["cosine"] > 1 - 1e-8
    assert result["free_residual"] < 1e-8
    assert sorted(result["per_param"]) == sorted(PARAMS)
    for name in PARAMS:
        entry = result["per_param"][name]
        assert set(entry) >= {"cosine", "rel_error"}
        assert entry["cosine"] > 1 - 1e-6
        assert 0 <= entry["rel_error"] < 1e-3


def test_gradcheck_all_text(capsys):
    argv = [
        "gradcheck",
        "--model",
        TINY,
        "--estimator",
        "all",
        "--beta",
        "0.01",
        "--batch",
        "4",
        "--free-steps",
        "60",
        "--nudged-steps",
        "60",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"model {TINY}")
    header = next(i for i, line in enumerate(lines) if line.startswith("estimator"))
    rows = [line.split()[0] for line in lines[header + 1 :]]
    assert rows == list(ESTIMATORS)
    assert "skipped" not in out
    assert "per parameter" not in out  # only printed for a single estimator


def test_gradcheck_single_text_lists_params(capsys):
    argv = [*GC, "--beta", "0.01", "--batch", "2", "--free-steps", "40", "--nudged-steps", "40"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    lines = out.splitlines()
    start = lines.index("per parameter:")
    assert [line.split()[0] for line in lines[start + 1 :]] == PARAMS


def test_gdu_json(capsys):
    argv = ["gdu", "--model", TINY, "--steps", "3", "--free-steps", "40", "--batch", "2", "--json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == TINY
    assert result["steps"] == 3
    assert isinstance(result["per_step"], list)
    assert len(result["per_step"]) == 3
    for row in result["per_step"]:
        assert {"step", "states", "params"} <= set(row)
        assert {"cosine", "rel_error"} <= set(row["params"])
        # the GDU property at beta 1e-4 on a settled free phase: measured rel. error 5e-5 to 2e-4
        assert row["states"]["rel_error"] < 1e-3 and row["params"]["rel_error"] < 1e-3


@pytest.mark.parametrize("estimator", ["one-sided", "bptt"])
def test_bench_ep_step_json(estimator, capsys):
    argv = [
        "bench",
        "ep-step",
        "--model",
        TINY,
        "--batch",
        "4",
        "--free-steps",
        "3",
        "--nudged-steps",
        "2",
        "--repeats",
        "2",
        "--estimator",
        estimator,
        "--json",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["estimator"] == estimator and result["ms_per_batch"] > 0
    assert result["samples_per_s"] > 0
    assert result["samples_per_s"] == pytest.approx(4 / (result["ms_per_batch"] / 1e3))
    assert (result["batch"], result["free_steps"], result["nudged_steps"]) == (4, 3, 2)
    assert result["repeats"] == 2
    assert result["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
