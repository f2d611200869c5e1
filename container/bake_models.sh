#!/usr/bin/env bash
# Image build step: optionally convert QMRITools networks, then verify every baked models folder.
#   container/bake_models.sh MODELS_DIR [PACLET_DIR [QMRITOOLS_MODELS_DIR]]
#
#   MODELS_DIR            the legseg models (models/ of the source tree); always verified.
#   PACLET_DIR            folder with optional QMRITools release paclets (*.paclet) or single
#                         *.wlnet files; each is converted by legseg-import into
#                         QMRITOOLS_MODELS_DIR (default: MODELS_DIR-qmritools).
#   QMRITOOLS_PACLET_URL  (environment) URL of a paclet downloaded and converted the same way.
#                         The download uses $PIP_CERT / $SSL_CERT_FILE as CA bundle when set.
#
# Nothing here is required: without paclets the image holds only MODELS_DIR. Every models folder
# present at the end is checked with verify_models.py (files present, sha256 as in the manifest);
# any mismatch fails the build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] && [ $# -le 3 ] || { echo "usage: bake_models.sh MODELS_DIR [PACLET_DIR [QMRITOOLS_MODELS_DIR]]" >&2; exit 64; }
models=$1
paclets=${2:-}
qmri=${3:-${models%/}-qmritools}
python=${PYTHON:-python}
[ -f "$models/manifest.json" ] || { echo "bake_models.sh: no manifest.json in '$models'" >&2; exit 66; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
sources=()
if [ -n "${QMRITOOLS_PACLET_URL:-}" ]; then
  name=$(basename "${QMRITOOLS_PACLET_URL%%\?*}")
  case "$name" in *.paclet|*.wlnet) ;; *) name=QMRITools.paclet ;; esac
  echo "bake_models: downloading $QMRITOOLS_PACLET_URL"
  "$python" - "$QMRITOOLS_PACLET_URL" "$scratch/$name" <<'EOF'
import os, shutil, ssl, sys, urllib.request
cafile = next((c for c in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")) if c and os.path.isfile(c)), None)
context = ssl.create_default_context(cafile=cafile)
with urllib.request.urlopen(sys.argv[1], context=context, timeout=600) as response, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(response, out)
EOF
  sources+=("$scratch/$name")
fi
if [ -n "$paclets" ] && [ -d "$paclets" ]; then
  while IFS= read -r -d '' file; do sources+=("$file"); done \
    < <(find "$paclets" -maxdepth 1 -type f \( -name '*.paclet' -o -name '*.wlnet' \) -print0 | sort -z)
fi
if [ ${#sources[@]} -gt 0 ]; then
  echo "bake_models: converting ${#sources[@]} file(s) into $qmri"
  "$python" -c 'import sys; from legseg_tf.wlnet.cli import main; sys.exit(main())' \
    "${sources[@]}" --out "$qmri"
fi

"$python" "$here/verify_models.py" "$models"
if [ -f "$qmri/manifest.json" ]; then
  "$python" "$here/verify_models.py" --require-any "$qmri"
fi
