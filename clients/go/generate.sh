#!/usr/bin/env bash
# Regenerates the Go code in invariant/v1 from proto/invariant/v1/agent.proto, with no
# protoc: tools/protogen compiles the proto with protocompile and runs protoc-gen-go and
# protoc-gen-go-grpc, at the versions tools/go.mod pins, through `go tool`. Commit the
# result; `go test ./invariant/v1` fails when the committed code is out of date.
set -euo pipefail
cd "$(dirname "$0")/tools"
rm -f ../invariant/v1/*.pb.go
go run ./protogen -proto ../../../proto -out ..
echo "generate.sh: wrote $(cd .. && ls invariant/v1/*.pb.go | tr '\n' ' ')"
