"""``legseg-import``: convert Wolfram ``.wlnet`` (and ONNX) networks into legseg models.

Usage::

    legseg-import PATH [PATH ...] [--out MODELS_DIR] [--role ROLE] [--classes PORT=L1,...]
    legseg-import --inspect FILE.wlnet|FILE.onnx

PATH is a QMRITools release ``.paclet`` (a zip holding ``NeuralNetworks/*.wlnet``), a folder
(searched recursively) or ``.wlnet`` / ``.onnx`` files (ONNX files, e.g. the QMRITools nets
exported by Wolfram, are translated by :mod:`legseg_tf.onnxnet`; they need the ``onnx``
package, extra ``legseg[onnx]``). ``--role`` sets the role of the one file given (default:
from the file name); ``--classes`` gives the class labels of an ONNX output, which ONNX files
do not store (the slice classifier needs those of ``Side`` and ``Position``).

The QMRITools nets are recognised by file name (:data:`KNOWN_NETS`) and installed into
``MODELS_DIR/manifest.json`` with their role and label table; any other net is converted
too (role "other", id = file stem) and described by a ``<id>.entry.json`` file next to its
config, since the manifest only holds the roles the pipeline uses. TensorFlow is imported
only when converting.

Exit codes: 0 success, 64 usage error, 65 a file could not be read or translated (one-line
message, the other files are still converted), 66 input missing, 73 output not writable.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from legseg_tf import __version__
from legseg_tf.errors import ExitCode
from legseg_tf.model_store import resolve_models_dir, sha256_file
from legseg_tf.wlnet.catalogue import (  # noqa: F401 - re-exported for callers of the CLI
    CITATION, KNOWN_NETS, LEGACY_NETS, LICENCE_NOTICE, ROLE_TABLES, SEGMENTATION_ROLES,
    KnownNet, check_classes,
)
from legseg_tf.wlnet.expr import WlnetError
from legseg_tf.wlnet.reader import (
    WlnetFile, count_parameters, iter_layers, layer_tree_lines, read_wlnet,
)

LOGGER = logging.getLogger(__name__)

EXIT_OK, EXIT_USAGE, EXIT_DATA = ExitCode.OK, ExitCode.USAGE, ExitCode.DATA
EXIT_NOINPUT, EXIT_CANTCREATE = ExitCode.NO_BIDS_DIR, ExitCode.OUTPUT_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="legseg-import",
        description="Convert Wolfram .wlnet networks (e.g. the QMRITools release paclet) into "
                    "legseg Keras models (config JSON + .weights.h5 + manifest entry).")
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="a .paclet file, a folder, or .wlnet / .onnx files")
    parser.add_argument("--out", type=Path, default=None, metavar="MODELS_DIR",
                        help="models directory to write into (default: $LEGSEG_MODELS_DIR, "
                             "else the models/ folder of the source tree)")
    parser.add_argument("--inspect", type=Path, metavar="FILE",
                        help="print the layer tree of one .wlnet file (or the operators of "
                             "an .onnx file) and exit")
    parser.add_argument("--role", choices=("classifier", "upper_leg", "lower_leg", "hip",
                                           "other"),
                        help="role of the one network file given (default: from the file "
                             "name, e.g. N5_UpperLeg_3D -> upper_leg)")
    parser.add_argument("--classes", action="append", metavar="PORT=L1,L2,...",
                        help="class labels of an ONNX output in output order, e.g. "
                             "--classes Side=Left,Right,Both (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.inspect is not None:
        if args.paths:
            print("legseg-import: --inspect takes one FILE and no PATH", file=sys.stderr)
            return EXIT_USAGE
        if args.inspect.suffix.lower() == ".onnx":
            return _inspect_onnx(args.inspect)
        return _inspect(args.inspect)
    if not args.paths:
        parser.print_usage(sys.stderr)
        print("legseg-import: give a .paclet, a folder or .wlnet / .onnx files",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        from legseg_tf.onnxnet.importer import parse_classes

        classes = parse_classes(args.classes)
    except ValueError as exc:
        print(f"legseg-import: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.out = resolve_models_dir(args.out)
    for path in args.paths:
        if not path.exists():
            print(f"legseg-import: {path}: no such file or directory", file=sys.stderr)
            return EXIT_NOINPUT
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".legseg-import-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        print(f"legseg-import: cannot write to {args.out}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_CANTCREATE
    with tempfile.TemporaryDirectory(prefix="legseg-import-") as tmp:
        try:
            sources = collect_sources(args.paths, Path(tmp))
        except (OSError, zipfile.BadZipFile, WlnetError) as exc:
            print(f"legseg-import: {exc}", file=sys.stderr)
            return EXIT_DATA
        if not sources:
            print("legseg-import: no .wlnet or .onnx files found", file=sys.stderr)
            return EXIT_NOINPUT
        if (args.role or classes) and len(sources) != 1:
            print(f"legseg-import: --role and --classes apply to one network file; "
                  f"{len(sources)} were found", file=sys.stderr)
            return EXIT_USAGE
        failures = 0
        for source in sources:
            try:
                if source.path.suffix.lower() == ".onnx":
                    from legseg_tf.onnxnet.importer import convert_onnx

                    summary = convert_onnx(source.path, args.out, role=args.role,
                                           classes=classes)
                else:
                    summary = convert_file(source.path, args.out, container=source.container,
                                           role=args.role)
            except WlnetError as exc:
                print(f"legseg-import: {_one_line(exc)}", file=sys.stderr)
                failures += 1
                continue
            except OSError as exc:
                print(f"legseg-import: cannot write model for {source.path.name}: {exc}",
                      file=sys.stderr)
                return EXIT_CANTCREATE
            except Exception as exc:  # noqa: BLE001 - one line per file, details with -v
                LOGGER.debug("conversion of %s failed", source.path, exc_info=True)
                print(f"legseg-import: {source.path}: conversion failed "
                      f"({type(exc).__name__}: {_one_line(exc)})", file=sys.stderr)
                failures += 1
                continue
            print(summary)
    return EXIT_DATA if failures else EXIT_OK


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _inspect(path: Path) -> int:
    if not path.is_file():
        print(f"legseg-import: {path}: no such file", file=sys.stderr)
        return EXIT_NOINPUT
    try:
        wl = read_wlnet(path)
    except WlnetError as exc:
        print(f"legseg-import: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA
    print(f"{path.name}: Wolfram {wl.version}, {len(wl.arrays)} arrays, "
          f"{count_parameters(wl):,} parameters")
    print("\n".join(layer_tree_lines(wl.net)))
    return EXIT_OK


def _inspect_onnx(path: Path) -> int:
    if not path.is_file():
        print(f"legseg-import: {path}: no such file", file=sys.stderr)
        return EXIT_NOINPUT
    from legseg_tf.onnxnet.importer import inspect_lines

    try:
        lines = inspect_lines(path)
    except WlnetError as exc:
        print(f"legseg-import: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA
    print("\n".join(lines))
    return EXIT_OK


@dataclass(frozen=True)
class Source:
    """A .wlnet file to convert and the file it came from (a paclet) if any."""

    path: Path
    container: Path | None = None


def collect_sources(paths: list[Path], tmp: Path) -> list[Source]:
    """Expand PATH arguments into .wlnet files (paclets are extracted into ``tmp``)."""
    found: list[Source] = []
    for path in paths:
        if path.is_dir():
            found += [Source(p) for p in sorted(path.rglob("*.wlnet"))]
            found += [Source(p) for p in sorted(path.rglob("*"))
                      if p.suffix.lower() == ".onnx" and p.is_file()]
            for paclet in sorted(path.rglob("*.paclet")):
                found += _extract_paclet(paclet, tmp)
        elif path.suffix.lower() == ".onnx":
            found.append(Source(path))
        elif path.suffix.lower() == ".paclet" or zipfile.is_zipfile(path):
            found += _extract_paclet(path, tmp)
        else:
            found.append(Source(path))
    return found


#: Limits for extracting a paclet (the 2023 QMRITools paclet holds 157 MB of networks).
MAX_MEMBER_BYTES = 4 << 30
MAX_EXTRACT_BYTES = 8 << 30
MAX_COMPRESSION_RATIO = 200
PACLET_SUFFIXES = (".wlnet",)


def _extract_paclet(paclet: Path, tmp: Path) -> list[Source]:
    """Extract the network files of a paclet (a zip) into ``tmp``, keeping member paths.

    Refuses absolute or ``..`` member paths, two networks with the same file name (their
    models would overwrite each other), declared sizes over :data:`MAX_MEMBER_BYTES` /
    :data:`MAX_EXTRACT_BYTES` or a compression ratio over :data:`MAX_COMPRESSION_RATIO`
    (zip bombs), and members that inflate past their declared size.

    Raises:
        WlnetError: an unsafe, oversized or corrupt paclet (the message names the member).
    """
    target = tmp / hashlib.sha256(str(paclet.resolve()).encode()).hexdigest()[:12]
    try:
        with zipfile.ZipFile(paclet) as archive:
            members = _paclet_members(paclet, archive)
            out = []
            for member, parts in members:
                dest = target.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                _extract_member(paclet, archive, member, dest)
                out.append(Source(dest, paclet))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, ValueError, zlib.error) as exc:
        raise WlnetError(f"{paclet}: unreadable paclet: {_one_line(exc)}") from exc
    LOGGER.info("%s: %d network file(s)", paclet, len(out))
    return sorted(out, key=lambda s: s.path.name)


def _paclet_members(paclet: Path, archive: zipfile.ZipFile) -> list[tuple]:
    members, seen, total = [], {}, 0
    for member in archive.infolist():
        name = member.filename.replace("\\", "/")
        if member.is_dir() or not name.lower().endswith(PACLET_SUFFIXES):
            continue
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or not parts:
            raise WlnetError(f"{paclet}: member {member.filename!r} has an unsafe path")
        key = parts[-1].lower()
        if key in seen:
            raise WlnetError(f"{paclet}: members {seen[key]!r} and {member.filename!r} have "
                             f"the same file name; their models would overwrite each other")
        seen[key] = member.filename
        if member.file_size > MAX_MEMBER_BYTES:
            raise WlnetError(f"{paclet}: member {member.filename!r} declares "
                             f"{member.file_size:,} bytes (limit {MAX_MEMBER_BYTES:,})")
        if member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1) + (1 << 20):
            raise WlnetError(f"{paclet}: member {member.filename!r} expands "
                             f"{member.file_size:,} bytes from {member.compress_size:,} "
                             f"(zip bomb?)")
        total += member.file_size
        if total > MAX_EXTRACT_BYTES:
            raise WlnetError(f"{paclet}: network files total more than "
                             f"{MAX_EXTRACT_BYTES:,} bytes")
        members.append((member, parts))
    return members


def _extract_member(paclet: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo,
                    dest: Path) -> None:
    written = 0
    with archive.open(member) as src, open(dest, "wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > member.file_size:
                raise WlnetError(f"{paclet}: member {member.filename!r} inflates past its "
                                 f"declared size")
            dst.write(chunk)


def convert_file(path: Path, models_dir: Path, *, container: Path | None = None,
                 role: str | None = None) -> str:
    """Convert one .wlnet file into ``models_dir``; returns the one-line summary.

    ``role`` overrides the role taken from the file name (QMRITools names, else "other").

    Raises:
        WlnetError: the file cannot be read or translated.
        OSError: the outputs cannot be written.
    """
    from legseg_tf.derivatives import atomic_write_text
    from legseg_tf.model_store import save_weights_atomically
    from legseg_tf.wlnet.translator import translate  # imports Keras/TensorFlow

    wl = read_wlnet(path)
    stem = path.stem
    known = KNOWN_NETS.get(stem)
    qmritools = known is not None or stem in LEGACY_NETS
    if role is not None and role != (known.role if known else "other"):
        known = KnownNet(role, ROLE_TABLES.get(role)) if role != "other" else None
    role = known.role if known else "other"
    model, config = translate(wl, free_spatial=role in SEGMENTATION_ROLES)
    if role in SEGMENTATION_ROLES:
        check_classes(path, config, known.label_table)
    config_name, weights_name = f"{stem}.json", f"{stem}.weights.h5"
    atomic_write_text(models_dir / config_name, json.dumps(config, indent=1) + "\n")
    save_weights_atomically(model, models_dir / weights_name)
    provenance = {
        "source": "qmritools-wlnet" if qmritools else "wlnet",
        "file": path.name, "file_sha256": sha256_file(path), "wolfram_version": wl.version,
        "converter": f"legseg-import {__version__}",
    }
    if container is not None:
        provenance["paclet"] = container.name
        provenance["paclet_sha256"] = sha256_file(container)
    if qmritools:
        provenance["licence"] = LICENCE_NOTICE
        provenance["citation"] = CITATION
    if stem in LEGACY_NETS:
        provenance["legacy_role"] = LEGACY_NETS[stem]
    entry = {"id": stem, "role": role, "config": config_name, "weights": weights_name,
             "sha256": sha256_file(models_dir / weights_name),
             "label_table": known.label_table if known else None, "provenance": provenance}
    if known:
        from legseg_tf.model_store import write_entry

        try:
            write_entry(models_dir, entry)
        except Exception as exc:  # ManifestError: report as a data problem of this file
            raise WlnetError(f"{path}: manifest entry rejected: {exc}") from exc
        where = "manifest.json"
    else:
        atomic_write_text(models_dir / f"{stem}.entry.json", json.dumps(entry, indent=1) + "\n")
        where = f"{stem}.entry.json"
        if stem in LEGACY_NETS:
            LOGGER.warning("%s is a legacy QMRITools net (%s); its label file is not a legseg "
                           "table, so it is not installed in the manifest", path.name,
                           LEGACY_NETS[stem])
    return summarize(wl, config, role, where)


def summarize(wl: WlnetFile, config: dict, role: str, where: str) -> str:
    """One line: id, role, layer count, parameters, input size, classes."""
    layers = sum(1 for _ in iter_layers(wl.net))
    inputs = "; ".join(f"{i['port']} {'x'.join(map(str, i['wolfram_shape'])) or 'scalar'}"
                       for i in config["inputs"])
    classes = []
    for out in config["outputs"]:
        labels = out.get("decoder", {}).get("labels")
        n = len(labels) if labels else (out["wolfram_shape"][-1] if out["wolfram_shape"] else 1)
        classes.append(f"{out['port']} {n}")
    return (f"{wl.path.stem}: role {role}, Wolfram {wl.version}, {layers} layers, "
            f"{count_parameters(wl):,} parameters, input {inputs} (channels first), "
            f"classes {', '.join(classes)} -> {where}")


if __name__ == "__main__":  # pragma: no cover
    main_entry()
