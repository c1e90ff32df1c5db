#!/usr/bin/env bash
# Installs or builds the peers benches/peers.sh compares the agent with, idempotently and
# cached by version under ${XDG_CACHE_HOME:-$HOME/.cache}/invariant-agent:
#
#   prometheus + blackbox   Debian's prometheus and prometheus-blackbox-exporter (apt);
#                           with PEERS_BLACKBOX=VERSION (e.g. 0.27.0) blackbox_exporter is
#                           built from Go modules at that version instead of Debian's 0.23
#   otelcol                 the official OpenTelemetry Collector built from Go modules by
#                           scripts/build-otelcol (otlp + prometheus receivers). Its
#                           httpcheck receiver cannot be built here: the Go module proxy
#                           refuses every release of it (403 "This module version is not
#                           available"), so the HTTP scenarios use Telegraf instead.
#   telegraf                Telegraf built from Go modules with only the plugins the bench
#                           uses (http_response, prometheus inputs; discard output): the
#                           substitute for the collector's httpcheck receiver
#   target                  the bench's target server (benches/peers/target.go, stdlib only)
#
# Prints `name=path` lines on stdout, one per tool, and `name_version=...` where the
# binary cannot tell its own version (built without release flags).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
TELEGRAF=1.37.2
BLACKBOX="${PEERS_BLACKBOX:-debian}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/invariant-agent"
mkdir -p "$cache"
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || { echo "peers: Go toolchain not found (need go >= 1.25 to build Telegraf and the collector)" >&2; exit 1; }
# Modules come from the Go module proxy only (never a VCS checkout).
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export CGO_ENABLED=0

# Debian packages. Installing them starts their services; the bench runs its own instances
# and wants the machine quiet, so stop the services it just started (they would also hold
# ports 9090/9115). Services that were there before are left alone.
missing=()
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
[ -x /usr/bin/prometheus-blackbox-exporter ] || missing+=(prometheus-blackbox-exporter)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "peers: installing ${missing[*]} (apt)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop "${missing[@]}" >/dev/null 2>&1 || true
  fi
fi

# blackbox_exporter from Go modules, when asked for. `go install module@version` does not
# work for it here (it reads the module's version list, which the proxy refuses), so a
# throwaway module requires that version and builds its main package.
blackbox=/usr/bin/prometheus-blackbox-exporter
if [ "$BLACKBOX" != debian ]; then
  bdir="$cache/blackbox_exporter-$BLACKBOX"
  if ! [ -x "$bdir/blackbox_exporter" ]; then
    echo "peers: building blackbox_exporter v$BLACKBOX (first time only)" >&2
    mkdir -p "$bdir"
    mod="$(mktemp -d)"
    printf 'module peers/blackbox\n\ngo 1.23\n\nrequire github.com/prometheus/blackbox_exporter v%s\n' "$BLACKBOX" >"$mod/go.mod"
    (cd "$mod" && GOFLAGS=-mod=mod go build -trimpath \
      -ldflags "-X github.com/prometheus/common/version.Version=$BLACKBOX" \
      -o "$bdir/blackbox_exporter.tmp" github.com/prometheus/blackbox_exporter) >&2
    rm -rf "$mod"
    mv "$bdir/blackbox_exporter.tmp" "$bdir/blackbox_exporter"
  fi
  blackbox="$bdir/blackbox_exporter"
fi

# The official collector (scripts/build-otelcol caches it by version).
otelcol="$("$repo/scripts/build-otelcol" | tail -1)"

# Telegraf, only the plugins used. Its go.mod has no replace directives, so `go install
# module@version` builds it straight from the module proxy.
tdir="$cache/telegraf-$TELEGRAF"
if ! [ -x "$tdir/telegraf" ]; then
  echo "peers: building telegraf v$TELEGRAF (first time only; several minutes)" >&2
  mkdir -p "$tdir"
  GOFLAGS=-trimpath GOBIN="$tdir/bin.tmp" go install \
    -tags "custom,inputs.http_response,inputs.prometheus,outputs.discard" \
    "github.com/influxdata/telegraf/cmd/telegraf@v$TELEGRAF" >&2
  mv "$tdir/bin.tmp/telegraf" "$tdir/telegraf"
  rmdir "$tdir/bin.tmp"
fi

# The target server: rebuilt when its source changes.
sum=$(sha256sum "$here/target.go" | cut -c1-16)
target="$cache/peers-target-$sum"
if ! [ -x "$target" ]; then
  (cd "$here" && GO111MODULE=off go build -o "$target.tmp" target.go) >&2
  mv "$target.tmp" "$target"
fi

echo "prometheus=/usr/bin/prometheus"
echo "blackbox=$blackbox"
echo "otelcol=$otelcol"
echo "telegraf=$tdir/telegraf"
echo "telegraf_version=Telegraf $TELEGRAF (built from Go modules: http_response, prometheus, discard)"
echo "target=$target"
