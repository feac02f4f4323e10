# petal's container image: one image for the API replicas, the GPU training workers and CPU-only
# hosts (the CUDA libraries are inside; the driver, libcuda.so, comes from the NVIDIA container
# toolkit at run time, and without it petal runs on the CPU).
#
#   docker build -t petal:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -e PETAL__AUTH__TOKENS='[{name="me",token="change-me-0123456789",scopes=["admin"]}]' petal:0.1.0
#   docker run --rm --gpus all ... petal:0.1.0 worker --host 0.0.0.0
#
# The default command serves everything from one process (role all) with the local registry under
# /var/lib/petal. Without auth.tokens petal binds 127.0.0.1 whatever --host says, so the published
# port answers only once a token is configured. k8s/README.md deploys the split API/worker roles.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm
# libtorch comes from the torch wheel (tch 0.24.0 <-> libtorch 2.11.0, the CUDA 13 build on PyPI);
# onnxruntime-gpu is built for the same CUDA 13 / cuDNN 9 and also runs CPU-only.
ARG TORCH_VERSION=2.11.0
ARG ONNXRUNTIME_VERSION=1.31.1

# --- build ---------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
ARG TORCH_VERSION
ARG ONNXRUNTIME_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# g++: csrc/optim.cpp against libtorch's headers (and the C of mozjpeg, zstd, aws-lc through the cc
# crate); nasm: libjpeg-turbo's SIMD decoder; python3-venv: the torch and onnxruntime-gpu wheels. No protoc (protox) and no git (the
# build records an empty commit when there is no .git).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++=4:12.2.0-3 python3-venv=3.11.2-1+b1 nasm=2.16.01-1 \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" "onnxruntime-gpu==${ONNXRUNTIME_VERSION}"

WORKDIR /build
COPY Cargo.toml Cargo.lock ./
RUN cargo fetch --locked
COPY build.rs ./
# console/: the web console's files, compiled in (include_bytes!).
COPY console console
COPY csrc csrc
COPY proto proto
# registry/catalog/*.json and scripts/bench_*.py are compiled in (include_str!).
COPY registry registry
COPY scripts/bench_train.py scripts/bench_ort.py scripts/bench_batch.py scripts/bench_preprocess.py scripts/
COPY src src
RUN cargo build --release --locked

# Everything the runtime stage takes, laid out as it will be: the binary, libtorch, the CUDA 13 and
# cuDNN 9 libraries of torch's wheels (next to torch/lib as in site-packages, so that libtorch's own
# $ORIGIN/../../nvidia/*/lib rpath finds them too), onnxruntime-gpu's three libraries in one folder,
# and the CA bundle for HTTPS to S3 and to the weights' download hosts.
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && lib=/staging/opt/petal/lib \
 && install -d "$lib/torch/lib" "$lib/onnxruntime" \
 && cp "$site"/torch/lib/lib*.so* "$lib/torch/lib/" \
 && rm "$lib/torch/lib/libtorch_python.so" \
 && nvidia="$(find "$site/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib -printf '%P\n' | sort | xargs)" \
 && if [ "$nvidia" != "cu13/lib cudnn/lib cusparselt/lib nccl/lib nvshmem/lib" ]; then \
      echo "torch's NVIDIA wheels now ship $nvidia: update the copy and LD_LIBRARY_PATH" >&2; exit 1; \
    fi \
 && for pkg in cu13 cudnn cusparselt nccl nvshmem; do \
      install -d "$lib/nvidia/$pkg/lib" && cp "$site/nvidia/$pkg/lib/"*.so* "$lib/nvidia/$pkg/lib/"; \
    done \
 && cp "$site/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION}" \
       "$site/onnxruntime/capi/libonnxruntime_providers_shared.so" \
       "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" "$lib/onnxruntime/" \
 && install -D -m 0755 target/release/petal /staging/usr/local/bin/petal \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /staging/etc/ssl/certs/ca-certificates.crt \
 && path="$lib/torch/lib" \
 && for pkg in cu13 cudnn cusparselt nccl nvshmem; do path="$path:$lib/nvidia/$pkg/lib"; done \
 && missing="$(LD_LIBRARY_PATH="$path:$lib/onnxruntime" ldd /staging/usr/local/bin/petal "$lib"/onnxruntime/*.so* \
      | grep 'not found' | grep -v 'libcuda\.so\.1' || true)" \
 && if [ -n "$missing" ]; then echo "unresolved libraries in the image: $missing" >&2; exit 1; fi

# --- run -----------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG ONNXRUNTIME_VERSION

RUN groupadd --system --gid 10001 petal \
 && useradd --system --uid 10001 --gid petal --home-dir /var/lib/petal --no-create-home \
      --shell /usr/sbin/nologin petal \
 && install -d -o petal -g petal -m 0750 \
      /var/lib/petal /var/lib/petal/registry /var/lib/petal/work /var/lib/petal/weights

COPY --from=builder /staging/ /
# The seed registry: the bundled flower model and the catalogs, copied into the registry at start
# when missing (registry.seed). Read-only at run time.
COPY registry /opt/petal/registry

ENV LD_LIBRARY_PATH=/opt/petal/lib/torch/lib:/opt/petal/lib/nvidia/cu13/lib:/opt/petal/lib/nvidia/cudnn/lib:/opt/petal/lib/nvidia/cusparselt/lib:/opt/petal/lib/nvidia/nccl/lib:/opt/petal/lib/nvidia/nvshmem/lib:/opt/petal/lib/onnxruntime \
    ORT_DYLIB_PATH=/opt/petal/lib/onnxruntime/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
    PETAL__ONNXRUNTIME__LIBRARY=/opt/petal/lib/onnxruntime/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
    PETAL__REGISTRY__SEED=/opt/petal/registry \
    PETAL__REGISTRY__PATH=/var/lib/petal/registry \
    PETAL__JOBS__WORK_DIR=/var/lib/petal/work \
    PETAL__WEIGHTS__CACHE=/var/lib/petal/weights \
    PETAL__LOG__FORMAT=json \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HOME=/var/lib/petal \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /var/lib/petal
USER 10001:10001
# Fails the build when a library does not load or the image's configuration does not validate.
RUN ["petal", "config"]

EXPOSE 8080
# `petal probe [URL]` GETs http://127.0.0.1:8080/healthz and exits 0 on a 2xx answer (there is no
# curl in the image). On another port: docker run --health-cmd 'petal probe http://127.0.0.1:PORT/healthz'.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["petal", "probe"]
ENTRYPOINT ["petal"]
CMD ["serve", "--host", "0.0.0.0"]
