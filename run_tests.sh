#!/usr/bin/env bash
# Install what the test suite needs, then run all of it:
#   - SIPp (Debian package sip-tester) when `sipp` is missing (apt-get, as root or via sudo), and
#     Kamailio (Debian package kamailio, best effort: the side-by-side tests skip without it);
#   - redis-server (the cluster tests' Redis), kamailio-redis-modules and baresip-core (best effort);
#   - asyncd itself in editable mode with its `test` extra (pytest, pytest-timeout, hypothesis);
#   - pytest over tests/ (extra arguments are passed to pytest, e.g. ./run_tests.sh -x -k server).
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v sipp >/dev/null 2>&1; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y sip-tester
fi
if ! command -v kamailio >/dev/null 2>&1 && [ ! -x /usr/sbin/kamailio ]; then
    { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y kamailio; } \
        || echo "run_tests.sh: kamailio not installed; its comparison tests will be skipped"
fi

if ! command -v redis-server >/dev/null 2>&1; then
    # the cluster tests' real Redis (ndb_redis, db_redis, shared registrations)
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y redis-server
fi
if [ ! -e /usr/lib/x86_64-linux-gnu/kamailio/modules/db_redis.so ] && command -v kamailio >/dev/null 2>&1; then
    # Kamailio's own ndb_redis/db_redis, the reference in the cluster comparison tests (best effort)
    { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y kamailio-redis-modules; } \
        || echo "run_tests.sh: kamailio-redis-modules not installed; its comparison tests will be skipped"
fi

if ! command -v baresip >/dev/null 2>&1; then
    # a real softphone (headless, driven over its ctrl_tcp socket) registering and calling (best effort)
    { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends baresip-core; } \
        || echo "run_tests.sh: baresip not installed; the softphone tests will be skipped"
fi

PY="${PYTHON:-python3}"
"$PY" -m pip install -q -e '.[test]'

set +e
"$PY" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    # pytest's "no tests collected" (e.g. a -k filter that matched nothing) is not a failure
    echo "0 passed, 0 failed: pytest collected no tests (exit 5)"
    exit 0
fi
exit "$rc"
