#!/usr/bin/env bash
# The agent's memory at idle, 100 and 1,000 HTTP targets at 1 s (reused connections), as
# benches/peers.sh runs it, split into anonymous memory (the heap: what the agent
# allocates) and file-backed pages (the binary's code and data the kernel mapped in).
# Several binaries are measured alternately, so an old build can be compared with a new one:
#
#   benches/agent-memory.sh [--rounds 3] [--seconds 20] [--scenarios idle,100,1000] [BINARY...]
#
# BINARY defaults to the release build of this checkout. Prints one Markdown table: the
# median over rounds of VmRSS, RssAnon and RssFile read from /proc/PID/status after
# SECONDS of polling. The target is benches/peers/target.go (built with Go if missing,
# cached like benches/peers/install.sh does). RSS barely depends on CPU load, so a busy
# machine gives usable figures (CPU figures it would not).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
seconds=20
scenarios=idle,100,1000
binaries=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    *) binaries+=("$1"); shift ;;
  esac
done
if [ ${#binaries[@]} = 0 ]; then
  cargo build --release --quiet --bin invariant-agent
  binaries=("${CARGO_TARGET_DIR:-target}/release/invariant-agent")
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/invariant-agent
target="$cache/peers-target-$(sha256sum benches/peers/target.go | cut -c1-16)"
if ! [ -x "$target" ]; then
  mkdir -p "$cache"
  (cd benches/peers && GO111MODULE=off go build -o "$target.tmp" target.go)
  mv "$target.tmp" "$target"
fi

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# 1,000 keep-alive connections need more than 1,024 files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$target" -listen "127.0.0.1:$port" 2>/dev/null &
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

config() { # scenario -> invariants file, as benches/peers/bench.py writes it for the agent
  local n=$1 interval=1 timeout=1 window=1m count=$1
  if [ "$n" = idle ]; then interval=3600; timeout=5; window=1h; count=1; fi
  {
    echo "apiVersion: invariant-agent/v1alpha1"
    echo "kind: InvariantSet"
    echo "defaults: {interval: ${interval}s, timeout: ${timeout}s}"
    echo "invariants:"
    for i in $(seq 1 "$count"); do
      printf '  - name: target-%s\n    description: bench target %s\n    owner: bench\n    probe:\n      http: {url: "http://127.0.0.1:%s/t/%s", connection: reused}\n    condition:\n      availability: {target: 99, window: %s}\n' \
        "$i" "$i" "$port" "$i" "$window"
    done
  } >"$work/$n.yaml"
}

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

: >"$work/results"
IFS=, read -ra list <<<"$scenarios"
for scenario in "${list[@]}"; do
  config "$scenario"
  for _ in $(seq "$rounds"); do
    for b in "${binaries[@]}"; do
      "$b" --log-level warn run -c "$work/$scenario.yaml" --report-dir "$work/report" >/dev/null 2>"$work/agent.log" &
      pid=$!
      sleep "$seconds"
      echo "$scenario $b $(status_kib $pid VmRSS) $(status_kib $pid RssAnon) $(status_kib $pid RssFile)" >>"$work/results"
      kill -TERM "$pid"; wait "$pid" || true
    done
  done
done

python3 - "$work/results" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    scenario, binary, rss, anon, file = line.split()
    rows[(scenario, binary)].append((int(rss), int(anon), int(file)))
print("| scenario | binary | RSS | anonymous | file-backed |")
print("| --- | --- | --- | --- | --- |")
title = {"idle": "idle (1 target, 1 h)"}
for (scenario, binary), values in rows.items():
    med = [statistics.median(v[i] for v in values) / 1024 for i in range(3)]
    print(f"| {title.get(scenario, scenario + ' HTTP targets @ 1 s')} | {binary} | "
          f"{med[0]:.1f} MiB | {med[1]:.1f} MiB | {med[2]:.1f} MiB |")
PY
