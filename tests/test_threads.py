"""Torch's CPU threads: ``--threads``, ``SPIKEEP_THREADS``, the default of one, bad values, and
the choice in ``metrics.jsonl`` (spikeep/_threads.py, spikeep/cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from spikeep import _threads
from spikeep.cli import main
from spikeep.plots import read_metrics


def _spikeep(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``spikeep ARGS`` in a fresh process, as the program runs: no thread setting of the
    caller's environment but those in ``env``; it must succeed."""
    full = {k: v for k, v in os.environ.items() if k not in ("SPIKEEP_THREADS", "OMP_WAIT_POLICY")}
    full.update(env)
    run = subprocess.run(
        [sys.executable, "-m", "spikeep.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    return run


def _bench(*flags: str, **env: str) -> dict:
    """``spikeep bench ep-step`` on the tiny model: its JSON report."""
    cmd = ["bench", "ep-step", "--model", "tiny", "--batch", "4", "--free-steps", "2"]
    cmd += ["--nudged-steps", "1", "--repeats", "1", "--json", *flags]
    return json.loads(_spikeep(*cmd, **env).stdout)


def test_threads_come_from_the_flag_then_the_variable_then_one():
    # OMP_NUM_THREADS would give torch 3 threads: spikeep's default of one wins over it
    assert _bench(OMP_NUM_THREADS="3")["threads"] == 1
    env = _bench(SPIKEEP_THREADS="2")
    # above one thread, the program restarts itself with OpenMP's passive wait policy
    assert (env["threads"], env["omp_wait_policy"]) == (2, "PASSIVE")
    assert _bench("--threads", "3", SPIKEEP_THREADS="2")["threads"] == 3
    # a wait policy the user set is kept
    kept = _bench("--threads", "2", OMP_WAIT_POLICY="ACTIVE")
    assert (kept["threads"], kept["omp_wait_policy"]) == (2, "ACTIVE")


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_a_bad_thread_count_is_one_line_naming_it(bad, capsys, monkeypatch):
    monkeypatch.delenv("SPIKEEP_THREADS", raising=False)
    with pytest.raises(SystemExit) as stop:  # argparse's exit
        main(["gdu", "--model", "tiny", "--threads", bad])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads" in err and repr(bad) in err
    monkeypatch.setenv("SPIKEEP_THREADS", bad)
    assert main(["eval", "no-such-checkpoint.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"spikeep eval: error: SPIKEEP_THREADS: expected a positive number of threads, got {bad!r}"
    )


def test_choose_reads_the_variable_only_without_the_flag():
    assert _threads.choose(None, {}) == (1, "default")
    assert _threads.choose(None, {"SPIKEEP_THREADS": " 4 "}) == (4, "SPIKEEP_THREADS")
    assert _threads.choose(2, {"SPIKEEP_THREADS": "x"}) == (2, "--threads")


def test_the_thread_count_is_in_metrics(tmp_path):
    out = tmp_path / "run"
    sets = {
        "data.train_subset": 40,
        "data.test_subset": 20,
        "train.epochs": 1,
        "estimator.free_steps": 2,
        "estimator.nudged_steps": 1,
        "estimator.eval_free_steps": 2,
    }
    cmd = ["train", "quickstart", "--out", str(out), "--threads", "2"]
    _spikeep(*cmd, *(f"--set={k}={v}" for k, v in sets.items()), timeout=300)
    rows = read_metrics(out)
    assert [row["threads"] for row in rows] == [2]
