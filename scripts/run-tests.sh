#!/usr/bin/env bash
# Runs the whole suite, then the router suites again on the native relay when it is built
# (both relays must pass the same tests), and prints one summary line.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
status=0

run_mocha() {
  local label="$1"; shift
  local log
  log="$(mktemp)"
  echo "== $label"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local p f
  # Colour codes (CI=true makes some tools colour their output) would hide the summary lines.
  sed -i 's/\x1b\[[0-9;]*m//g' "$log"
  p=$(grep -Eo '^ *[0-9]+ passing' "$log" | grep -Eo '[0-9]+' | tail -1)
  f=$(grep -Eo '^ *[0-9]+ failing' "$log" | grep -Eo '[0-9]+' | tail -1)
  p=${p:-0}
  f=${f:-0}
  # A run that crashed before mocha's summary still counts as a failure.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p))
  failed=$((failed + f))
  [ "$rc" -ne 0 ] && status=1
  rm -f "$log"
}

# Lint (typescript-eslint, prettier, and the import rules of .dependency-cruiser.cjs) counts as
# one check: a failure fails the run but does not stop the tests from running.
echo "== lint"
if npm run --silent lint; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi

run_mocha "all tests (relay: ${SF_RELAY:-auto})" npx mocha --no-color
if node -e "process.exit(require('./dist/router/relay-select').selectRelay('auto').kind === 'native' ? 0 : 1)" 2>/dev/null; then
  run_mocha "router tests on the JS relay" env SF_RELAY=js npx mocha --no-config --no-color --timeout 30000 --exit 'dist/test/integration/router-*.test.js'
else
  echo "== native relay not built: router tests ran on the JS relay only"
fi

echo "tests: ${passed} passed, ${failed} failed"
exit $status
