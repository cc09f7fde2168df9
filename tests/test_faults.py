"""Faults a user meets: nothing is lost and nothing is silent.

A second run into a folder that holds one, two runs at once, an edited model file, a damaged
checkpoint, a missing data folder, Ctrl-C mid-epoch, a cut metrics line: each is refused in one
line (exit status 2, no traceback, nothing written) or recovered from without losing work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_same_run, interrupt
from test_cli import assert_usage_error, run

from spikeep import checkpoint
from spikeep import train as train_mod

QUICK = ROOT / "protocols" / "quickstart.toml"
SMALL = {
    "data.train_subset": 100,
    "data.test_subset": 50,
    "train.epochs": 1,
    "train.batch_size": 20,
    "estimator.free_steps": 5,
    "estimator.nudged_steps": 2,
    "estimator.eval_free_steps": 5,
}


def sets(**over) -> list[str]:
    text = lambda v: json.dumps(v) if isinstance(v, bool) else v  # noqa: E731
    return [f"--set={k}={text(v)}" for k, v in {**SMALL, **over}.items()]


def train_argv(out, *extra, protocol=QUICK, **over) -> list[str]:
    return ["train", str(protocol), "--out", str(out), *sets(**over), *extra]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def done(tmp_path, capsys):
    """A finished one-epoch run in ``tmp_path / "run"``."""
    out = tmp_path / "run"
    code, _, err = run(train_argv(out), capsys)
    assert code == 0, err
    return out


# -- the output folder ---------------------------------------------------------------------


def test_a_second_run_into_a_folder_holding_one_is_refused(done, capsys):
    before = snapshot(done)
    code, out, err = run(train_argv(done), capsys)
    assert_usage_error(code, out, err, str(done), "--resume", "--overwrite", "another --out")
    assert snapshot(done) == before  # nothing emptied, nothing overwritten
    code, out, err = run(train_argv(done, "--resume", "--overwrite"), capsys)
    assert_usage_error(code, out, err, "--overwrite", "--resume")
    code, _, err = run(train_argv(done, "--overwrite", **{"train.seed": 1}), capsys)
    assert code == 0, err
    rows = (done / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and snapshot(done)["checkpoint.pt"] != before["checkpoint.pt"]
    assert not (done / ".lock").exists()


def test_a_locked_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live run
    code, stdout, err = run(train_argv(out), capsys)
    assert_usage_error(code, stdout, err, f"pid {os.getpid()}", "another run", "--out")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    (out / ".lock").write_text(f"{os.getpid()} another-host\n")
    assert_usage_error(*run(train_argv(out), capsys), "on another-host")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / ".lock").write_text(f"{gone.pid} {socket.gethostname()}\n")  # killed: stale
    code, _, err = run(train_argv(out), capsys)
    assert code == 0, err
    assert (out / "checkpoint.pt").is_file() and not (out / ".lock").exists()


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "new"
    assert_usage_error(*run(train_argv(out, **{"train.batch_size": 1000}), capsys), "batch_size")
    assert not out.exists()


def test_out_a_file_or_read_only_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep")
    assert_usage_error(*run(train_argv(f), capsys), str(f), "a file, expected a folder")
    assert f.read_text() == "keep"
    if os.geteuid() == 0:  # root writes into read-only folders, but not into /sys
        if not Path("/sys/kernel").is_dir():
            pytest.skip("root writes into read-only folders")
        ro = Path("/sys/kernel/spikeep-out")
        assert_usage_error(*run(train_argv(ro), capsys), str(ro), "cannot create")
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_usage_error(*run(train_argv(ro), capsys), str(ro), "cannot write there")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_temporary_checkpoints_of_killed_runs_are_removed(done, capsys):
    leftover = done / ".checkpoint.pt.k1ll3d"
    leftover.write_bytes(b"x" * 1000)
    code, _, err = run(train_argv(done, "--resume", **{"train.epochs": 2}), capsys)
    assert code == 0, err
    assert not leftover.exists() and checkpoint.load(done / "checkpoint.pt")["epoch"] == 2


# -- the model spec stored in the checkpoint ----------------------------------------------


@pytest.fixture
def own_model(tmp_path):
    """quickstart with its model copied beside it: ``(protocol, model)``."""
    model = tmp_path / "model.toml"
    shutil.copy(ROOT / "models" / "mlp_784_500_10_ce.toml", model)
    text = re.sub(r"(?m)^model = .*$", 'model = "model.toml"', QUICK.read_text())
    protocol = tmp_path / "p.toml"
    protocol.write_text(text)
    return protocol, model


def _eval(ckpt, capsys, *extra):
    code, out, err = run(["eval", str(ckpt), "--json", *extra], capsys)
    return code, (json.loads(out) if code == 0 else out), err


def test_eval_and_resume_use_the_stored_spec_and_say_when_the_file_differs(
    tmp_path, own_model, capsys
):
    protocol, model = own_model
    out = tmp_path / "run"
    assert run(train_argv(out, protocol=protocol), capsys)[0] == 0
    ckpt = out / "checkpoint.pt"
    assert checkpoint.load(ckpt)["model_spec"]["activation"] == "hard_sigmoid"
    code, before, err = _eval(ckpt, capsys)
    assert code == 0 and err == ""
    text = model.read_text()
    edited = text.replace('activation = "hard_sigmoid"', 'activation = "sigmoid4"')
    assert edited != text
    model.write_text(edited.replace("size = 500", "size = 300"))
    code, after, err = _eval(ckpt, capsys)
    assert code == 0 and (after["error"], after["loss"]) == (before["error"], before["loss"])
    (line,) = err.splitlines()  # one warning, naming what changed
    assert "differs" in line and "activation" in line and "using the stored one" in line
    code, _, err = run(
        train_argv(out, "--resume", protocol=protocol, **{"train.epochs": 2}), capsys
    )
    assert code == 0, err
    assert "activation" in err and "Traceback" not in err
    assert checkpoint.load(ckpt)["model_spec"]["activation"] == "hard_sigmoid"
    model.unlink()  # the file gone: the checkpoint still evaluates
    assert _eval(ckpt, capsys)[0] == 0


def test_an_old_checkpoint_with_a_changed_layer_size_is_one_line(tmp_path, own_model, capsys):
    protocol, model = own_model
    out = tmp_path / "run"
    assert run(train_argv(out, protocol=protocol), capsys)[0] == 0
    ckpt = out / "checkpoint.pt"
    old = checkpoint.load(ckpt)
    del old["model_spec"]  # as spikeep wrote them before the spec was stored
    checkpoint.save(old, ckpt)
    assert _eval(ckpt, capsys)[0] == 0  # old checkpoints still load
    model.write_text(model.read_text().replace("size = 500", "size = 300"))
    before = snapshot(out)
    assert_usage_error(*run(["eval", str(ckpt)], capsys), "W1", "[500, 784]", "[300, 784]")
    resume = train_argv(out, "--resume", protocol=protocol, **{"train.epochs": 2})
    assert_usage_error(*run(resume, capsys), "layer size")
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "damage,words",
    [
        (lambda c: c["params"].pop("W1"), ["params", "W1"]),
        (lambda c: c["params"].update(b1=torch.zeros(3)), ["b1", "[3]", "[500]"]),
        (lambda c: c["momentum"].update(W2=torch.zeros(10, 3)), ["momentum W2"]),
        (lambda c: c.pop("epoch"), ["damaged", "epoch"]),
        (lambda c: c.update(params=[1, 2]), ["damaged", "params"]),
    ],
    ids=["missing", "wrong-shape", "momentum", "no-epoch", "not-tensors"],
)
def test_a_checkpoint_with_the_tag_but_bad_contents_is_one_line(done, capsys, damage, words):
    ckpt = done / "checkpoint.pt"
    c = checkpoint.load(ckpt)
    damage(c)
    torch.save(c, ckpt)
    before = snapshot(done)
    assert_usage_error(*run(["eval", str(ckpt)], capsys), *words)
    assert_usage_error(*run(train_argv(done, "--resume", **{"train.epochs": 2}), capsys), *words)
    assert snapshot(done) == before


# -- Ctrl-C and SIGTERM ----------------------------------------------------------------------

OVER = {
    "estimator.name": "random-sign",
    "train.persistent": True,
    "optimizer.momentum": 0.5,
    "train.epochs": 2,
    "train.checkpoint_every": 3,
    "data.train_subset": 200,
}


def _sigint_at(monkeypatch, call: int, times: int = 1, signum: int = signal.SIGINT):
    """Send ``signum`` to this process inside the ``call``-th training step (``times`` times)."""

    def send():
        for _ in range(times):
            os.kill(os.getpid(), signum)

    return interrupt(monkeypatch, train_mod, "_train_step", call, send)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_the_last_finished_step_and_resume_is_exact(
    tmp_path, monkeypatch, capsys, signum
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(train_argv(whole, **OVER), capsys)[0] == 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # Python's
    real = _sigint_at(monkeypatch, 15, signum=signum)  # epoch 2, 5th batch: no checkpoint there
    code, out, err = run(train_argv(cut, **OVER), capsys)
    assert code == 128 + signum and out == "" and "Traceback" not in err
    assert f"{signal.Signals(signum).name}: stopping after this step" in err
    last = err.strip().splitlines()[-1]
    assert "interrupted at epoch 2, batch 5" in last and "--resume" in last, err
    saved = checkpoint.load(cut / "checkpoint.pt")
    assert (saved["epoch"], saved["batch"]) == (1, 5)
    assert not (cut / ".lock").exists()
    assert all(signal.getsignal(s) is h for s, h in handlers.items())  # put back
    monkeypatch.setattr(train_mod, "_train_step", real)
    again = last.split("continue with: spikeep ")[1].split()
    assert again[0] == "train" and again[-1] == "--resume"
    code, _, err = run(again, capsys)
    assert code == 0, err
    assert_same_run(whole, cut)


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    cut = tmp_path / "cut"
    _sigint_at(monkeypatch, 15, times=2)
    code, _, err = run(train_argv(cut, **OVER), capsys)
    assert code == 130 and "--resume" in err.strip().splitlines()[-1] and "Traceback" not in err
    saved = checkpoint.load(cut / "checkpoint.pt")
    assert (saved["epoch"], saved["batch"]) == (1, 3)  # the last checkpoint_every one
    assert not (cut / ".lock").exists()


# -- out of memory ---------------------------------------------------------------------------


def _cuda_out_of_memory():
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 18.00 GiB. GPU 0 has a total capacity of 139.80 GiB"
    )


@pytest.mark.parametrize(
    "allocate, words",
    [
        (lambda: torch.empty(2**58), "CPU memory (asked for 1 EiB)"),  # torch's allocator
        (lambda: __import__("numpy").empty(2**57), "memory (asked for 1"),  # numpy's MemoryError
        (_cuda_out_of_memory, "memory (asked for 18.00 GiB)"),
    ],
    ids=["torch-cpu", "numpy", "cuda"],
)
def test_out_of_memory_is_one_line_with_status_1_and_keeps_the_checkpoint(
    done, monkeypatch, capsys, allocate, words
):
    from spikeep.engine import RateEngine

    before = snapshot(done)

    def step(*args, **kwargs):
        allocate()

    monkeypatch.setattr(RateEngine, "step", step)
    code, out, err = run(train_argv(done, "--resume", **{"train.epochs": 2}), capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("spikeep train: out of ") and words in last, err
    assert "train.batch_size = 20" in last and "--set train.batch_size=N" in last
    assert snapshot(done) == before  # the checkpoint and metrics as they were, no lock left
    monkeypatch.undo()
    code, _, err = run(train_argv(done, "--resume", **{"train.epochs": 2}), capsys)
    assert code == 0, err  # and the run goes on from it


# -- metrics.jsonl cut short ------------------------------------------------------------------


def test_a_partial_last_metrics_line_blocks_neither_plot_nor_resume(done, capsys):
    metrics = done / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "lo')  # killed while writing
    code, out, err = run(["plot", str(done)], capsys)
    assert code == 0 and out.strip().endswith("curves.png"), err
    code, _, err = run(train_argv(done, "--resume", **{"train.epochs": 2}), capsys)
    assert code == 0, err
    assert [json.loads(r)["epoch"] for r in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text("{bad\n" + metrics.read_text())  # damaged elsewhere: one line
    assert_usage_error(*run(["plot", str(done)], capsys), "line 1", "not JSON")


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "mps", "meta", "cuda:x"])
def test_train_device_is_checked(tmp_path, capsys, device):
    code, out, err = run(train_argv(tmp_path / "o", "--device", device), capsys)
    assert_usage_error(code, out, err, "--device", repr(device))
    assert not (tmp_path / "o").exists()


def test_seeds_are_below_2_to_the_32(tmp_path, capsys):
    argv = train_argv(tmp_path / "o", **{"train.seed": 2**63})
    assert_usage_error(*run(argv, capsys), "train.seed", str(2**63), "2^32")
    gc = ["gradcheck", "--model", str(ROOT / "models" / "tiny.toml"), "--estimator", "symmetric"]
    assert_usage_error(*run([*gc, "--beta", "0.1", "--seed", str(2**32)], capsys), "--seed")


def _broken_models(tmp_path):
    good = (ROOT / "models" / "tiny.toml").read_text()
    return {
        "zero-size": good.replace("size = 7", "size = 0"),
        "wrong-type": good.replace("size = 7", 'size = "seven"'),
        "stride-0": good.replace(
            'coupling = "dense"', 'coupling = {kind = "conv", kernel = 3, stride = 0}', 1
        ),
    }


@pytest.mark.parametrize("kind", ["zero-size", "wrong-type", "stride-0"])
def test_an_invalid_model_behind_a_protocol_is_one_line(tmp_path, capsys, kind):
    model = tmp_path / "bad.toml"
    model.write_text(_broken_models(tmp_path)[kind])
    text = re.sub(r"(?m)^model = .*$", f'model = "{model}"', QUICK.read_text())
    protocol = tmp_path / "p.toml"
    protocol.write_text(text)
    assert_usage_error(*run(train_argv(tmp_path / "o", protocol=protocol), capsys), str(model))
    assert not (tmp_path / "o").exists()
    fid = (ROOT / "protocols" / "fidelity_quick.toml").read_text()
    fid = fid.replace('"../models/spiking_small.toml"', f'"{model}"', 1)
    fid = fid.replace('"../models/', f'"{ROOT}/models/')
    (tmp_path / "f.toml").write_text(fid)
    argv = ["fidelity", str(tmp_path / "f.toml"), "--out", str(tmp_path / "f")]
    assert_usage_error(*run(argv, capsys), str(model))
    assert not (tmp_path / "f").exists()


def test_data_folders_are_checked_and_named(tmp_path, capsys):
    missing = tmp_path / "missing"
    for name in ("mnist", "mnist-embedded"):
        argv = train_argv(tmp_path / "o", "--data-dir", str(missing), **{"data.name": name})
        assert_usage_error(*run(argv, capsys), str(missing), "no such folder")
    assert not (tmp_path / "o").exists()
    code, _, err = run(train_argv(tmp_path / "o"), capsys)
    assert code == 0 and "data: mnist-embedded (100 training, 50 test images) from " in err
    assert "mnist_subset.npz" in err


def test_crop_padding_is_bounded_by_the_image(tmp_path, capsys):
    argv = train_argv(tmp_path / "o", **{"data.crop_padding": 1000})
    assert_usage_error(*run(argv, capsys), "data.crop_padding", "1000", "less than 28")


def test_fetch_to_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep")
    assert_usage_error(*run(["data", "fetch", "mnist", "--to", str(f)], capsys), str(f))
    assert f.read_text() == "keep"


# -- eval and the summary ------------------------------------------------------------------


def test_eval_scores_the_runs_test_subset_unless_all(done, capsys):
    row = json.loads((done / "metrics.jsonl").read_text().splitlines()[-1])
    code, own, _ = _eval(done / "checkpoint.pt", capsys)
    assert code == 0 and own["images"] == SMALL["data.test_subset"]
    assert own["error"] == pytest.approx(row["test_error"])  # the run's own number
    code, whole, _ = _eval(done / "checkpoint.pt", capsys, "--all")
    assert code == 0 and whole["images"] == 2000
    code, out, _ = run(["eval", str(done / "checkpoint.pt")], capsys)
    assert code == 0 and "(50 images)" in out


def test_only_the_first_process_prints_the_summary(tmp_path, capsys, monkeypatch):
    summary = {"test_error": 1.0, "train_error": 2.0, "epochs": 1, "wall_s": 0.1, "out": "o"}
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: summary)
    monkeypatch.setattr("spikeep._dist.rank", lambda: 1)
    code, out, _ = run(["train", str(QUICK), "--json"], capsys)
    assert code == 0 and out == ""
    monkeypatch.setattr("spikeep._dist.rank", lambda: 0)
    code, out, _ = run(["train", str(QUICK), "--json"], capsys)
    assert code == 0 and json.loads(out)["test_error"] == 1.0


# -- built-in models and protocols, by name ---------------------------------------------------


def test_built_in_names_resolve_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["list"], capsys)
    assert code == 0, err
    models, protocols = out.split("protocols (")
    assert re.search(r"(?m)^  tiny +5-7-6-3 dense", models)
    assert re.search(r"(?m)^  quickstart +784-500-10", protocols)
    gc = ["gradcheck", "--model", "tiny", "--estimator", "symmetric", "--beta", "0.01"]
    code, out, err = run(
        [*gc, "--batch", "2", "--free-steps", "20", "--nudged-steps", "20"], capsys
    )
    assert code == 0 and out.startswith("model ") and "models/tiny.toml" in out, err
    code, _, err = run(["train", "quickstart", "--out", "o", *sets()], capsys)
    assert code == 0 and (tmp_path / "o" / "checkpoint.pt").is_file(), err
    assert_usage_error(*run(["train", "quickstartt"], capsys), "quickstartt", "spikeep list")
    assert_usage_error(*run(["gdu", "--model", "tinyy"], capsys), "tinyy", "spikeep list")


@pytest.mark.slow
def test_the_wheel_runs_outside_the_repository(tmp_path):
    """Build the wheel from the checkout's files, unpack it elsewhere and run the commands from
    there: the built-in names resolve to the copies inside the package."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("spikeep-*.whl")
    site, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    shutil.unpack_archive(wheel, site, "zip")
    assert (site / "spikeep" / "_builtin" / "protocols" / "quickstart.toml").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def spikeep(*argv):
        proc = subprocess.run(
            [sys.executable, "-m", "spikeep.cli", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    assert "quickstart" in spikeep("list").stdout
    gc = spikeep(
        "gradcheck",
        "--model",
        "tiny",
        "--estimator",
        "symmetric",
        "--beta",
        "0.01",
        "--batch",
        "2",
        "--free-steps",
        "20",
        "--nudged-steps",
        "20",
        "--json",
    )
    assert json.loads(gc.stdout)["model"].startswith(str(site))
    two = sets(**{"data.train_subset": 40, "data.test_subset": 20})
    done = spikeep("train", "quickstart", "--out", "o", "--json", *two)
    assert json.loads(done.stdout)["epochs"] == 1 and str(site) in done.stderr


# -- the Python API ------------------------------------------------------------------------


def test_the_api_names_a_bad_argument():
    from spikeep import Network, estimators, load_spec, relax

    net = Network(load_spec(ROOT / "models" / "tiny.toml"))
    p = net.init_params(0)
    x = torch.rand(4, 5, dtype=torch.float64)
    for bad, words in [
        (torch.rand(0, 5, dtype=torch.float64), "x: an empty batch"),
        (torch.rand(4, 6, dtype=torch.float64), "x: shape [4, 6], expected (B, 5)"),
        (torch.rand(4, 5), "x: dtype torch.float32"),
        ([[0.0] * 5], "x: expected a torch.Tensor"),
        (torch.rand(4, 5, dtype=torch.float64, device="meta"), "x: on meta"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            relax(net, p, bad, steps=3)
    with pytest.raises(ValueError, match=re.escape("params: missing ['W3', 'b3']")):
        relax(net, {k: v for k, v in p.items() if k[1] != "3"}, x, steps=3)
    free = relax(net, p, x, steps=5)
    y = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape("y: shape [4, 2], expected (4, 3)")):
        estimators.make("symmetric", beta=0.1, steps=3).estimate(net, p, x, y, free)
