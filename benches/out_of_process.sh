#!/usr/bin/env bash
# The mock server as its users run it: in its own process (the release binary), under an
# external load generator (wrk, from Debian's packages), beside wiremock-rs and a bare
# hyper server (examples/bench_server.rs), each in its own process; wiremock also with
# its request recording off. POST /orders with a
# 200-byte JSON body and a new Idempotency-Key per request; 64 and 256 connections; one
# wrk thread; rounds interleaved. Server CPU per request is read from /proc.
#
#   bash benches/out_of_process.sh [seconds per run, default 5] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
rounds=${2:-3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --quiet --release -p idempotent-retry-mock --bin idempotent-mock-server
cargo build --quiet --release --example bench_server
ticks=$(getconf CLK_TCK)

declare -A pids urls
work=$(mktemp -d)
start() { # name, command...: the server's first line is its URL
  local name=$1; shift
  # Its standard input stays open (and it serves) until this script ends.
  sleep infinity | "$@" >"$work/$name.out" &
  pids[$name]=$!
  for ((i = 0; i < 100; i++)); do
    if [ -s "$work/$name.out" ]; then break; fi
    sleep 0.1
  done
  local line
  line=$(head -1 "$work/$name.out")
  urls[$name]=${line#listening on }
  [ -n "${urls[$name]}" ] || { echo "$name did not start" >&2; exit 1; }
}
cpu() { # the process's user + system ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

start mock target/release/idempotent-mock-server --threads 2
start wiremock target/release/examples/bench_server wiremock
start wiremock-quiet target/release/examples/bench_server wiremock-quiet
start bare target/release/examples/bench_server bare
trap 'kill ${pids[mock]} ${pids[wiremock]} ${pids[wiremock-quiet]} ${pids[bare]} 2>/dev/null || true; pkill -P $$ sleep 2>/dev/null || true; rm -rf "$work"' EXIT

declare -A reqs secs cpus
for conns in 64 256; do
  for ((round = 1; round <= rounds; round++)); do
    for name in mock wiremock wiremock-quiet bare; do
      before=$(cpu "${pids[$name]}")
      out=$(wrk -t1 -c"$conns" -d"${seconds}s" -s benches/wrk/unique_keys.lua "${urls[$name]}/orders")
      after=$(cpu "${pids[$name]}")
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
      [ -z "$non2xx" ] || { echo "$name: $non2xx answers were not 2xx" >&2; exit 1; }
      key="$name/$conns"
      reqs[$key]=$(( ${reqs[$key]:-0} + n ))
      secs[$key]=$(( ${secs[$key]:-0} + seconds ))
      cpus[$key]=$(( ${cpus[$key]:-0} + after - before ))
    done
  done
done

echo "| server (own process) | connections | requests/s | vs wiremock | vs bare hyper | server CPU µs/request |"
echo "|---|---:|---:|---:|---:|---:|"
for conns in 64 256; do
  for name in mock wiremock wiremock-quiet bare; do
    key="$name/$conns"
    awk -v n="${reqs[$key]}" -v s="${secs[$key]}" -v c="${cpus[$key]}" -v t="$ticks" \
        -v w="${reqs[wiremock/$conns]}" -v b="${reqs[bare/$conns]}" -v name="$name" -v conns="$conns" \
        'BEGIN { printf "| %s | %d | %.0f | %.2f× | %.2f× | %.1f |\n", name, conns, n / s, n / w, n / b, c / t * 1e6 / n }'
  done
done
