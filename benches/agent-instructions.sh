#!/usr/bin/env bash
# User-space instructions per probe of the agent, counted by callgrind, and the functions
# they go to. CPU time on a shared 2-core machine moves ±10 % between runs of the same
# build; instruction counts move about 1 %, so this is how two builds are compared
# (benches/README.md, "CPU per probe").
#
# The agent polls N HTTP targets at 1 s on a local Go keep-alive server (the peers bench's
# target, benches/peers/target.go) under valgrind twice, for 12 s and for 32 s; the
# difference is 20 s of steady state, so start-up, the first and the final report cancel
# out. Checkpoints are off by default (--checkpoint-interval 1h): they fall into the
# windows unevenly; pass --checkpoint-interval 5s to include them.
#
#   benches/agent-instructions.sh [--targets 300] [--binary PATH] [--top 30]
#                                 [--checkpoint-interval 1h]
#
# Installs valgrind (apt) when missing. Under valgrind the agent runs ~50x slower, so
# latencies are higher than in a normal run and 300 targets is about what it keeps up
# with; the figure is per probe all the same.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=300 binary="" top=30 checkpoint=1h
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) targets=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --checkpoint-interval) checkpoint=$2; shift 2 ;;
    *) echo "usage: $0 [--targets N] [--binary PATH] [--top N] [--checkpoint-interval D]" >&2; exit 2 ;;
  esac
done

if ! command -v valgrind >/dev/null; then
  echo "agent-instructions: installing valgrind (apt)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
if [ -z "$binary" ]; then
  cargo build --release --quiet --bin invariant-agent
  binary="$(pwd)/${CARGO_TARGET_DIR:-target}/release/invariant-agent"
fi
export PATH="$PATH:/usr/local/go/bin"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/invariant-agent"
mkdir -p "$cache"
server="$cache/peers-target-$(sha256sum benches/peers/target.go | cut -c1-16)"
if ! [ -x "$server" ]; then
  (cd benches/peers && GO111MODULE=off go build -o "$server.tmp" target.go) && mv "$server.tmp" "$server"
fi

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$server" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
pids+=($!)
python3 - "$targets" "$port" >"$work/invariants.yaml" <<'EOF'
import sys
n, port = int(sys.argv[1]), sys.argv[2]
print("apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ndefaults: {interval: 1s, timeout: 1s}\ninvariants:")
for i in range(1, n + 1):
    print(f"  - name: target-{i}\n    description: bench target {i}\n    owner: bench\n"
          f"    probe: {{http: {{url: \"http://127.0.0.1:{port}/t/{i}\"}}}}\n"
          f"    condition: {{availability: {{target: 99, window: 1m}}}}")
EOF
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/t/0')" 2>/dev/null && break
  sleep 0.1
done

# One run under callgrind for $1 seconds; prints nothing, leaves $work/run-$1.
run() {
  local dir="$work/run-$1"
  mkdir -p "$dir"
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$binary" --log-level warn run -c "$work/invariants.yaml" --report-dir "$dir/report" \
    --checkpoint-interval "$checkpoint" >"$dir/stdout" 2>"$dir/valgrind.log" &
  local pid=$!
  pids+=("$pid")
  sleep "$1"
  kill -INT "$pid"
  wait "$pid" || { echo "agent-instructions: the agent failed; see below" >&2; tail -20 "$dir/valgrind.log" >&2; exit 1; }
}
echo "agent-instructions: $binary, $targets targets, two runs under callgrind (about a minute)" >&2
run 12
run 32

python3 - "$work/run-12" "$work/run-32" "$top" "$targets" <<'EOF'
import json, re, subprocess, sys
short, long_, top, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def probes(d):
    r = json.load(open(f"{d}/report/report.json"))
    return sum(i["samples"]["ok"] + i["samples"]["failed"] for i in r["invariants"])

def inclusive(d):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                          f"{d}/callgrind.out"], capture_output=True, text=True, check=True).stdout
    costs = {}
    # A function's own line ends in its object file, `[/path/to/binary]`; lines without
    # one attribute inlined code to other source files, `=>` lines are calls.
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+[^\s:]*:(\S.*?) \[.*\]$", line)
        if m and "=>" not in line:
            costs[m.group(2)] = costs.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return costs

def total(d):
    for line in open(f"{d}/callgrind.out"):
        if line.startswith("totals:"):
            return int(line.split()[1])

n = probes(long_) - probes(short)
per_probe = (total(long_) - total(short)) / n
print(f"{targets} targets: {n} probes in 20 s of steady state, "
      f"{per_probe:,.0f} user-space instructions per probe")
a, b = inclusive(short), inclusive(long_)
rows = sorted(((b.get(k, 0) - a.get(k, 0)) / n, k) for k in b)
print(f"\nInclusive instructions per probe, the {top} largest agent functions:")
shown = 0
for cost, name in reversed(rows):
    if "invariant_agent::" in name and "cli::execute" not in name and "::main" not in name:
        print(f"{cost:10,.0f}  {name[:150]}")
        shown += 1
        if shown == top:
            break
EOF
