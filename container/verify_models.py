"""Check a models folder at image build time: manifest valid, every file present, sha256 right.

``python container/verify_models.py MODELS_DIR [--require-any]``

Exit status 0 when every manifest entry checks out, 1 otherwise (the message names the file).
``--require-any`` also fails on an empty manifest. Imports neither TensorFlow nor Keras.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from legseg_tf.model_store import ManifestError, ModelError, load_manifest, verify_weights


def main(argv: list[str] | None = None) -> int:
    """Verify the models folder; print one line per model to stdout."""
    parser = argparse.ArgumentParser(prog="verify_models", description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--require-any", action="store_true", help="fail when no model is listed")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.models_dir)
        for entry in manifest.entries:
            verify_weights(entry)
            print(f"ok {entry.role:<10} {entry.id} sha256={entry.sha256[:16]}...")
    except (ManifestError, ModelError) as error:
        print(f"verify_models: {error}", file=sys.stderr)
        return 1
    if args.require_any and not manifest.entries:
        print(f"verify_models: {manifest.path} lists no model", file=sys.stderr)
        return 1
    print(f"{len(manifest.entries)} model(s) verified in {manifest.models_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
