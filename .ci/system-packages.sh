#!/usr/bin/env bash
# Make sure the system pieces the tests and the demo start privately are present:
# mosquitto (broker), PostgreSQL server binaries (initdb, postgres) and Chromium (the console's
# browser tests drive Debian's Chromium with Playwright; Playwright's own browser download is not used).
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
# CJK glyphs for the Simplified Chinese pages in the console's screenshots.
[ -d /usr/share/fonts/opentype/noto ] || need+=(fonts-noto-cjk)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts the packaged services; LienWatch runs private instances on free ports.
    exit 0
fi
echo "error: missing system packages: ${need[*]}" >&2
echo "install them with:  sudo apt-get install ${need[*]}" >&2
echo "(on Fedora: sudo dnf install mosquitto postgresql-server chromium; on macOS: brew install mosquitto postgresql chromium)" >&2
exit 1
