#!/usr/bin/env bash
# invariant-agent side by side with its peers, on loopback, same targets and interval:
#
#   blackbox   Prometheus blackbox_exporter driven by Prometheus (Debian packages); for
#              the /metrics scenario, Prometheus scraping the page itself
#   telegraf   Telegraf's http_response input (built from Go modules), the substitute for
#              the OpenTelemetry Collector's httpcheck receiver, which the Go module proxy
#              here refuses to serve; prometheus input for /metrics
#   otelcol    the OpenTelemetry Collector (scripts/build-otelcol), prometheus receiver:
#              idle and /metrics scenarios only (no HTTP-check receiver can be built)
#   agent      the release build of this repository
#
# Scenarios: idle; 10, 100 and 1,000 HTTP targets at 1 s; a /metrics page of ~10k series
# every 5 s. Tools alternate within each scenario for --rounds rounds; figures are medians:
# RSS, peak RSS, CPU and CPU-seconds per 1,000 probes the target server really answered,
# ratios against the agent, and the agent's sample-to-export latency. Installs what is
# missing first (benches/peers/install.sh; cached by version). Run it on a quiet machine.
#
#   benches/peers.sh [--rounds 3] [--seconds 18] [--warmup 6] [--latency-seconds 10]
#                    [--scenarios idle,10,100,1000,metrics] [--tools agent,blackbox,telegraf,otelcol]
#                    [--agent-connection reused|new] [--no-readme] [--json FILE]
#   PEERS_BLACKBOX=0.27.0 benches/peers.sh ...   blackbox_exporter built from Go modules
#
# With the defaults it takes about 25 minutes (plus a first build of the peers) and
# rewrites the marked table in benches/README.md; --no-readme only prints it.
set -euo pipefail
cd "$(dirname "$0")/.."

readme=benches/README.md
args=()
for a in "$@"; do
  if [ "$a" = "--no-readme" ]; then readme=""; else args+=("$a"); fi
done

cargo build --release --quiet --bin invariant-agent
agent="$(pwd)/${CARGO_TARGET_DIR:-target}/release/invariant-agent"

work=$(mktemp -d)
# Kept when something failed, for its configs and logs.
cleanup() {
  local status=$?
  if [ "$status" = 0 ]; then rm -rf "$work"; else echo "peers: failed; configs and logs are in $work" >&2; fi
}
trap cleanup EXIT
benches/peers/install.sh >"$work/paths"
{
  echo "agent=$agent"
  echo "agent_version=$("$agent" --version) (commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- agent || echo ', agent/ modified'))"
} >>"$work/paths"

# 1,000 keep-alive targets plus the tools' own connections need more than 1,024 files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec_args=(--paths "$work/paths" --work "$work" --command "benches/peers.sh${*:+ $*}")
[ -n "$readme" ] && exec_args+=(--readme "$readme")
python3 benches/peers/bench.py "${exec_args[@]}" ${args[@]+"${args[@]}"}
