#!/usr/bin/env bash
# Time-compressed soak: N HTTP invariants at the shortest interval (100 ms, ten times the
# usual 1 s) for SECONDS, half of them against a target that fails every other request
# (so each of those starts and ends a violation interval every two samples, the worst
# case for the report), half against a steady one. Every STEP seconds it prints the
# agent's RSS, open files, and the size of report.json (rewritten every checkpoint), as
# one Markdown table row, so flat memory after warm-up and the report's bound can be read
# off. Samples per invariant: SECONDS * 10 (the default 300 s is 3,000 samples each,
# 50 minutes at 1 s; the flapping ones pass the 1,000-interval cap after about 200 s).
#
#   benches/soak.sh [INVARIANTS=50] [SECONDS=300] [STEP=30]
#
# Needs python3 (the target) and a release build (done here).
set -euo pipefail
cd "$(dirname "$0")/.."
invariants=${1:-50}
seconds=${2:-300}
step=${3:-30}

cargo build --release --quiet --bin invariant-agent
agent="${CARGO_TARGET_DIR:-target}/release/invariant-agent"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

port=$(free_port)
# /steady/* always answers 200; /flap/* alternates 200 and 500 per path.
python3 - "$port" >/dev/null 2>&1 <<'PY' &
import sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
flips, lock = {}, threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status = 200
        if self.path.startswith("/flap/"):
            with lock:
                flips[self.path] = not flips.get(self.path, False)
                status = 500 if flips[self.path] else 200
        self.send_response(status); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
class S(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)
wait_port "$port"

{
  echo "apiVersion: invariant-agent/v1alpha1"
  echo "kind: InvariantSet"
  echo "defaults: {interval: 100ms, timeout: 1s}"
  echo "invariants:"
  for i in $(seq 1 "$invariants"); do
    kind=steady; [ $((i % 2)) -eq 0 ] && kind=flap
    cat <<YAML
  - name: $kind-$i
    description: soak target $i ($kind)
    owner: bench
    probe:
      http: {url: "http://127.0.0.1:$port/$kind/$i"}
    condition:
      availability: {target: 100, window: 5m}
YAML
  done
} > "$work/invariants.yaml"

"$agent" --log-level warn run --config "$work/invariants.yaml" --report-dir "$work/report" \
  --checkpoint-interval 5s >/dev/null 2>"$work/agent.log" &
pid=$!
pids+=($pid)

echo "| elapsed | samples/invariant | RSS | peak RSS | open files | report.json | intervals (flapping invariant) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
elapsed=0
while [ "$elapsed" -lt "$seconds" ]; do
  sleep "$step"
  elapsed=$((elapsed + step))
  kill -0 "$pid" 2>/dev/null || { echo "the agent exited early:" >&2; cat "$work/agent.log" >&2; exit 1; }
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  python3 - "$work/report/report.json" "$elapsed" "$rss" "$hwm" "$fds" <<'PY'
import json, os, sys
path, elapsed, rss, hwm, fds = sys.argv[1], *map(int, sys.argv[2:])
size = os.path.getsize(path)
r = json.load(open(path))
flap = next(i for i in r["invariants"] if i["name"].startswith("flap-"))
s = flap["samples"]
n = s["ok"] + s["failed"]
kept = len(flap["violations"])
dropped = flap.get("violations_dropped", 0)
print(f"| {elapsed} s | {n:,} | {rss/1024:.1f} MiB | {hwm/1024:.1f} MiB | {fds} | {size/1024:.0f} KiB | {kept:,} kept, {dropped:,} counted only |")
PY
done
kill -TERM "$pid"; wait "$pid" || true
