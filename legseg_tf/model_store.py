"""The installed-model store: ``<models_dir>/manifest.json`` and the files it names.

Manifest format (``schema_version`` 1)::

    {
      "schema_version": 1,
      "models": [
        {
          "id": "legseg-upperleg-3d-v1",
          "role": "upper_leg",              # classifier | upper_leg | lower_leg | hip
          "config": "upperleg.json",        # architecture config, relative to models_dir
          "weights": "upperleg.weights.h5", # Keras weights, relative to models_dir
          "sha256": "<hex digest of the weights file>",
          "label_table": "N5_UpperLeg",     # key of legseg_tf.labels.TRAIN_TABLES (null
                                            # allowed for the classifier)
          "provenance": {"source": "legseg-train" | "qmritools-wlnet" | "qmritools-onnx"
                         | "wlnet" | "onnx", ...}
        }
      ]
    }

Ids and roles are unique. The config file is the JSON form of a network config; its
``"kind"`` selects the builder through a small registry: ``"unet"`` and ``"classifier"``
(:mod:`legseg_tf.networks`) and ``"wlnet_graph"`` (``legseg_tf.wlnet.translator``, imported
only when such a model is loaded). Other kinds can be added with :func:`register_builder`.

Importing this module imports neither TensorFlow nor Keras; :func:`load_model` does.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from legseg_tf.labels import TRAIN_TABLES

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
ROLES = ("classifier", "upper_leg", "lower_leg", "hip")
SEGMENTATION_ROLES = ("upper_leg", "lower_leg", "hip")
#: "wlnet"/"onnx": a non-QMRITools network file installed with ``legseg-import --role``.
PROVENANCE_SOURCES = ("legseg-train", "qmritools-wlnet", "qmritools-onnx", "wlnet",
                      "onnx")
WEIGHTS_SUFFIX = ".weights.h5"
ENTRY_KEYS = ("id", "role", "config", "weights", "sha256", "label_table", "provenance")

_HASH_CHUNK = 1 << 20


class ManifestError(Exception):
    """The manifest or a file it names is missing or malformed."""


class ModelError(Exception):
    """A model cannot be built or its weights do not verify or load."""


Builder = Callable[[dict], "keras.Model"]
_BUILDERS: dict[str, Builder] = {}
#: Built-in kinds, imported on first use: kind -> (module, function name).
_LAZY_BUILDERS: dict[str, tuple[str, str]] = {
    "unet": ("legseg_tf.networks.unet", "build_from_config"),
    "classifier": ("legseg_tf.networks.classifier", "build_from_config"),
    "wlnet_graph": ("legseg_tf.wlnet.translator", "build_from_config"),
}


def register_builder(kind: str, fn: Builder) -> None:
    """Register ``fn(config_dict) -> keras.Model`` for configs with ``"kind": kind``.

    A registered builder takes precedence over the built-in lazy one of the same kind.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"builder kind must be a non-empty string, got {kind!r}")
    if not callable(fn):
        raise ValueError(f"builder for kind {kind!r} must be callable, got {fn!r}")
    _BUILDERS[kind] = fn


def get_builder(kind: str) -> Builder:
    """The builder for ``kind``; raises ModelError for an unknown kind."""
    if kind in _BUILDERS:
        return _BUILDERS[kind]
    if kind in _LAZY_BUILDERS:
        module_name, attr = _LAZY_BUILDERS[kind]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ModelError(f"builder module {module_name} for kind {kind!r} cannot be "
                             f"imported: {err}") from err
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ModelError(f"{module_name} has no function {attr}() for kind {kind!r}")
        return fn
    known = sorted(set(_BUILDERS) | set(_LAZY_BUILDERS))
    raise ModelError(f"no builder for network kind {kind!r}; known kinds: {known}")


def build_from_config(config: Mapping[str, Any]) -> keras.Model:
    """Build an (untrained) Keras model from a config dict, dispatching on ``"kind"``."""
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ModelError("a network config must be a JSON object with a 'kind' field")
    builder = get_builder(config["kind"])
    try:
        return builder(dict(config))
    except ValueError as err:
        raise ModelError(f"invalid {config['kind']!r} network config: {err}") from err


#: Folder of the installed package that holds the models a wheel carries (setup.py copies
#: the repository's top-level ``models/`` there at build time).
BUNDLED_MODELS_DIRNAME = "_bundled_models"


def bundled_models_dir() -> Path:
    """Where a wheel install keeps its bundled models: ``legseg_tf/_bundled_models``."""
    return Path(__file__).resolve().parent / BUNDLED_MODELS_DIRNAME


def resolve_models_dir(option: str | os.PathLike | None = None) -> Path:
    """The models folder (one rule for every command):

    1. ``option`` (``--models``/``--out``);
    2. ``$LEGSEG_MODELS_DIR``;
    3. running from legseg's source tree (a checkout, or the editable install of the
       container images): its top-level ``models/`` folder;
    4. else (installed from a wheel or sdist): the copy bundled in the package,
       :func:`bundled_models_dir`.
    """
    if option is not None:
        return Path(option).expanduser().absolute()
    if os.environ.get("LEGSEG_MODELS_DIR"):
        return Path(os.environ["LEGSEG_MODELS_DIR"]).expanduser().absolute()
    import legseg_tf

    if legseg_tf._is_source_tree(legseg_tf.SOURCE_ROOT, legseg_tf.DISTRIBUTION):
        return legseg_tf.SOURCE_ROOT / "models"
    return bundled_models_dir()


def save_weights_atomically(model: keras.Model, path: str | os.PathLike) -> Path:
    """``model.save_weights(path)`` through a temporary ``.weights.h5`` file beside ``path``
    and a rename (:func:`legseg_tf.derivatives.atomic_write`), so that a killed run never
    leaves a half-written weights file."""
    from legseg_tf.derivatives import atomic_write

    return atomic_write(Path(path), model.save_weights, suffix=".weights.h5")


def sha256_file(path: str | os.PathLike) -> str:
    """Lower-case hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One installed model; paths are absolute (resolved against the models directory).

    Attributes:
        id: unique model id.
        role: "classifier", "upper_leg", "lower_leg" or "hip".
        config_path: architecture config JSON file.
        weights_path: ``.weights.h5`` file.
        sha256: expected hex digest of the weights file.
        label_table: training-label table name (``legseg_tf.labels.TRAIN_TABLES`` key), or
            None for a classifier.
        provenance: free-form record; ``provenance["source"]`` says how the model got here.
        models_dir: the directory holding the manifest.
    """

    id: str
    role: str
    config_path: Path
    weights_path: Path
    sha256: str
    label_table: str | None
    provenance: Mapping[str, Any] = field(default_factory=dict, hash=False)
    models_dir: Path = Path(".")

    def read_config(self) -> dict[str, Any]:
        """The architecture config as a dict; ManifestError when missing or not JSON."""
        return _read_json(self.config_path)

    def to_manifest_dict(self) -> dict[str, Any]:
        """The entry as written in the manifest (paths relative to ``models_dir``)."""
        return {
            "id": self.id,
            "role": self.role,
            "config": self.config_path.relative_to(self.models_dir).as_posix(),
            "weights": self.weights_path.relative_to(self.models_dir).as_posix(),
            "sha256": self.sha256,
            "label_table": self.label_table,
            "provenance": dict(self.provenance),
        }


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.

    Attributes:
        path: the manifest file.
        entries: the models, in file order.
    """

    path: Path
    entries: tuple[ModelEntry, ...]

    @property
    def models_dir(self) -> Path:
        """Directory holding the manifest and the model files."""
        return self.path.parent

    def get(self, role: str) -> ModelEntry | None:
        """The model installed for ``role``, or None."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return next((e for e in self.entries if e.role == role), None)

    def by_id(self, model_id: str) -> ModelEntry | None:
        """The model with id ``model_id``, or None."""
        return next((e for e in self.entries if e.id == model_id), None)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err


def _resolve_member(models_dir: Path, value: Any, what: str, where: str) -> Path:
    """Resolve a manifest-relative POSIX path that must stay inside ``models_dir``."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: '{what}' must be a non-empty relative path, got {value!r}")
    rel = PurePosixPath(value)
    if rel.is_absolute() or ".." in rel.parts:
        raise ManifestError(f"{where}: '{what}' must be relative to the models directory "
                            f"without '..', got {value!r}")
    path = models_dir.joinpath(*rel.parts)
    if not path.is_file():
        raise ManifestError(f"{where}: {what} file {path} not found")
    return path


def _parse_entry(models_dir: Path, raw: Any, where: str) -> ModelEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: each model entry must be a JSON object")
    missing = [k for k in ENTRY_KEYS if k not in raw]
    if missing:
        raise ManifestError(f"{where}: model entry is missing {missing}")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise ManifestError(f"{where}: unknown model entry field(s) {unknown}")
    model_id = raw["id"]
    if not isinstance(model_id, str) or not model_id.strip():
        raise ManifestError(f"{where}: 'id' must be a non-empty string, got {model_id!r}")
    where = f"{where} (model {model_id!r})"
    if raw["role"] not in ROLES:
        raise ManifestError(f"{where}: 'role' must be one of {ROLES}, got {raw['role']!r}")
    table = raw["label_table"]
    if raw["role"] in SEGMENTATION_ROLES and table not in TRAIN_TABLES:
        raise ManifestError(f"{where}: 'label_table' must be one of {sorted(TRAIN_TABLES)} for "
                            f"role {raw['role']!r}, got {table!r}")
    if table is not None and not isinstance(table, str):
        raise ManifestError(f"{where}: 'label_table' must be a string or null, got {table!r}")
    digest = raw["sha256"]
    if not (isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        raise ManifestError(f"{where}: 'sha256' must be 64 lower-case hex digits, got {digest!r}")
    provenance = raw["provenance"]
    if not isinstance(provenance, dict) or provenance.get("source") not in PROVENANCE_SOURCES:
        raise ManifestError(f"{where}: 'provenance' must be an object whose 'source' is one of "
                            f"{PROVENANCE_SOURCES}, got {provenance!r}")
    weights = _resolve_member(models_dir, raw["weights"], "weights", where)
    if not weights.name.endswith(WEIGHTS_SUFFIX):
        raise ManifestError(f"{where}: weights file {weights} must end with {WEIGHTS_SUFFIX}")
    return ModelEntry(
        id=model_id,
        role=raw["role"],
        config_path=_resolve_member(models_dir, raw["config"], "config", where),
        weights_path=weights,
        sha256=digest,
        label_table=table,
        provenance=dict(provenance),
        models_dir=models_dir,
    )


def _parse_manifest(path: Path, data: Any) -> Manifest:
    models_dir = path.parent
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the manifest must be a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path}: unsupported schema_version {data.get('schema_version')!r} "
                            f"(this version reads {SCHEMA_VERSION})")
    models = data.get("models")
    if not isinstance(models, list):
        raise ManifestError(f"{path}: 'models' must be a list")
    entries = tuple(_parse_entry(models_dir, raw, f"{path}: models[{i}]")
                    for i, raw in enumerate(models))
    for attr in ("id", "role"):
        values = [getattr(e, attr) for e in entries]
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ManifestError(f"{path}: duplicate model {attr}(s) {duplicates}")
    return Manifest(path=path, entries=entries)


def load_manifest(models_dir: str | os.PathLike) -> Manifest:
    """Read and validate ``<models_dir>/manifest.json``.

    Every config and weights file named must exist inside ``models_dir``; checksums are not
    computed here (see :func:`load_model`).

    Raises:
        ManifestError: missing or malformed manifest, or a named file missing; the message
            names the file.
    """
    path = Path(models_dir).resolve() / MANIFEST_NAME
    return _parse_manifest(path, _read_json(path))


def verify_weights(entry: ModelEntry) -> None:
    """Check the weights file against the manifest checksum; ModelError on mismatch."""
    actual = sha256_file(entry.weights_path)
    if actual != entry.sha256:
        raise ModelError(f"{entry.weights_path}: sha256 {actual} does not match the manifest "
                         f"value {entry.sha256} for model {entry.id!r}; the file is corrupt or "
                         f"was replaced - reinstall the model")


def load_model(entry: ModelEntry, verify: bool = True) -> keras.Model:
    """Build the model of ``entry`` and load its weights.

    Args:
        entry: a manifest entry.
        verify: check the weights sha256 first (default True).

    Returns:
        The Keras model with weights loaded (inference ready; not compiled).

    Raises:
        ModelError: checksum mismatch, unknown kind, invalid config, weights that do not fit
            the architecture, or a segmentation model whose class count does not match its
            label table.
        ManifestError: the config file is missing or not JSON.
    """
    if verify:
        verify_weights(entry)
    model = build_from_config(entry.read_config())
    try:
        model.load_weights(entry.weights_path)
    except (ValueError, KeyError, OSError) as err:
        raise ModelError(f"{entry.weights_path}: weights do not fit the architecture in "
                         f"{entry.config_path} ({err})") from err
    if entry.role in SEGMENTATION_ROLES:
        n_out = int(model.outputs[0].shape[-1])
        expected = len(TRAIN_TABLES[entry.label_table]) + 1
        if n_out != expected:
            raise ModelError(f"model {entry.id!r} predicts {n_out} classes but label table "
                             f"{entry.label_table} has {expected} (with background)")
    logger.info("loaded model %s (%s) from %s", entry.id, entry.role, entry.weights_path)
    return model


def write_entry(models_dir: str | os.PathLike, entry: Mapping[str, Any]) -> Manifest:
    """Add or replace one model entry in ``<models_dir>/manifest.json``, atomically.

    The entry has the manifest fields (``config``/``weights`` relative to ``models_dir``;
    the files must already be there). When ``sha256`` is absent or None it is computed from
    the weights file; when given it must match the file. An existing entry with the same id
    or the same role is replaced. The manifest is written to a temporary file in
    ``models_dir`` and moved over the old one with ``os.replace``, so readers never see a
    partial file. A missing manifest is created.

    Returns:
        The new manifest, re-read from disk.

    Raises:
        ManifestError: invalid entry, missing files, checksum mismatch, or an existing
            manifest that is malformed.
    """
    directory = Path(models_dir).resolve()
    path = directory / MANIFEST_NAME
    raw = dict(entry)
    given = raw.get("sha256")
    if given is None and isinstance(raw.get("weights"), str):
        weights = _resolve_member(directory, raw["weights"], "weights", f"{path}: new entry")
        raw["sha256"] = sha256_file(weights)
    new = _parse_entry(directory, raw, f"{path}: new entry")
    if given is not None:
        actual = sha256_file(new.weights_path)
        if actual != new.sha256:
            raise ManifestError(f"{new.weights_path}: sha256 {actual} differs from the given "
                                f"{new.sha256}")
    if path.exists():
        current = _parse_manifest(path, _read_json(path))
        kept = [e for e in current.entries if e.id != new.id and e.role != new.role]
        for old in current.entries:
            if old not in kept:
                logger.info("replacing model %s (%s) with %s", old.id, old.role, new.id)
    else:
        kept = []
    data = {"schema_version": SCHEMA_VERSION,
            "models": [e.to_manifest_dict() for e in kept] + [new.to_manifest_dict()]}
    from legseg_tf.derivatives import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n", fsync=True)
    return load_manifest(directory)
