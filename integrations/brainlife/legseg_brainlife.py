"""brainlife.io App of legseg: what the ``main`` shim at the repository root runs.

Run in the task's working folder. Reads ``config.json`` there, runs the legseg BIDS App
(participant, then group level) and writes, in the working folder:

* ``output/``       the BIDS-Derivatives dataset (label maps, tables, QC reports, logs);
* ``parc/``         ``parc.nii.gz`` + ``label.json`` (brainlife ``neuro/parcellation/volume``)
                    when exactly one image was segmented;
* ``product.json``  messages, a per-muscle volume graph and summary figures for brainlife;
                    on failure one error message.

Inputs (exactly one): ``outphase`` (an opposed-phase Dixon NIfTI), ``t1`` (another axial
Dixon-type NIfTI, e.g. water or in-phase: segmented as given) or ``bids`` (a BIDS dataset
folder). A single file is first put into a minimal BIDS dataset ``legseg_input/``
(``sub-<label>[/ses-<label>]/anat/...``, JSON sidecar with EchoTime and
MagneticFieldStrength when known). See integrations/brainlife/config.example.json and
docs/cluster.md.

How legseg is run (:func:`runner`):

1. ``$LEGSEG_CONTAINER`` set to an image (a .sif file or a docker:// reference):
   ``apptainer``/``singularity run --cleanenv`` of that image; ``LEGSEG_CONTAINER=none``
   skips containers and runs the local package (step 3).
2. Unset, with ``apptainer`` or ``singularity`` on PATH: the released image
   ``docker://ghcr.io/legseg/legseg:<version>`` (``-gpu`` for a GPU run), <version> being
   this checkout's ``version`` file.
3. Otherwise ``run.py`` of this checkout with this Python, when that Python imports legseg
   and its dependencies (else an installed ``legseg`` command); when nothing can run legseg,
   one error line on stderr and in ``product.json``, exit code 69.

Standard library only, Python >= 3.6.

Exit codes: legseg's own; 64 for a config.json problem, 66 for a missing input, 69 when
nothing can run legseg (a container runtime missing for ``LEGSEG_CONTAINER``, or neither a
runtime nor a usable legseg package).
"""
import csv
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

#: The repository root: run.py and the version file of this checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROG = "legseg brainlife"
#: The released images (.github/workflows/release.yml): <version> for CPU, <version>-gpu.
IMAGE_REPOSITORY = "ghcr.io/legseg/legseg"
#: LEGSEG_CONTAINER value that runs the local package instead of a container.
NO_CONTAINER = "none"
EXIT_UNAVAILABLE = 69
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
INPUT_KEYS = ("outphase", "t1", "bids")
INPUT_DIR = "legseg_input"
FILTER_FILE = "legseg_input_filter.json"
OUTPUT_DIR = "output"
PARC_DIR = "parc"
# legseg_tf.derivatives names, repeated here because this App runs with the standard library
# only (tests/test_brainlife.py checks that they agree).
DSEG_ENDING = "_desc-muscles_dseg.nii.gz"
MORPH_ENDING = "_desc-muscles_morph.tsv"
LABEL_TABLE = "dseg.tsv"
INPUT_NAME = "legseg brainlife input"
#: config.json key -> legseg option (value options)
VALUE_OPTIONS = {
    "region": "--region",
    "device": "--device",
    "merge": "--merge",
    "overlap": "--overlap",
    "batch_size": "--batch-size",
    "ff_erosion": "--ff-erosion",
    "nprocs": "--nprocs",
    "mem_gb": "--mem-gb",
}
#: config.json key -> legseg flag (true/false options)
FLAG_OPTIONS = {
    "save_probabilities": "--save-probabilities",
    "overwrite": "--overwrite",
    "verbose": "-v",
    "include_failed_qc": "--include-failed-qc",
}
OTHER_KEYS = {"models", "participant_label", "session_label", "echo_time", "magnetic_field_strength",
              "skip_bids_validator"}


class ConfigError(Exception):
    """A problem with config.json or the inputs it names; carries the exit code."""

    def __init__(self, message, code=64):
        super().__init__(message)
        self.code = code


def _given(config, key):
    """The value of a key, or None when it is absent, null or an empty string."""
    value = config.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _flag(config, key, default=False):
    value = _given(config, key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError("config.json key '{}' must be true or false, got {!r}".format(key, value))


def _labels(config, key, prefix):
    """A label list from a string (space separated) or a JSON list; checked, prefix removed."""
    value = _given(config, key)
    if value is None:
        return []
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError("config.json key '{}' must be a string or a list, got {!r}".format(key, value))
    labels = []
    for item in items:
        label = str(item)
        label = label[len(prefix):] if label.startswith(prefix) else label
        if not LABEL_RE.match(label):
            raise ConfigError("config.json key '{}': invalid label {!r} (labels must match [A-Za-z0-9]+ "
                              "after an optional '{}')".format(key, str(item), prefix))
        labels.append(label)
    return labels


def _input_meta(config):
    inputs = config.get("_inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        meta = inputs[0].get("meta")
        if isinstance(meta, dict):
            return meta
    return {}


def _single_label(config, key, prefix, meta_key, default):
    """One label for the generated dataset: config key, else brainlife's meta (cleaned), else default."""
    labels = _labels(config, key, prefix)
    if len(labels) > 1:
        raise ConfigError("config.json key '{}' must name one label for a single input file".format(key))
    if labels:
        return labels[0]
    meta_value = _input_meta(config).get(meta_key)
    if meta_value is not None:
        cleaned = re.sub(r"[^A-Za-z0-9]", "", str(meta_value)[len(prefix):] if str(meta_value).startswith(prefix)
                         else str(meta_value))
        if cleaned:
            return cleaned
    return default


def _number(config, key):
    value = _given(config, key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError("config.json key '{}' must be a number, got {!r}".format(key, value))


def load_config(path):
    if not os.path.isfile(path):
        raise ConfigError("no config.json in {} (brainlife writes it; see integrations/brainlife/config.example.json)"
                          .format(os.path.dirname(os.path.abspath(path))))
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("cannot read {}: {}".format(path, error))
    if not isinstance(config, dict):
        raise ConfigError("{} must hold a JSON object".format(path))
    return config


def check_keys(config):
    """The input key, after warning about keys this App does not know (typos)."""
    known = set(INPUT_KEYS) | set(VALUE_OPTIONS) | set(FLAG_OPTIONS) | OTHER_KEYS
    for key in sorted(config):
        if key not in known and not key.startswith("_"):
            print("{}: warning: config.json key '{}' is not used".format(PROG, key), file=sys.stderr)
    given = [key for key in INPUT_KEYS if _given(config, key) is not None]
    if not given:
        raise ConfigError("config.json needs one of the keys 'outphase', 't1' (an input NIfTI file) "
                          "or 'bids' (a BIDS dataset folder)")
    if len(given) > 1:
        raise ConfigError("config.json has several inputs ({}); give exactly one".format(", ".join(given)))
    return given[0]


def build_dataset(config, key, workdir):
    """Put a single NIfTI into a minimal BIDS dataset; return (dataset folder, filter file or None)."""
    source = os.path.abspath(str(config[key]))
    if not os.path.isfile(source):
        raise ConfigError("config.json '{}': {} does not exist".format(key, source), code=66)
    if source.endswith(".nii.gz"):
        extension = ".nii.gz"
    elif source.endswith(".nii"):
        extension = ".nii"
    else:
        raise ConfigError("config.json '{}': {} is not a NIfTI file (.nii or .nii.gz)".format(key, source))
    subject = _single_label(config, "participant_label", "sub-", "subject", "01")
    session = _single_label(config, "session_label", "ses-", "session", None)
    root = os.path.join(workdir, INPUT_DIR)
    description = os.path.join(root, "dataset_description.json")
    if os.path.exists(root):
        try:
            with open(description, encoding="utf-8") as handle:
                ours = json.load(handle).get("Name") == INPUT_NAME
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ConfigError("{} exists and was not written by this App; remove it".format(root))
        shutil.rmtree(root)
    folder = os.path.join(root, "sub-" + subject, *(["ses-" + session] if session else []), "anat")
    os.makedirs(folder)
    entities = "sub-" + subject + ("_ses-" + session if session else "")
    stem = entities + ("_acq-outphase_T1w" if key == "outphase" else "_T1w")
    shutil.copyfile(source, os.path.join(folder, stem + extension))
    meta = _input_meta(config)
    sidecar = {}
    echo_time = _number(config, "echo_time")
    if echo_time is None and isinstance(meta.get("EchoTime"), (int, float)):
        echo_time = float(meta["EchoTime"])
    if echo_time is not None:
        if not 0 < echo_time < 1:
            raise ConfigError("config.json 'echo_time' is in seconds (e.g. 0.00345), got {}".format(echo_time))
        sidecar["EchoTime"] = echo_time
    field = _number(config, "magnetic_field_strength")
    if field is None and isinstance(meta.get("MagneticFieldStrength"), (int, float)):
        field = float(meta["MagneticFieldStrength"])
    if field is not None:
        sidecar["MagneticFieldStrength"] = field
    _write_json(os.path.join(folder, stem + ".json"), sidecar)
    _write_json(description, {"Name": INPUT_NAME, "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    with open(os.path.join(root, "participants.tsv"), "w", encoding="utf-8") as handle:
        handle.write("participant_id\nsub-{}\n".format(subject))
    with open(os.path.join(root, "README"), "w", encoding="utf-8") as handle:
        handle.write("Input of one legseg run on brainlife.io: {}\n".format(os.path.basename(source)))
    filter_file = None
    if key == "t1":  # not an opposed-phase image: select it explicitly
        filter_file = os.path.join(workdir, FILTER_FILE)
        _write_json(filter_file, {"datatype": "anat", "suffix": "T1w"})
    return root, filter_file


def legseg_options(config, input_key, filter_file):
    """legseg options from config.json, common to both levels."""
    options = []
    for key, flag in VALUE_OPTIONS.items():
        value = _given(config, key)
        if value is not None:
            options += [flag, str(value)]
    for key, flag in FLAG_OPTIONS.items():
        if _flag(config, key):
            options.append(flag)
    models = _given(config, "models")
    if models is not None:
        models = os.path.abspath(str(models))
        if not os.path.isdir(models):
            raise ConfigError("config.json 'models': {} is not a folder".format(models), code=66)
        options += ["--models", models]
    if input_key == "bids":
        participants = _labels(config, "participant_label", "sub-")
        sessions = _labels(config, "session_label", "ses-")
        if participants:
            options += ["--participant-label"] + participants
        if sessions:
            options += ["--session-label"] + sessions
    if _flag(config, "skip_bids_validator", default=input_key != "bids"):
        options.append("--skip_bids_validator")
    if filter_file:
        options += ["--bids-filter-file", filter_file]
    return options


def _wants_gpu(config):
    device = str(_given(config, "device") or "auto")
    return device == "gpu" or (device == "auto" and shutil.which("nvidia-smi") is not None)


def default_image(gpu):
    """The released image of this checkout's version (docker:// reference for apptainer)."""
    try:
        with open(os.path.join(ROOT, "version"), encoding="utf-8") as handle:
            version = handle.read().strip() or "latest"
    except OSError:
        version = "latest"
    return "docker://{}:{}{}".format(IMAGE_REPOSITORY, version, "-gpu" if gpu else "")


#: Imports a legseg run needs before it can write its log (TensorFlow comes later, and
#: legseg reports a missing TensorFlow itself).
PROBE = "import sys; sys.path.insert(0, sys.argv[1]); import legseg_tf.cli, legseg_tf.pipeline"


def local_command():
    """(words that run the local legseg, None) or (None, why it cannot run): run.py of this
    checkout with this Python when that Python imports legseg and its dependencies, else an
    installed ``legseg`` command that answers ``--version``."""
    run_py = os.path.join(ROOT, "run.py")
    if os.path.isfile(run_py):
        words, probe = [sys.executable, run_py], [sys.executable, "-c", PROBE, ROOT]
    else:
        installed = shutil.which("legseg")
        if installed is None:
            return None, "no run.py next to main and no legseg command on PATH"
        words, probe = [installed], [installed, "--version"]
    try:
        done = subprocess.run(probe, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        return None, str(error)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else "exit code {}".format(done.returncode)
    return words, None


def runner(config, binds):
    """The words that start legseg: a container run, or run.py with this Python."""
    image = os.environ.get("LEGSEG_CONTAINER", "").strip()
    runtime = shutil.which("apptainer") or shutil.which("singularity")
    if image.lower() == NO_CONTAINER or (not image and runtime is None):
        words, why = local_command()
        if words is not None:
            return words
        if image:
            raise ConfigError("LEGSEG_CONTAINER=none but {} cannot run legseg ({})".format(
                sys.executable, why), code=EXIT_UNAVAILABLE)
        raise ConfigError(
            "cannot run legseg here: neither apptainer nor singularity is on PATH (for the image {}) "
            "and {} cannot run legseg ({}); install Apptainer, set LEGSEG_CONTAINER to an image, "
            "or install legseg ('pip install legseg[cpu]')".format(
                default_image(_wants_gpu(config)), sys.executable, why), code=EXIT_UNAVAILABLE)
    if runtime is None:
        raise ConfigError("LEGSEG_CONTAINER is set but neither apptainer nor singularity is on PATH",
                          code=EXIT_UNAVAILABLE)
    gpu = _wants_gpu(config)
    words = [runtime, "run", "--cleanenv"]
    for path, mode in binds:
        words += ["--bind", "{}:{}:{}".format(path, path, mode)]
    if gpu:
        words.append("--nv")
    return words + [image or default_image(gpu)]


def _write_json(path, data, compact=False):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, **({"separators": (",", ":")} if compact else {"indent": 2}))
        handle.write("\n")


def _read_tsv(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_parcellation(output, workdir):
    """parc/parc.nii.gz + parc/label.json when exactly one label map was written; return the maps."""
    maps = sorted(glob.glob(os.path.join(output, "sub-*", "**", "*" + DSEG_ENDING), recursive=True))
    if len(maps) != 1:
        return maps
    parc = os.path.join(workdir, PARC_DIR)
    os.makedirs(parc, exist_ok=True)
    shutil.copyfile(maps[0], os.path.join(parc, "parc.nii.gz"))
    labels = [
        {"name": row["name"], "abbreviation": row.get("abbreviation", ""), "voxel_value": int(row["index"]),
         "side": row.get("side", ""), "region": row.get("region", ""), "color": row.get("color", "")}
        for row in _read_tsv(os.path.join(output, LABEL_TABLE)) if int(row["index"]) != 0
    ]
    _write_json(os.path.join(parc, "label.json"), labels)
    return maps


def write_product(workdir, output, maps, config, failure=None):
    """product.json: brainlife messages, a volume graph (one image) and small summary figures."""
    region = str(_given(config, "region") or "legs")
    product = {"brainlife": [], "tags": ["legseg", "region-" + region]}
    if failure:
        product["brainlife"].append({"type": "error", "msg": failure})
        _write_json(os.path.join(workdir, "product.json"), product, compact=True)
        return
    version = "unknown"
    try:
        with open(os.path.join(output, "dataset_description.json"), encoding="utf-8") as handle:
            version = json.load(handle)["GeneratedBy"][0].get("Version", version)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    summary = []
    for path in maps:
        morph = path[:-len(DSEG_ENDING)] + MORPH_ENDING
        rows = _read_tsv(morph) if os.path.isfile(morph) else []
        summary.append({
            "image": os.path.relpath(path, output),
            "structures": len(rows),
            "volume_ml": round(sum(float(r.get("volume_ml") or 0) for r in rows), 1),
        })
        if len(maps) == 1 and rows:
            product["brainlife"].append({
                "type": "plotly", "name": "Volume per structure (mL)",
                "data": [{"type": "bar", "x": [r.get("abbreviation") or r.get("name") for r in rows],
                          "y": [round(float(r.get("volume_ml") or 0), 1) for r in rows]}],
                "layout": {"yaxis": {"title": "mL"}},
            })
    message = "legseg {}: {} image(s) segmented (region {}).".format(version, len(maps), region)
    product["brainlife"].insert(0, {"type": "success" if maps else "warning", "msg": message})
    if len(maps) > 1:
        product["brainlife"].append({"type": "info", "msg": "Several images: label maps are in output/ only "
                                     "(parc/ holds one image)."})
    product["legseg"] = {"version": version, "region": region, "images": summary}
    _write_json(os.path.join(workdir, "product.json"), product, compact=True)


def main():
    workdir = os.getcwd()
    output = os.path.join(workdir, OUTPUT_DIR)
    config = {}
    try:
        config = load_config(os.path.join(workdir, "config.json"))
        key = check_keys(config)
        if key == "bids":
            bids = os.path.abspath(str(config["bids"]))
            if not os.path.isdir(bids):
                raise ConfigError("config.json 'bids': {} is not a folder".format(bids), code=66)
            filter_file = None
        else:
            bids, filter_file = build_dataset(config, key, workdir)
        options = legseg_options(config, key, filter_file)
        binds = [(workdir, "rw")]
        if not bids.startswith(workdir + os.sep):
            binds.append((bids, "ro"))
        models = _given(config, "models")
        if models is not None and not os.path.abspath(str(models)).startswith(workdir + os.sep):
            binds.append((os.path.abspath(str(models)), "ro"))
        start = runner(config, binds)
    except ConfigError as error:
        print("{}: error: {}".format(PROG, error), file=sys.stderr)
        try:
            write_product(workdir, output, [], config, failure=str(error))
        except OSError:
            pass  # an unwritable working folder: stderr has the message
        return error.code
    for level in ("participant", "group"):
        command = start + [bids, output, level] + options
        print("+ " + " ".join(shlex.quote(word) for word in command), file=sys.stderr)
        sys.stderr.flush()
        code = subprocess.call(command)
        if code != 0:
            message = "legseg {} level failed with exit code {} (see output/logs/)".format(level, code)
            print("{}: error: {}".format(PROG, message), file=sys.stderr)
            write_product(workdir, output, [], config, failure=message)
            return code
    maps = write_parcellation(output, workdir)
    write_product(workdir, output, maps, config)
    print("{}: {} label map(s) in {}".format(PROG, len(maps), output), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
