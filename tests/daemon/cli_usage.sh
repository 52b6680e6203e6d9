#!/usr/bin/env bash
# The CLI contract: usage errors exit 2 with usage text, --help works for every subcommand,
# and nothing crashes on odd arguments.
set -u
bin="${LORAD_BIN:?}"
fail=0
check() { # expected_status description command...
  local want=$1 what=$2; shift 2
  "$@" >/tmp/lorad-cli-out.$$ 2>&1
  local got=$?
  if [ "$got" != "$want" ]; then echo "FAIL: $what: exit $got, want $want"; cat /tmp/lorad-cli-out.$$; fail=1; fi
}
check 2 "no arguments" "$bin"
check 2 "unknown command" "$bin" frobnicate
grep -q "usage: lorad COMMAND" /tmp/lorad-cli-out.$$ || { echo "FAIL: unknown command prints no usage"; fail=1; }
check 0 "top-level --help" "$bin" --help
for cmd in serve train generate inspect tokenize export version; do
  check 0 "$cmd --help" "$bin" "$cmd" --help
  grep -q "usage: lorad $cmd" /tmp/lorad-cli-out.$$ || { echo "FAIL: $cmd --help has no usage line"; fail=1; }
  # An unknown flag is a usage error, never a crash.
  "$bin" "$cmd" --definitely-not-a-flag >/tmp/lorad-cli-out.$$ 2>&1
  st=$?
  if [ "$st" -ne 2 ]; then echo "FAIL: $cmd with an unknown flag: exit $st, want 2"; cat /tmp/lorad-cli-out.$$; fail=1; fi
done
check 0 "version" "$bin" version
grep -q "^lorad [0-9]" /tmp/lorad-cli-out.$$ || { echo "FAIL: version output"; fail=1; }
grep -Eq "^gemm (engine AVX-512 kernel|OpenBLAS)" /tmp/lorad-cli-out.$$ || { echo "FAIL: version names the GEMM kernel"; fail=1; }
rm -f /tmp/lorad-cli-out.$$
[ $fail -eq 0 ] && echo "cli_usage: all checks passed"
exit $fail
