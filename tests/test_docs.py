"""The README and docs run as written: the README's Python blocks are executed here."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def fenced(path: Path, lang: str) -> list[str]:
    """The bodies of the ```lang fenced blocks of ``path``, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", path.read_text(), re.M | re.S)


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
