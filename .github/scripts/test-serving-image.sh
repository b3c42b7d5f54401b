#!/usr/bin/env bash
# Test a built model-serving image as an ephemeral container against the real local platform:
# run the pipeline (Vault, MongoDB, MLflow; registers a model), start the image with the stage's
# Vault contract, wait for /readyz, check /version, then run the Locust load gate against it.
set -euo pipefail
image="$1"
port=18080
make run
eval "$(.venv/bin/python -m pipeline_ops env model-serving)"
container="$(docker run -d --rm --network host --read-only --tmpfs /tmp \
  -e VAULT_ADDR -e VAULT_AUTH_METHOD -e VAULT_PATH_AUTH -e VAULT_ROLE -e VAULT_SECRET_PATH \
  -e VAULT_TOKEN_FILE=/run/vault/token -v "${VAULT_TOKEN_FILE}:/run/vault/token:ro" \
  -e SERVING_MODEL_ALIAS=challenger -e HOME=/tmp \
  --entrypoint model-serving "$image" --host 127.0.0.1 --port "$port")"
trap 'docker logs "$container" | tail -n 50; docker stop "$container" >/dev/null; make down' EXIT
for _ in $(seq 60); do
  curl -fsS "http://127.0.0.1:${port}/readyz" && break
  sleep 2
done
curl -fsS "http://127.0.0.1:${port}/readyz"
curl -fsS "http://127.0.0.1:${port}/version"
.venv/bin/load-gate --host "http://127.0.0.1:${port}" --users 10 --spawn-rate 5 --run-time 20s \
  --max-error-ratio 0.01 --max-p95-ms 500 --max-p99-ms 1000 --min-rps 20 \
  --report-dir .local/load-gate
