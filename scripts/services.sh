#!/usr/bin/env bash
# Starts (or stops) a Redis and a Tansu broker on free ports for the tests.
#   scripts/services.sh start   → writes .deps/services.env (export lines)
#   scripts/services.sh stop    → stops what start started
set -euo pipefail
cd "$(dirname "$0")/.."
state=.deps/services
mkdir -p "$state"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

case "${1:-}" in
  start)
    "$0" stop >/dev/null 2>&1 || true
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
      --daemonize yes --pidfile "$PWD/$state/redis.pid" --logfile "$PWD/$state/redis.log"
    wait_port "$rport" 10 || { echo "redis did not start; see $state/redis.log" >&2; exit 1; }
    kport=$(free_port)
    nohup .deps/bin/tansu broker --listener-url "tcp://127.0.0.1:$kport" \
      --advertised-listener-url "tcp://127.0.0.1:$kport" --storage-engine memory://tansu/ \
      >"$state/tansu.log" 2>&1 &
    echo $! >"$state/tansu.pid"
    wait_port "$kport" 20 || { echo "tansu did not start; see $state/tansu.log" >&2; exit 1; }
    cat >.deps/services.env <<ENV
export NEXTBEST_TEST_REDIS_URL=redis://127.0.0.1:$rport/
export NEXTBEST_TEST_KAFKA_BROKERS=127.0.0.1:$kport
ENV
    echo "redis on 127.0.0.1:$rport, tansu on 127.0.0.1:$kport"
    ;;
  stop)
    for f in redis tansu; do
      if [ -f "$state/$f.pid" ]; then
        kill "$(cat "$state/$f.pid")" 2>/dev/null || true
        rm -f "$state/$f.pid"
      fi
    done
    rm -f .deps/services.env
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
