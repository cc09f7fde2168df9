"""The build step that ships the repository's built-in models and protocols inside the package.

``models/`` and ``protocols/`` at the top of the repository stay the source of truth; building a
wheel copies their TOML files (and the protocols' README) into ``spikeep/_builtin/``, where
:mod:`spikeep.catalog` finds them by name once spikeep is installed without its repository.
Everything else about the package is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"models": ("*.toml",), "protocols": ("*.toml", "README.md")}


class BuildPy(build_py):
    """build_py, then the built-in models and protocols copied into the built package."""

    def run(self):
        super().run()
        for folder, patterns in SHIPPED.items():
            target = Path(self.build_lib) / "spikeep" / "_builtin" / folder
            target.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for path in sorted((ROOT / folder).glob(pattern)):
                    shutil.copy2(path, target / path.name)


setup(cmdclass={"build_py": BuildPy})
