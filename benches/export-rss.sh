#!/usr/bin/env bash
# The agent's CPU and memory with export off and on: N HTTP invariants at 1 s against a
# local server (as benches/agent-load.sh), measured after a warm-up, in three runs:
#   off         no OTLP endpoint, no /metrics
#   otlp        OTLP/gRPC every OTEL_METRIC_EXPORT_INTERVAL (default 10 s here: 1 s, to
#               exaggerate) to a local rotel collector (blackhole exporter)
#   otlp+scrape the same, plus /metrics scraped once a second
# Prints one Markdown table row per run.
#
#   benches/export-rss.sh [TARGETS=200] [SECONDS=60]
#
# Needs rotel (scripts/install-test-deps installs it) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=${1:-200}
seconds=${2:-60}
warmup=10

rotel=$(ls "${XDG_CACHE_HOME:-$HOME/.cache}"/invariant-agent/rotel-venv/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -1)
[ -x "$rotel" ] || { echo "rotel is not installed; run scripts/install-test-deps" >&2; exit 1; }

cargo build --release --quiet --bin invariant-agent
agent="${CARGO_TARGET_DIR:-target}/release/invariant-agent"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

port=$(free_port)
python3 - "$port" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)
wait_port "$port"

{
  echo "apiVersion: invariant-agent/v1alpha1"
  echo "kind: InvariantSet"
  echo "defaults: {interval: 1s, timeout: 1s, labels: {suite: bench}}"
  echo "invariants:"
  for i in $(seq 1 "$targets"); do
    cat <<YAML
  - name: target-$i
    description: load test target $i
    owner: bench
    probe:
      http: {url: "http://127.0.0.1:$port/t$i"}
    condition:
      availability: {target: 99, window: 1m}
YAML
  done
} > "$work/invariants.yaml"

grpc=$(free_port); http=$(free_port)
"$rotel" start --otlp-grpc-endpoint "127.0.0.1:$grpc" --otlp-http-endpoint "127.0.0.1:$http" --exporter blackhole >/dev/null 2>&1 &
pids+=($!)
wait_port "$grpc"

measure() { # name, extra agent args...
  local name=$1; shift
  local metrics_port
  metrics_port=$(free_port)
  local args=("$@")
  if [ "$name" = "otlp+scrape" ]; then args+=(--metrics-listen "127.0.0.1:$metrics_port"); fi
  "$agent" --log-level warn run --config "$work/invariants.yaml" --report-dir "$work/report-$name" "${args[@]}" >/dev/null 2>"$work/agent-$name.log" &
  local pid=$!
  local scraper=""
  if [ "$name" = "otlp+scrape" ]; then
    wait_port "$metrics_port"
    ( while kill -0 "$pid" 2>/dev/null; do curl -s -o /dev/null "http://127.0.0.1:$metrics_port/metrics" || true; sleep 1; done ) &
    scraper=$!
  fi
  sleep "$warmup"
  local ticks c0 c1 t0 t1
  ticks=$(getconf CLK_TCK)
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat"); t0=$(date +%s.%N)
  sleep "$seconds"
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat"); t1=$(date +%s.%N)
  local rss hwm
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
  python3 - "$name" "$targets" "$c0" "$c1" "$t0" "$t1" "$ticks" "$rss" "$hwm" <<'PY'
import sys
name, targets = sys.argv[1], sys.argv[2]
c0, c1, t0, t1, ticks, rss, hwm = map(float, sys.argv[3:])
cpu = (c1 - c0) / ticks / (t1 - t0) * 100
print(f"| {name} | {int(targets)} HTTP @ 1 s | {cpu:.2f}% | {rss/1024:.1f} MiB | {hwm/1024:.1f} MiB |")
PY
}

echo "| export | invariants | CPU (one core) | RSS | peak RSS |"
echo "| --- | --- | --- | --- | --- |"
measure off
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$grpc" OTEL_METRIC_EXPORT_INTERVAL=1000 measure otlp
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$grpc" OTEL_METRIC_EXPORT_INTERVAL=1000 measure otlp+scrape
