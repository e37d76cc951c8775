#!/usr/bin/env bash
# Make sure the system pieces the tests and the demo start privately are present:
# mosquitto (broker) and PostgreSQL server binaries (initdb, postgres).
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
fi
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
echo "(on Fedora: sudo dnf install mosquitto postgresql-server; on macOS: brew install mosquitto postgresql)" >&2
exit 1
