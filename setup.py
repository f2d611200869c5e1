"""Build hook that puts the bundled models into the wheel.

All metadata lives in pyproject.toml. The repository keeps its models at the top level
(``models/``, where the Dockerfile, Singularity.def, docs and tests expect them); a wheel
has no such folder, so ``build_py`` copies them into ``legseg_tf/_bundled_models/`` of the
build, where :func:`legseg_tf.model_store.resolve_models_dir` finds them once installed.
Editable installs (the dev venv, the container images) skip the copy: there the source
tree's ``models/`` is used directly. sha256 checking is unchanged (the manifest is copied
as is and still names every weights file's digest).
"""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "models"
#: Package folder (relative to the build's library root) that receives the models.
BUNDLED = Path("legseg_tf", "_bundled_models")
#: What is bundled: the manifest, network configs, weights, README and model cards.
PATTERNS = ("*.json", "*.weights.h5", "README.md", "cards/*.md")


def bundled_files() -> list[Path]:
    """The files of ``models/`` that go into the package, relative to ``models/``."""
    if not (MODELS / "manifest.json").is_file():
        raise SystemExit(f"setup.py: {MODELS / 'manifest.json'} is missing; a wheel of legseg "
                         "must carry the bundled models")
    found = {path.relative_to(MODELS) for pattern in PATTERNS for path in MODELS.glob(pattern)
             if path.is_file()}
    return sorted(found)


class BuildPyWithModels(build_py):
    """``build_py`` that also copies ``models/`` into ``legseg_tf/_bundled_models/``."""

    def _bundles_models(self) -> bool:
        return not getattr(self, "editable_mode", False)

    def run(self) -> None:
        super().run()
        if not self._bundles_models():
            return
        target = Path(self.build_lib) / BUNDLED
        for relative in bundled_files():
            destination = target / relative
            self.mkpath(str(destination.parent))
            self.copy_file(str(MODELS / relative), str(destination))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if self._bundles_models():
            target = Path(self.build_lib) / BUNDLED
            outputs += [str(target / relative) for relative in bundled_files()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithModels})
