#!/usr/bin/env bash
# The standalone mock server driven from curl, as a client in any language would use it:
# create, replay, lose an answer and retry with the same key, read back, reset.
# Checks every answer and exits non-zero on the first surprise.
#
#   bash mock/examples/curl.sh   (builds the binary if needed; needs curl)
set -euo pipefail
cd "$(dirname "$0")/../.." # the workspace root, where target/ is

cargo build --quiet --release -p idempotent-retry-mock --bin idempotent-mock-server
log=$(mktemp)
target/release/idempotent-mock-server --addr 127.0.0.1:0 --require-key >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$log"' EXIT

# The server prints the address it listens on; wait for it (at most 10 s).
for _ in $(seq 100); do
  base=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -n 1 || true)
  [ -n "$base" ] && break
  sleep 0.1
done
[ -n "$base" ] || { echo "the server did not start:"; cat "$log"; exit 1; }
echo "server at $base"

expect() { # what, pattern, text
  if ! grep -qiE "$2" <<<"$3"; then
    echo "FAILED: $1: expected /$2/ in:"; echo "$3"; exit 1
  fi
  echo "ok: $1"
}
order() { # key; prints status line, headers and body
  curl -s -i -X POST "$base/orders" -H "Idempotency-Key: $1" \
       -H 'Content-Type: application/json' -d '{"sku":"tea","qty":2}'
}

expect "first request executes" '^HTTP/1.1 201' "$(order order-1)"
expect "same key again is replayed" '^idempotent-replayed: true' "$(order order-1)"
expect "no key is refused (--require-key)" '^HTTP/1.1 400' \
  "$(curl -s -i -X POST "$base/orders" -d '{}')"

# Lose the next answer after the work is done: curl sees an empty reply (exit 52).
curl -s -X POST "$base/__admin/faults" -d '{"fault": "drop_after_processing", "times": 1}' >/dev/null
if order order-2 >/dev/null; then echo "FAILED: the answer was not lost"; exit 1; fi
echo "ok: answer lost after processing"
expect "retry with the same key gets the stored answer" '^idempotent-replayed: true' "$(order order-2)"

stats=$(curl -s "$base/__admin/stats")
echo "stats: $stats"
expect "two orders executed once each" '"executions": ?2' "$stats"
expect "no duplicates" '"duplicates": ?\[\]' "$stats"

curl -s -X POST "$base/__admin/reset" >/dev/null
expect "reset clears the counts" '"executions": ?0' "$(curl -s "$base/__admin/stats")"
echo "curl example passed"
