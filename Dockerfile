# syntax=docker/dockerfile:1
# The base images are build arguments so a machine without a registry can build from bases made
# from Debian packages (tools/build_images.py); the defaults are the public images.
ARG BUILD_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm

# Stage 1: build the wheel. The CSI stubs are generated from the official spec module,
# fetched with the Go tool, exactly as `make proto` does on a developer machine.
FROM ${BUILD_IMAGE} AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --quiet grpcio-tools==1.85.1 build \
    && /opt/build/bin/python tools/gen_csi_stubs.py \
    && /opt/build/bin/python -m build --wheel --outdir /dist

# Stage 2: the runtime image, one image for the controller and the node agent.
FROM ${RUNTIME_IMAGE}
# The node agent shells out to these: lvm for pools, mkfs/resize for filesystems, losetup,
# blkid and wipefs for the disk safety probes.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        lvm2 e2fsprogs xfsprogs util-linux fdisk \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /dist/*.whl /tmp/
RUN python3 -m venv /opt/cairn && /opt/cairn/bin/pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
ENV PATH=/opt/cairn/bin:$PATH
# The controller runs as this user; the node agent's DaemonSet overrides it with a privileged
# root container because it must run lvm, mkfs and mount on the host's devices.
RUN useradd --system --uid 65532 --no-create-home cairn
USER 65532
ENTRYPOINT ["cairn-controller"]
