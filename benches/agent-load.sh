#!/usr/bin/env bash
# Measures the agent's own cost while polling N HTTP invariants at 1 s against a local
# server: CPU (% of one core) and RSS, after a warm-up. Prints one Markdown table row.
#
#   benches/agent-load.sh [TARGETS=200] [SECONDS=60] [CONNECTION=reused]
#
# The target is a small keep-alive HTTP/1.1 server in Python (its own CPU is not counted).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=${1:-200}
seconds=${2:-60}
connection=${3:-reused}
warmup=10

cargo build --release --quiet --bin invariant-agent
agent=target/release/invariant-agent
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp "$work/report/report.json" "$KEEP"; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$port" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
class S(ThreadingHTTPServer):
    request_queue_size = 1024  # 200 keep-alive connections open at once at start
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

{
  echo "apiVersion: invariant-agent/v1alpha1"
  echo "kind: InvariantSet"
  echo "defaults: {interval: 1s, timeout: 1s}"
  echo "invariants:"
  for i in $(seq 1 "$targets"); do
    cat <<YAML
  - name: target-$i
    description: load test target $i
    owner: bench
    probe:
      http: {url: "http://127.0.0.1:$port/t$i", connection: $connection}
    condition:
      availability: {target: 99, window: 1m}
YAML
  done
} > "$work/invariants.yaml"

"$agent" --log-level warn run --config "$work/invariants.yaml" --report-dir "$work/report" >/dev/null 2>"$work/agent.log" &
pid=$!
sleep "$warmup"
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep "$seconds"
c1=$(cpu); t1=$(date +%s.%N)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" || true
samples=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(i["samples"]["ok"]+i["samples"]["failed"] for i in r["invariants"]))' "$work/report/report.json")
failed=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(i["samples"]["failed"]+i["samples"]["missed"] for i in r["invariants"]))' "$work/report/report.json")
python3 - "$targets" "$connection" "$c0" "$c1" "$t0" "$t1" "$ticks" "$rss_kib" "$hwm_kib" "$samples" "$failed" <<'PY'
import sys
targets, conn = sys.argv[1], sys.argv[2]
c0, c1, t0, t1, ticks, rss, hwm, samples, failed = map(float, sys.argv[3:])
cpu_pct = (c1 - c0) / ticks / (t1 - t0) * 100
print(f"| {int(targets)} HTTP @ 1 s ({conn}) | {cpu_pct:.2f}% | {rss/1024:.1f} MiB | {hwm/1024:.1f} MiB | {int(samples)} | {int(failed)} |")
PY
