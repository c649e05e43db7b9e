#!/usr/bin/env bash
# Have `docker compose` validate docker-compose.yml (needs Docker with the compose plugin; no engine
# is started): with the example settings, with the GPU profile, and refused without a database password.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! docker compose version >/dev/null 2>&1; then
  echo "check-compose.sh needs Docker with the compose plugin (docker compose version)" >&2
  exit 2
fi
docker compose --env-file .env.example config -q
docker compose --env-file .env.example --profile gpu config -q
empty=$(mktemp)
trap 'rm -f "$empty"' EXIT
if env -i PATH="$PATH" docker compose --env-file "$empty" config -q 2>/dev/null; then
  echo "docker-compose.yml accepted a configuration without POSTGRES_PASSWORD" >&2
  exit 1
fi
echo "docker-compose.yml: valid"
