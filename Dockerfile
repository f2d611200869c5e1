# legseg BIDS App image (CPU or GPU).
#
#   docker build -t legseg:$(cat version) .                               # CPU (tensorflow-cpu)
#   docker build -t legseg:$(cat version)-gpu --build-arg VARIANT=gpu .   # GPU (tensorflow[and-cuda])
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out legseg:TAG /bids /out participant
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on 18.09-22.x) for the
# RUN --mount lines. Build arguments (all optional):
#   BASE_IMAGE             any Debian/Ubuntu image with python3.11 and its venv module
#   VARIANT                cpu (default) or gpu; the branch is taken in container/install.sh
#   LEGSEG_VERSION         only feeds the OCI version label and GeneratedBy.Container.Tag; its
#                          default is the content of the `version` file and the build fails when
#                          the two differ (the `version` file is the one source of the version)
#   IMAGE_NAME             the image's name without tag (default legseg; the release workflow
#                          passes ghcr.io/<owner>/legseg): GeneratedBy.Container.Tag of the
#                          outputs is IMAGE_NAME:LEGSEG_VERSION-VARIANT
#   QMRITOOLS_PACLET_URL   URL of a QMRITools release paclet converted into the image at build
#                          time (also: drop *.paclet / *.wlnet files into container/paclets/)
# Build machines that need their own pip configuration (a private index, a TLS-inspecting
# proxy's CA) pass it as BuildKit secrets, which never enter an image layer:
#   docker build --secret id=ca.crt,src=/path/ca.pem --secret id=pip.conf,src=/path/pip.conf .
# Details: docs/containers.md.

# Pinned base (python.org CPython 3.11 on Debian 12). The container tests build from a
# debootstrapped Debian bookworm root with Debian's python3.11 instead.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VARIANT=cpu
ARG LEGSEG_VERSION=0.1.0
ARG IMAGE_NAME=legseg
ARG QMRITOOLS_PACLET_URL=""

# Caches and temporary files all live under /tmp, so HOME need not exist or be writable and a
# run writes nothing outside OUTPUT_DIR, the work dir and /tmp (give /tmp a tmpfs with
# --read-only). Byte code is compiled at build time and never written at run time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    TMPDIR=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/.matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    DENO_DIR=/tmp/.deno \
    TF_CPP_MIN_LOG_LEVEL=2

RUN python3 -m venv /opt/venv

# 1. Pinned dependencies only (read from pyproject.toml): this layer survives source edits.
COPY pyproject.toml /opt/legseg/
COPY container/install.sh /opt/legseg/container/install.sh
RUN --mount=type=secret,id=pip.conf,required=false \
    --mount=type=secret,id=ca.crt,required=false \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    bash /opt/legseg/container/install.sh --deps-only --variant "${VARIANT}" /opt/legseg \
 && rm -rf /tmp/* /tmp/.[!.]*

# 2. legseg itself, same script. The `version` file is the version of the package, of
#    `legseg --version`, of the provenance records and (checked here) of the image label.
COPY README.md LICENSE version run.py /opt/legseg/
COPY legseg_tf /opt/legseg/legseg_tf
RUN --mount=type=secret,id=pip.conf,required=false \
    --mount=type=secret,id=ca.crt,required=false \
    if [ "${LEGSEG_VERSION}" != "$(cat /opt/legseg/version)" ]; then \
      echo "LEGSEG_VERSION build argument '${LEGSEG_VERSION}' differs from the version file" \
           "'$(cat /opt/legseg/version)': update the ARG default in the Dockerfile or pass" \
           "--build-arg LEGSEG_VERSION=\$(cat version)" >&2; \
      exit 1; \
    fi; \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    bash /opt/legseg/container/install.sh --variant "${VARIANT}" /opt/legseg \
 && python -m compileall -q /opt/legseg/legseg_tf /opt/legseg/run.py \
 && ln -s /opt/legseg/version /version \
 && rm -rf /tmp/* /tmp/.[!.]*

# 3. Models are baked in and verified (sha256 against models/manifest.json) now, so that a run
#    never downloads anything. Optional QMRITools networks are converted into
#    /opt/legseg/models-qmritools (container/paclets/ is bind-mounted, so a paclet never becomes
#    a layer of its own).
COPY models /opt/legseg/models
COPY container/verify_models.py container/bake_models.sh /opt/legseg/container/
RUN --mount=type=bind,source=container/paclets,target=/tmp/paclets \
    --mount=type=secret,id=ca.crt,required=false \
    if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi; \
    QMRITOOLS_PACLET_URL="${QMRITOOLS_PACLET_URL}" \
      bash /opt/legseg/container/bake_models.sh /opt/legseg/models /tmp/paclets /opt/legseg/models-qmritools \
 && find /opt/legseg /opt/venv ! -type l \( ! -perm -a+r -o -type d ! -perm -a+x -o -perm /go+w \) \
      -exec chmod a+rX,go-w {} + \
 && find /tmp -mindepth 1 -maxdepth 1 ! -name paclets -exec rm -rf {} +

# Non-root default user (any other uid works too: docker run --user "$(id -u):$(id -g)").
RUN useradd --system --uid 1000 --user-group --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin legseg
ENV LEGSEG_MODELS_DIR=/opt/legseg/models \
    LEGSEG_DOCKER_TAG=${IMAGE_NAME}:${LEGSEG_VERSION}-${VARIANT} \
    LEGSEG_IMAGE_VARIANT=${VARIANT}
USER 1000:1000
WORKDIR /tmp

LABEL org.opencontainers.image.title="legseg" \
      org.opencontainers.image.description="BIDS App: automated full-leg muscle segmentation (Python/Keras port of the QMRITools SegmentData pipeline)" \
      org.opencontainers.image.version="${LEGSEG_VERSION}" \
      org.opencontainers.image.source="https://github.com/legseg/legseg" \
      org.opencontainers.image.url="https://github.com/legseg/legseg" \
      org.opencontainers.image.documentation="https://github.com/legseg/legseg/blob/main/docs/containers.md" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.legseg.variant="${VARIANT}"

ENTRYPOINT ["/opt/venv/bin/python", "/opt/legseg/run.py"]
CMD ["--help"]
