"""The README and docs run as written.

The README's Python blocks are executed. Every ``spikeep`` command in a shell block of the README,
``docs/`` and ``protocols/README.md`` is parsed by the command line and what it names is loaded:
the protocol with its ``--set`` overrides, the model. Running them all is not possible here (full
trainings take hours, ``data fetch`` downloads, Brian2 compiles), so the blocks marked with a
``<!-- runnable -->`` line just above them are run, shrunk: every ``spikeep train`` gets a few
hundred images, one epoch and short phases, in a scratch folder.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from spikeep import cli, fidelity
from spikeep import protocol as proto

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "protocols" / "README.md"]
SHELL = ("", "sh", "bash", "console", "shell")
RUNNABLE = "<!-- runnable -->"
SHRINK = [
    f"--set={k}={v}"
    for k, v in {
        "data.train_subset": 100,
        "data.test_subset": 50,
        "train.epochs": 1,
        "estimator.free_steps": 5,
        "estimator.nudged_steps": 2,
        "estimator.eval_free_steps": 5,
    }.items()
]


def fenced(path: Path, lang: str) -> list[str]:
    """The bodies of the ```lang fenced blocks of ``path``, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", path.read_text(), re.M | re.S)


def shell_blocks(path: Path) -> list[tuple[bool, str]]:
    """``(marked runnable, body)`` of every shell block of ``path``."""
    text = path.read_text()
    out = []
    for m in re.finditer(r"^```([^\n]*)\n(.*?)^```$", text, re.M | re.S):
        if m[1].strip() in SHELL:
            before = text[: m.start()].rstrip().splitlines()[-1:]
            out.append((before == [RUNNABLE], m[2]))
    return out


def commands(body: str) -> list[list[str]]:
    """The arguments after ``spikeep`` of every spikeep command in a shell block: continued lines
    joined; comments, environment assignments (``OMP_NUM_THREADS=1``) and optional parts
    (``[--all]``, ``[--resume | --overwrite]``) left out; ``a ; b`` is two commands."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"\s;\s|\s&&\s", line):
            part = re.sub(r"\s\[-(?:[^\[\]\"]|\"[^\"]*\")*\]", "", part)
            words = shlex.split(part)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if words[:1] == ["spikeep"]:
                out.append(words[1:])
    return out


def placeholder(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_]*(/.*)?", text))


def test_the_readme_python_blocks_run(monkeypatch):
    blocks = fenced(ROOT / "README.md", "python")
    assert len(blocks) == 2  # the file-based network, then the one built in code
    monkeypatch.chdir(ROOT)  # the first names models/tiny.toml
    ns: dict = {}
    exec(compile(blocks[0], "README.md (python 1)", "exec"), ns)  # our own README, not a config
    g, exact = ns["g"], ns["exact"]
    flat = lambda d: torch.cat([d[k].flatten() for k in sorted(d)])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(g), flat(exact), dim=0) > 0.99
    exec(compile(blocks[1], "README.md (python 2)", "exec"), ns)
    assert ns["logits"].shape == (4, 10) and ns["logits"].dtype == torch.float32
    assert [layer.size for layer in ns["spec"].layers] == [784, 500, 10]
    assert ns["spec"].raw["cost"] == "cross_entropy"  # what a checkpoint stores


def test_the_snn_guide_measures_its_rate_figures(capsys):
    (block,) = fenced(ROOT / "docs" / "snn.md", "python")
    exec(compile(block, "docs/snn.md (python)", "exec"), {})
    lines = capsys.readouterr().out.split("\n")
    assert float(lines[0]) < 1e-15  # integrate-and-fire: the hard sigmoid to rounding
    staircase = {float(b): (float(e), float(n)) for b, e, n in (x.split() for x in lines[1:5])}
    for b, text in ((0.99, 0.0049), (0.95, 0.023), (0.9, 0.049), (0.8, 0.10)):  # the guide's
        assert staircase[b][0] == pytest.approx(text, abs=6e-4)
        assert staircase[b][1] > 2.5 * staircase[b][0]  # "3x worse" without the correction
    assert lines[5] == "805"


def test_the_command_extraction():
    body = (
        "OMP_NUM_THREADS=1 spikeep train protocols/x.toml --out o [--resume | --overwrite] \\\n"
        '    --set "optimizer.lr=[0.05, 0.02]"   # a comment\n'
        "spikeep plot o ; spikeep eval o/checkpoint.pt --json [--all]\n"
        "make test\n"
    )
    assert commands(body) == [
        ["train", "protocols/x.toml", "--out", "o", "--set", "optimizer.lr=[0.05, 0.02]"],
        ["plot", "o"],
        ["eval", "o/checkpoint.pt", "--json"],
    ]


def test_every_documented_command_parses_and_names_what_exists(monkeypatch):
    monkeypatch.chdir(ROOT)  # documented paths are from the repository root
    failures, seen = [], 0
    for path in DOCS:
        for _, body in shell_blocks(path):
            for argv in commands(body):
                seen += 1
                where = f"{path.relative_to(ROOT)}: spikeep {shlex.join(argv)}"
                try:
                    args = cli._parser().parse_args(argv)
                except SystemExit:
                    failures.append(f"{where}: the command line refuses it")
                    continue
                try:
                    _load_named(args)
                except (ValueError, cli.UsageError) as err:
                    failures.append(f"{where}: {err}")
    assert seen >= 40  # the extraction still finds the commands
    assert not failures, "\n".join(failures)


def _load_named(args) -> None:
    """Load what a parsed command names: its protocol with the overrides, its model."""
    if args.command in ("train", "fidelity") and not placeholder(args.protocol):
        load = proto.load if args.command == "train" else fidelity.load
        load(cli._protocol_file(args.protocol), proto.parse_overrides(args.set))
    model = getattr(args, "model", None)
    if model and not placeholder(model):
        cli._load(model)


def test_the_runnable_blocks_run_shrunk(tmp_path, monkeypatch, capsys):
    for name in ("models", "protocols"):  # documented paths, outputs in a scratch folder
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    ran = []
    for path in DOCS:
        for runnable, body in shell_blocks(path):
            if not runnable:
                continue
            for argv in commands(body):
                argv = [*argv, *SHRINK] if argv[0] == "train" else argv
                try:
                    code = cli.main(argv)
                except SystemExit as exc:
                    code = exc.code
                err = capsys.readouterr().err
                assert code == 0, f"{path.name}: spikeep {shlex.join(argv)}\n{err}"
                ran.append(argv[0])
    assert ran.count("train") >= 3 and "eval" in ran and "plot" in ran


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_marks_sit_on_shell_blocks(path):
    marks = sum(line.strip() == RUNNABLE for line in path.read_text().splitlines())
    assert marks == sum(runnable for runnable, _ in shell_blocks(path))
