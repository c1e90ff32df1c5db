// Package agenttest starts the real invariant-agent binary for tests, watching an HTTP
// target the test controls.
//
// The binary is $INVARIANT_AGENT_BIN, else target/debug/invariant-agent in the
// repository (what `cargo build` makes). A missing binary fails the test, never skips
// it: a Go test run that did not exercise the agent must not look green.
package agenttest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
)

// Invariant is the name of the invariant that watches the Target's /healthz.
const Invariant = "target-healthz"

// SteadyInvariant is the name of an invariant on the same target that a Break does not
// disturb (a TCP connect), for tests of filters.
const SteadyInvariant = "target-tcp"

// Interval is the sampling interval of both invariants.
const Interval = 100 * time.Millisecond

// Target is an HTTP server whose /healthz answers 200 "ok", or 500 while broken.
// POST /break and POST /fix switch it, so a suite in another process can too.
type Target struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:1234.
	URL    string
	broken atomic.Bool
}

// Break makes /healthz answer 500 until Fix.
func (t *Target) Break() { t.broken.Store(true) }

// Fix makes /healthz answer 200 again.
func (t *Target) Fix() { t.broken.Store(false) }

// StartTarget starts a Target, closed when the test ends.
func StartTarget(t testing.TB) *Target {
	t.Helper()
	target := &Target{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if target.broken.Load() {
			http.Error(w, "broken on purpose", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("POST /break", func(w http.ResponseWriter, _ *http.Request) { target.Break() })
	mux.HandleFunc("POST /fix", func(w http.ResponseWriter, _ *http.Request) { target.Fix() })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	target.URL = srv.URL
	return target
}

// Options says how to start an agent.
type Options struct {
	// Token, when set, is written to a file passed as --grpc-token-file.
	Token string
	// Duration is the agent's --duration; zero means 5 minutes (it is stopped when the
	// test ends anyway).
	Duration time.Duration
	// TLS, when set, makes the agent serve TLS with its certificate and key
	// (--grpc-tls-cert, --grpc-tls-key).
	TLS *Certificates
}

// Agent is a running invariant-agent.
type Agent struct {
	// Addr is its gRPC address (host:port).
	Addr string
	// ReportDir is its --report-dir.
	ReportDir string
	// Target is the HTTP server its invariants watch.
	Target *Target

	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// Binary returns the agent binary's path, failing the test with what to do when it is
// missing.
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("INVARIANT_AGENT_BIN")
	if bin == "" {
		_, file, _, ok := runtime.Caller(0)
		if !ok {
			t.Fatal("agenttest: cannot locate the repository; set INVARIANT_AGENT_BIN")
		}
		// internal/agenttest → clients/go → repository root.
		bin = filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "target", "debug", "invariant-agent")
	}
	if info, err := os.Stat(bin); err != nil || info.IsDir() {
		t.Fatalf("the invariant-agent binary is missing at %s: run `cargo build` in the repository root "+
			"(or scripts/test, which builds it and runs these tests), or set INVARIANT_AGENT_BIN", bin)
	}
	return bin
}

// Start starts a Target and an agent watching it, waits until the agent answers, and
// stops the agent when the test ends (its log is printed if the test failed).
func Start(t testing.TB, opts Options) *Agent {
	t.Helper()
	bin := Binary(t)
	target := StartTarget(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "invariants.yaml")
	host := strings.TrimPrefix(target.URL, "http://")
	writeFile(t, config, fmt.Sprintf(invariantFile, Interval, target.URL, host))
	if opts.Duration == 0 {
		opts.Duration = 5 * time.Minute
	}
	a := &Agent{ReportDir: filepath.Join(dir, "report"), Target: target, log: &syncBuffer{}, done: make(chan struct{})}
	a.Addr = freeAddr(t)
	args := []string{"run", "-c", config, "--grpc-listen", a.Addr, "--report-dir", a.ReportDir,
		"--duration", fmt.Sprintf("%dms", opts.Duration.Milliseconds()), "--checkpoint-interval", "1s"}
	if opts.Token != "" {
		tokenFile := filepath.Join(dir, "token")
		writeFile(t, tokenFile, opts.Token+"\n")
		args = append(args, "--grpc-token-file", tokenFile)
	}
	if opts.TLS != nil {
		args = append(args, "--grpc-tls-cert", opts.TLS.CertFile, "--grpc-tls-key", opts.TLS.KeyFile)
	}
	a.cmd = exec.Command(bin, args...)
	a.cmd.Env = hermeticEnv()
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		_ = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("invariant-agent %s log:\n%s", strings.Join(args, " "), a.log.String())
		}
	})
	a.waitReady(t, opts.TLS != nil)
	return a
}

// Stop sends SIGTERM and waits for the agent to exit (killing it after 10 s).
func (a *Agent) Stop() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// waitReady waits until the agent accepts connections (and, without TLS, answers the
// health check).
func (a *Agent) waitReady(t testing.TB, tls bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if tls {
			var conn net.Conn
			if conn, err = net.DialTimeout("tcp", a.Addr, time.Second); err == nil {
				_ = conn.Close()
				return
			}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			var c *agent.Client
			c, err = agent.Dial(ctx, a.Addr)
			cancel()
			if err == nil {
				_ = c.Close()
				return
			}
		}
		select {
		case <-a.done:
			t.Fatalf("invariant-agent exited before it answered on %s (%v):\n%s", a.Addr, a.cmd.ProcessState, a.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("invariant-agent did not answer on %s within 20s: %v\n%s", a.Addr, err, a.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// invariantFile watches the target: %[1]s interval, %[2]s base URL, %[3]s host:port.
const invariantFile = `apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
defaults: {interval: %[1]s, timeout: 1s}
invariants:
  - name: target-healthz
    description: The test's target answers its health check.
    owner: clients-go
    labels: {suite: clients-go, kind: http}
    probe:
      http:
        url: %[2]s/healthz
        body: {contains: ok}
    condition:
      availability: {target: 100, window: 10s}
  - name: target-tcp
    description: The test's target accepts TCP connections.
    owner: clients-go
    labels: {suite: clients-go, kind: tcp}
    probe:
      tcp: {address: "%[3]s"}
    condition:
      availability: {target: 100, window: 10s}
`

// hermeticEnv is this process's environment without the variables the agent reads, so
// a developer's or CI's BUILD_ID or OTEL_EXPORTER_OTLP_ENDPOINT cannot change a test.
func hermeticEnv() []string {
	drop := map[string]bool{"BUILD_ID": true, "PROW_JOB_ID": true, "JOB_NAME": true, "CLUSTER_NAME": true,
		"NODE_NAME": true, "POD_NAME": true, "POD_NAMESPACE": true}
	var env []string
	for _, kv := range os.Environ() {
		key, _, _ := strings.Cut(kv, "=")
		if drop[key] || strings.HasPrefix(key, "OTEL_") || strings.HasPrefix(key, "INVARIANT_AGENT_") || key == "RUST_LOG" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "RUST_LOG=info", "NO_COLOR=1")
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for the agent's two output pipes and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
