#!/bin/sh
# Lints openapi.yaml with Redocly's recommended rules; errors fail the test (warnings do not).
set -eu
src=${LORAD_SOURCE_DIR:?}
bin="$src/tools/node_modules/.bin/redocly"
if [ ! -x "$bin" ]; then
    echo "tools/node_modules missing: run scripts/setup-deps (npm ci in tools/)" >&2
    exit 1
fi
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true "$bin" lint --format=stylish "$src/openapi.yaml"
