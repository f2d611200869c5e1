#!/usr/bin/env bash
# Install legseg and its pinned dependencies into the current Python environment.
# Shared by the Dockerfile, Singularity.def and CI so that all three install the same way.
#   container/install.sh [--variant cpu|gpu] [--test] [--deps-only] [SOURCE_DIR]
#     --variant   cpu: tensorflow-cpu; gpu: tensorflow[and-cuda] (CUDA libraries from pip wheels)
#     --test      also install the test tools (pytest)
#     --deps-only install only the pinned dependencies read from SOURCE_DIR/pyproject.toml, not
#                 legseg itself (lets a container build cache the dependency layer)
# pip reads its usual configuration (PIP_CONFIG_FILE, PIP_CERT, PIP_INDEX_URL, ...) from the
# environment; nothing here adds an index or a certificate.
set -euo pipefail
variant=cpu
extras=validator
deps_only=0
src=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
  case "$1" in
    --variant)
      [ $# -ge 2 ] || { echo "install.sh: --variant needs a value (cpu or gpu)" >&2; exit 64; }
      variant=$2; shift 2 ;;
    --test) extras="$extras,test"; shift ;;
    --deps-only) deps_only=1; shift ;;
    -*) echo "install.sh: unknown option '$1'" >&2; exit 64 ;;
    *) src=$1; shift ;;
  esac
done
case "$variant" in cpu|gpu) ;; *) echo "install.sh: --variant must be cpu or gpu, got '$variant'" >&2; exit 64 ;; esac
[ -f "$src/pyproject.toml" ] || { echo "install.sh: no pyproject.toml in '$src'" >&2; exit 66; }
python=${PYTHON:-python}
"$python" -m pip install --no-cache-dir --upgrade "pip>=24"
if [ "$deps_only" = 1 ]; then
  # The dependency list comes from pyproject.toml, the one place where versions are pinned.
  mapfile -t requirements < <("$python" - "$src/pyproject.toml" "$variant,$extras" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
optional = project.get("optional-dependencies", {})
wanted = list(project.get("dependencies", []))
for extra in sys.argv[2].split(","):
    wanted += optional.get(extra, [])
print("\n".join(dict.fromkeys(wanted)))
EOF
)
  "$python" -m pip install --no-cache-dir "${requirements[@]}"
else
  "$python" -m pip install --no-cache-dir -e "$src[$variant,$extras]"
fi
