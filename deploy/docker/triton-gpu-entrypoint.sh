#!/usr/bin/env bash
# Start Triton (NGC build, TensorRT backend) on a matteserve GPU repository.
#
# 1. `matteserve check-engine` exits non-zero when the repository has no engine for this GPU's
#    compute capability and this TensorRT; then `matteserve build --target gpu --if-stale` builds
#    one (minutes on a new GPU type; the timing cache next to the repository shortens rebuilds).
# 2. exec tritonserver, so it receives SIGTERM directly and drains in-flight requests.
#
# Extra arguments are passed to tritonserver.
set -euo pipefail

repository="${MATTESERVE_REPOSITORY:-/models/u2netp-gpu}"
shm_bytes="${MATTESERVE_PYTHON_SHM_BYTES:-268435456}"

if ! matteserve check-engine "${repository}"; then
    echo "no engine for this GPU and TensorRT in ${repository}: building one" >&2
    matteserve build --target gpu --out "${repository}" --if-stale
fi

# The python backend moves each image between Triton and the pre/post models through /dev/shm:
# shm-default-byte-size is the region each python model instance starts with (big enough for a
# 40-megapixel RGB image with no growth steps); /dev/shm must be larger than all instances together.
exec /opt/tritonserver/bin/tritonserver \
    --model-repository="${repository}" \
    --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
    --allow-metrics=true --allow-gpu-metrics=true --metrics-interval-ms=2000 \
    --metrics-config=histogram_latencies=true \
    --backend-config="python,shm-default-byte-size=${shm_bytes}" \
    --backend-config="python,shm-growth-byte-size=67108864" \
    --exit-timeout-secs=30 \
    "$@"
