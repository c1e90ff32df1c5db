// Command protogen generates the Go client's protobuf and gRPC code from
// proto/invariant/v1/agent.proto without a protoc program.
//
// It compiles the proto files with protocompile (a protobuf compiler written in Go),
// builds the same CodeGeneratorRequest protoc would send, and runs protoc-gen-go and
// protoc-gen-go-grpc on it through `go tool`, so the plugin versions are the ones this
// module's go.mod pins. The files the plugins return are written under -out, at the path
// their go_package gives relative to the client module.
//
// Usage (from clients/go/tools; clients/go/generate.sh does this):
//
//	go run ./protogen -proto ../../../proto -out ..
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// clientModule is the Go module the generated packages belong to; the plugins strip it
// from each go_package to find where a file goes under -out.
const clientModule = "github.com/invariant-agent/invariant-agent/clients/go"

// protoFiles are the files to generate code for, relative to -proto.
var protoFiles = []string{"invariant/v1/agent.proto"}

// plugins are the protoc plugins to run, as `go tool` names.
var plugins = []string{"protoc-gen-go", "protoc-gen-go-grpc"}

func main() {
	protoRoot := flag.String("proto", "../../../proto", "directory the proto files' import paths are relative to")
	out := flag.String("out", "..", "root of the client module to write generated files under")
	flag.Parse()
	if err := run(context.Background(), *protoRoot, *out); err != nil {
		fmt.Fprintln(os.Stderr, "protogen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, protoRoot, out string) error {
	req, err := request(ctx, protoRoot)
	if err != nil {
		return err
	}
	for _, plugin := range plugins {
		files, err := runPlugin(ctx, plugin, req)
		if err != nil {
			return err
		}
		for _, f := range files {
			if err := write(out, f); err != nil {
				return err
			}
		}
	}
	return nil
}

// request compiles the proto files and builds the request protoc would send a plugin.
func request(ctx context.Context, protoRoot string) (*pluginpb.CodeGeneratorRequest, error) {
	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			ImportPaths: []string{protoRoot},
		}),
		// Keeps comments, so the generated code carries the proto's documentation.
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := compiler.Compile(ctx, protoFiles...)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", strings.Join(protoFiles, ", "), err)
	}
	// Every file with its imports before it, as protoc sends them.
	var ordered []*descriptorpb.FileDescriptorProto
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		ordered = append(ordered, fileProto(fd))
	}
	for _, f := range compiled {
		add(f)
	}
	return &pluginpb.CodeGeneratorRequest{
		FileToGenerate: protoFiles,
		Parameter:      proto.String("module=" + clientModule),
		ProtoFile:      ordered,
	}, nil
}

// fileProto returns the descriptor of fd as compiled (with source info), or converted
// from the Go registry for the well-known types.
func fileProto(fd protoreflect.FileDescriptor) *descriptorpb.FileDescriptorProto {
	if res, ok := fd.(linker.Result); ok {
		return res.FileDescriptorProto()
	}
	return protodesc.ToFileDescriptorProto(fd)
}

// runPlugin runs one plugin (via `go tool`, in this module) on req.
func runPlugin(ctx context.Context, plugin string, req *pluginpb.CodeGeneratorRequest) ([]*pluginpb.CodeGeneratorResponse_File, error) {
	in, err := proto.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request for %s: %w", plugin, err)
	}
	cmd := exec.CommandContext(ctx, "go", "tool", plugin)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go tool %s: %w\n%s", plugin, err, stderr.String())
	}
	var resp pluginpb.CodeGeneratorResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("decode response of %s: %w", plugin, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("%s: %s", plugin, resp.GetError())
	}
	return resp.GetFile(), nil
}

// write writes one generated file under out, refusing paths that leave it.
func write(out string, f *pluginpb.CodeGeneratorResponse_File) error {
	if f.GetInsertionPoint() != "" {
		return fmt.Errorf("%s: insertion points are not supported", f.GetName())
	}
	name := filepath.FromSlash(f.GetName())
	if !filepath.IsLocal(name) {
		return errors.New("plugin returned a file outside the output directory: " + f.GetName())
	}
	path := filepath.Join(out, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(f.GetContent()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
