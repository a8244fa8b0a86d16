#!/usr/bin/env bash
# Start Triton (NGC build, TensorRT backend) on a matteserve GPU repository.
#
# 1. `matteserve build --target gpu --if-stale` writes the repository from this image at every start
#    (configs sized to this container's CPUs, the python adapters, the manifest) and takes the engine
#    from the engine store ($MATTESERVE_ENGINES) when its stamp matches this GPU, TensorRT, model and
#    build options; otherwise it builds one there under the store's lock (minutes on a new GPU type; a
#    pod starting beside it waits for the lock and then reuses that engine). It fails rather than
#    start Triton on nothing.
# 2. The python backend's shared-memory region per instance: MATTESERVE_PYTHON_SHM_BYTES when set,
#    else sized from /dev/shm and the repository's python instances (`matteserve python-shm`).
# 3. exec tritonserver, so it receives SIGTERM directly and drains in-flight requests.
#
# Extra arguments are passed to tritonserver.
set -euo pipefail

repository="${MATTESERVE_REPOSITORY:-/srv/matteserve/u2netp-gpu}"
model="${MATTESERVE_MODEL:-u2netp}"
tritonserver="${MATTESERVE_TRITONSERVER:-/opt/tritonserver/bin/tritonserver}"

matteserve build --target gpu --if-stale --model "${model}" --out "${repository}"
matteserve check-engine "${repository}"

shm_bytes="${MATTESERVE_PYTHON_SHM_BYTES:-$(matteserve python-shm "${repository}")}"
growth_bytes=$((shm_bytes < 67108864 ? shm_bytes : 67108864))

exec "${tritonserver}" \
    --model-repository="${repository}" \
    --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
    --allow-metrics=true --allow-gpu-metrics=true --metrics-interval-ms=2000 \
    --metrics-config=histogram_latencies=true \
    --backend-config="python,shm-default-byte-size=${shm_bytes}" \
    --backend-config="python,shm-growth-byte-size=${growth_bytes}" \
    --exit-timeout-secs=30 \
    "$@"
