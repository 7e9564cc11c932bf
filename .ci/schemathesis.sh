#!/usr/bin/env bash
# OpenAPI fuzzing: schemathesis against the issuer and the verifier services, each started with
# uvicorn on loopback over a fresh temporary SQLite database. Exit status 1 on any server error
# or contract failure (status code, content type, headers, response schema, schema-valid
# data refused, schema-violating data taken, wrong-method handling, Allow header). Settings: .ci/schemathesis.toml. See docs/conformance.md, "OpenAPI fuzzing".
#
# Usage: .ci/schemathesis.sh [issuer] [verifier]        (default: both)
# Environment:
#   ST_MAX_EXAMPLES  examples per operation and phase (default 25)
#   ST_SEED          hypothesis seed (default 20260101): the same seed, the same requests
#   ST_OUT           directory for each service's JUnit report and server log (default: temp)
#   VENV             the virtualenv with tessera and schemathesis installed (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
tessera=$VENV/bin/tessera
st=$VENV/bin/schemathesis
max_examples=${ST_MAX_EXAMPLES:-25}
seed=${ST_SEED:-20260101}
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(issuer verifier)

work=$(mktemp -d)
out=${ST_OUT:-$work/out}
mkdir -p "$out"
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_up() {  # URL: wait until the service answers, at most 30 s
  for _ in $(seq 1 150); do
    if "$VENV/bin/python" -c 'import sys, httpx; httpx.get(sys.argv[1], timeout=1)' "$1" \
         2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "service at $1 did not start" >&2
  return 1
}

# One schemathesis run: every phase (examples, coverage, fuzzing, stateful links), every check
# (docs/conformance.md).
fuzz() {  # NAME BASE_URL [extra schemathesis args]
  local name=$1 url=$2
  shift 2
  "$st" --config-file .ci/schemathesis.toml run "$url/openapi.json" --url "$url" \
    --checks all \
    --max-examples "$max_examples" --seed "$seed" --workers 1 \
    --phases examples,coverage,fuzzing,stateful \
    --suppress-health-check all --request-timeout 10 --no-color \
    --report junit --report-junit-path "$out/$name-junit.xml" "$@"
}

status=0
for service in "${services[@]}"; do
  port=$(free_port)
  base=http://127.0.0.1:$port
  case $service in
    issuer)
      export TESSERA_DATABASE_URL="sqlite:///$work/issuer.db" TESSERA_PUBLIC_URL=$base
      TESSERA_MASTER_KEY=$("$tessera" issuer master-key)
      export TESSERA_MASTER_KEY
      "$tessera" issuer migrate >/dev/null
      # A brand with a program, so the brand's public routes and the admin API are reachable.
      api_key=$("$tessera" issuer brand create acme --name "Acme Coffee" |
                "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
      "$tessera" issuer program create --brand acme --name Beans \
        --tier silver:1:0 --tier gold:2:1000 >/dev/null
      "$tessera" issuer serve --host 127.0.0.1 --port "$port" >"$out/issuer-server.log" 2>&1 &
      server_pid=$!
      wait_up "$base/healthz"
      fuzz issuer "$base" -H "Authorization: Bearer $api_key" || status=1
      ;;
    verifier)
      printf '{"issuers": []}\n' >"$work/trust.json"
      # A till key, so the till's routes (requests, results, events) are reachable.
      till_key=$("$tessera" verifier till create --tills "$work/tills.json" --label fuzz |
                 "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
      "$tessera" verifier serve --trust "$work/trust.json" --host 127.0.0.1 --port "$port" \
        --store "sqlite:///$work/verifier.db" --tills "$work/tills.json" --log-level warning \
        >"$out/verifier-server.log" 2>&1 &
      server_pid=$!
      wait_up "$base/openapi.json"
      fuzz verifier "$base" -H "Authorization: Bearer $till_key" || status=1
      ;;
    *) echo "unknown service: $service" >&2; exit 2 ;;
  esac
  stop_server
done
exit $status
