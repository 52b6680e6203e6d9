#!/usr/bin/env bash
# The unit files pass systemd-analyze verify, and `cmake --install` lays down the binary, the units
# and a default config that the daemon itself accepts.
set -eu
src="${LORAD_SOURCE_DIR:?}"
build="${LORAD_BUILD_DIR:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/usr" >/dev/null
test -x "$tmp/usr/bin/lorad"
unit="$tmp/usr/lib/systemd/system/lorad.service"
test -f "$unit" && test -f "$tmp/usr/lib/systemd/system/lorad.socket"
conf="$tmp/usr/etc/lorad/lorad.conf"
test -s "$conf"
for key in Type=notify DynamicUser=yes StateDirectory=lorad ConfigurationDirectory=lorad ProtectSystem=strict \
           ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes "CapabilityBoundingSet=" SystemCallFilter=@system-service; do
  grep -qx "$key" "$unit" || { echo "FAIL: lorad.service lacks $key"; exit 1; }
done
# verify resolves ExecStart, so point it at the installed binary's real path.
sed -i "s#^ExecStart=[^ ]*#ExecStart=$tmp/usr/bin/lorad#" "$unit"
out=$(systemd-analyze verify "$unit" "$tmp/usr/lib/systemd/system/lorad.socket" 2>&1 | grep -v -e "Failed to connect" -e "^$" || true)
if [ -n "$out" ]; then echo "FAIL: systemd-analyze verify:"; echo "$out"; exit 1; fi
# The shipped config, with every key uncommented (section headers kept), is accepted by the config parser.
sed -n -e '/^\[[a-z_]*\]$/p' -e 's/^#\([a-z_][a-z_]* \)/\1/p' "$conf" > "$tmp/all.conf"
test "$(wc -l < "$tmp/all.conf")" -ge 10
"$tmp/usr/bin/lorad" serve --config "$tmp/all.conf" --check-config | grep -qx "configuration ok"
printf 'workers 2\nno_such_key 1\n' > "$tmp/bad.conf"
if "$tmp/usr/bin/lorad" serve --config "$tmp/bad.conf" --check-config 2>"$tmp/err"; then echo "FAIL: bad config accepted"; exit 1; fi
grep -q "bad.conf:2" "$tmp/err" || { echo "FAIL: config error does not name the line:"; cat "$tmp/err"; exit 1; }
echo "systemd units: all checks passed"
