# The lazyimage image: the CLI, the node agent and the operator in one Python install.
# `scripts/build-image` builds it with buildah (README "The image"); `docker build .` works too.

# Any Debian bookworm image with python3.11, venv and apt. The tests pass a base built here
# from Debian packages, as this machine cannot pull from Docker Hub.
ARG BASE=python:3.11-slim-bookworm

# Build stage: the wheels of lazyimage and its dependencies, built once, then installed into a
# venv the final stage copies. pyfuse3 is our patched build (scripts/build-pyfuse3: the PyPI
# sdist, nodeagent/patches/, Cython, compiled against libfuse3).
FROM ${BASE} AS build
# python:*-slim ships Python.h; Debian's python3 keeps it in python3-dev.
RUN apt-get update \
 && headers=$(python3 -c 'import os, sysconfig; print("" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "python3-dev")') \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev pkg-config libfuse3-dev patch $headers \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodeagent ./nodeagent
COPY operator ./operator
COPY scripts/build-pyfuse3 ./scripts/
# A network that intercepts TLS needs its CA bundle for PyPI: pass it as the secret
# `ca-bundle` (scripts/build-image does); a secret is never stored in a layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && export PIP_NO_CACHE_DIR=1 \
 && scripts/build-pyfuse3 /wheels \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --find-links /wheels --wheel-dir /wheels . \
 && python3 -m venv --without-pip /opt/lazyimage \
 && /opt/build/bin/pip --python /opt/lazyimage/bin/python install \
      --no-index --no-cache-dir /wheels/*.whl

# Final stage: the same base, the FUSE 3 runtime and the venv; no compiler, no pip.
FROM ${BASE}
# fuse3: libfuse3 for pyfuse3, and the fusermount3 libfuse falls back to when mount(2) is
# refused (the agent, privileged, mounts directly). `apt-get clean` drops the .debs and
# apt's package caches (70 MiB) that a base without Docker's apt clean-up hook would keep.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/lazyimage /opt/lazyimage
ENV PATH=/opt/lazyimage/bin:$PATH
# The operator needs no privilege: run as nobody, as the chart does. The agent's pod runs as
# root and privileged, which the chart sets (FUSE and mount(2) need it).
USER 65534:65534
ENTRYPOINT ["lazyimage"]
