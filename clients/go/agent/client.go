// Package agent is a small typed client for the invariant-agent gRPC API
// (proto/invariant/v1/agent.proto): follow invariant state live, read the run report,
// and tell the agent which test or phase of an e2e run is going on.
//
// Dial connects and checks that the agent answers:
//
//	c, err := agent.Dial(ctx, "127.0.0.1:9465", agent.WithTokenFile("/var/run/invariant-agent/token"))
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	start, err := c.TestStarted(ctx, "[sig-node] Pods should be restarted", time.Time{})
//	// ... run the test ...
//	err = c.TestFinished(ctx, "[sig-node] Pods should be restarted", start, time.Now(), "passed")
//
// Every method returns errors that name the agent's address and the call; the gRPC
// status stays reachable through them (status.Code(err) is codes.Unauthenticated for
// a missing or wrong token). Messages of up to 64 MiB are accepted in either direction,
// as the agent's.
//
// Ginkgo suites do not need this package directly: package invariantginkgo annotates
// every spec and collects the report in three lines.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	invariantv1 "github.com/invariant-agent/invariant-agent/clients/go/invariant/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// MaxMessageSize is the largest message the agent sends or accepts: 64 MiB.
const MaxMessageSize = 64 << 20

// Client calls one agent. It is safe for concurrent use; Close it when done.
type Client struct {
	addr string
	conn *grpc.ClientConn
	api  invariantv1.AgentServiceClient
}

// Option configures Dial.
type Option func(*options)

type options struct {
	token     string
	tokenFile string
	tls       bool
	caFile    string
	grpcOpts  []grpc.DialOption
}

// WithToken sends `authorization: Bearer TOKEN` with every call, for an agent started
// with --grpc-token-file.
func WithToken(token string) Option {
	return func(o *options) { o.token, o.tokenFile = strings.TrimSpace(token), "" }
}

// WithTokenFile is WithToken with the token read from a file. The file is read again
// for every call, so a rotated token is picked up; surrounding white space is ignored.
func WithTokenFile(path string) Option {
	return func(o *options) { o.token, o.tokenFile = "", path }
}

// WithTLS connects with TLS (an agent started with --grpc-tls-cert and --grpc-tls-key),
// verifying its certificate against the PEM certificates in caFile, or against the
// system's roots when caFile is empty.
func WithTLS(caFile string) Option {
	return func(o *options) { o.tls, o.caFile = true, caFile }
}

// WithPlaintext connects without TLS, as the agent serves unless started with
// --grpc-tls-cert. It is the default, and undoes an earlier WithTLS.
func WithPlaintext() Option {
	return func(o *options) { o.tls, o.caFile = false, "" }
}

// WithGRPCOptions adds gRPC dial options (interceptors, a custom dialer, ...), applied
// after this package's own.
func WithGRPCOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.grpcOpts = append(o.grpcOpts, opts...) }
}

// Dial connects to the agent at addr (host:port) and checks that it answers the
// standard gRPC health check, waiting at most until ctx is done; give ctx a deadline.
// It fails at once when the agent refuses the connection. The health check needs no
// token, so a wrong token shows on the first call instead.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dialOpts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageSize),
			grpc.MaxCallSendMsgSize(MaxMessageSize),
		),
	}
	creds := insecure.NewCredentials()
	if o.tls {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.caFile != "" {
			pem, err := os.ReadFile(o.caFile)
			if err != nil {
				return nil, fmt.Errorf("invariant agent %s: read CA file: %w", addr, err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("invariant agent %s: CA file %s holds no PEM certificate", addr, o.caFile)
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	dialOpts = append(dialOpts, grpc.WithTransportCredentials(creds))
	if o.token != "" || o.tokenFile != "" {
		token := bearerToken{token: o.token, file: o.tokenFile}
		if _, err := token.value(); err != nil {
			return nil, fmt.Errorf("invariant agent %s: %w", addr, err)
		}
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(token))
	}
	dialOpts = append(dialOpts, o.grpcOpts...)

	conn, err := grpc.NewClient(addr, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("invariant agent %s: %w", addr, err)
	}
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil && status.Code(err) != codes.Unimplemented {
		_ = conn.Close()
		return nil, wrap(ctx, addr, "not reachable", err)
	}
	return &Client{addr: addr, conn: conn, api: invariantv1.NewAgentServiceClient(conn)}, nil
}

// Close closes the connection. Calls in flight fail.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("invariant agent %s: close: %w", c.addr, err)
	}
	return nil
}

// Status returns the run and the current state of every invariant, in file order.
func (c *Client) Status(ctx context.Context) (*invariantv1.GetStatusResponse, error) {
	resp, err := c.api.GetStatus(ctx, &invariantv1.GetStatusRequest{})
	if err != nil {
		return nil, c.wrap(ctx, "get status", err)
	}
	return resp, nil
}

// Report returns the run report so far, rendered in format (REPORT_FORMAT_JSON is
// report.json, REPORT_FORMAT_JUNIT the JUnit XML). It includes every annotation
// acknowledged before the call.
func (c *Client) Report(ctx context.Context, format invariantv1.ReportFormat) ([]byte, error) {
	resp, err := c.api.GetReport(ctx, &invariantv1.GetReportRequest{Format: format})
	if err != nil {
		return nil, c.wrap(ctx, "get report ("+format.String()+")", err)
	}
	return resp.GetContent(), nil
}

// Annotate records a test or a phase of the run and returns the start the agent
// recorded. A zero start means the agent's now; a zero end means it is still going.
// Send it again with the same kind, name and (returned) start, and an end, when it
// ends: the second replaces the first. It returns once the agent has applied it.
func (c *Client) Annotate(ctx context.Context, kind invariantv1.AnnotationKind, name string, start, end time.Time, outcome string) (time.Time, error) {
	a := &invariantv1.Annotation{Kind: kind, Name: name, Outcome: outcome}
	if !start.IsZero() {
		a.Start = timestamppb.New(start)
	}
	if !end.IsZero() {
		a.End = timestamppb.New(end)
	}
	resp, err := c.api.Annotate(ctx, &invariantv1.AnnotateRequest{Annotation: a})
	if err != nil {
		return time.Time{}, c.wrap(ctx, fmt.Sprintf("annotate %s %q", kindWord(kind), name), err)
	}
	if resp.GetStart() == nil {
		return start, nil
	}
	return resp.GetStart().AsTime(), nil
}

// TestStarted records that the test named name (its full name, as --ginkgo.focus
// matches it) started at start (zero: now, by this machine's clock). Pass the start it
// returns to TestFinished.
func (c *Client) TestStarted(ctx context.Context, name string, start time.Time) (time.Time, error) {
	if start.IsZero() {
		start = time.Now()
	}
	return c.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_TEST, name, start, time.Time{}, "")
}

// TestFinished records that the test that TestStarted reported ended at end with
// outcome ("passed", "failed", "skipped", ...). It works without TestStarted too.
func (c *Client) TestFinished(ctx context.Context, name string, start, end time.Time, outcome string) error {
	_, err := c.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_TEST, name, start, end, outcome)
	return err
}

// Phase records that a phase of the run named name (say "upgrade control plane")
// starts now, and returns the function that records its end.
func (c *Client) Phase(ctx context.Context, name string) (end func(context.Context) error, err error) {
	start, err := c.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_PHASE, name, time.Now(), time.Time{}, "")
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		_, err := c.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_PHASE, name, start, time.Now(), "")
		return err
	}, nil
}

// StopTail, returned by a Tail callback, ends Tail without an error.
var StopTail = errors.New("stop tailing")

// Tail follows invariant samples and state transitions, calling fn with every event in
// order: the snapshot, the replayed history, the live marker, then live events. It
// returns nil once the run has ended (fn saw RunEnded and the agent closed the stream),
// nil when fn returns StopTail, fn's error when fn returns another, and an error when
// ctx ends or the stream breaks.
//
// fn runs on Tail's goroutine: while it blocks, events queue in the agent, and a
// subscriber that falls too far behind loses events. fn then receives a Lost event with
// the number it missed before anything newer; Status gives the state that resulted.
func (c *Client) Tail(ctx context.Context, req *invariantv1.TailRequest, fn func(*invariantv1.TailResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if req == nil {
		req = &invariantv1.TailRequest{}
	}
	stream, err := c.api.Tail(ctx, req)
	if err != nil {
		return c.wrap(ctx, "tail", err)
	}
	ended := false
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if ended {
				return nil
			}
			return fmt.Errorf("invariant agent %s: tail: the agent closed the stream before the run ended", c.addr)
		}
		if err != nil {
			return c.wrap(ctx, "tail", err)
		}
		if ev.GetRunEnded() != nil {
			ended = true
		}
		if err := fn(ev); err != nil {
			if errors.Is(err, StopTail) {
				return nil
			}
			return err
		}
	}
}

func (c *Client) wrap(ctx context.Context, call string, err error) error {
	return wrap(ctx, c.addr, call, err)
}

// wrap names the agent and the call in err. When ctx ended, the error also wraps
// ctx.Err(), so errors.Is(err, context.Canceled) holds as well as status.Code(err).
func wrap(ctx context.Context, addr, call string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("invariant agent %s: %s: %w (%w)", addr, call, ctxErr, err)
	}
	return fmt.Errorf("invariant agent %s: %s: %w", addr, call, err)
}

func kindWord(kind invariantv1.AnnotationKind) string {
	switch kind {
	case invariantv1.AnnotationKind_ANNOTATION_KIND_TEST:
		return "test"
	case invariantv1.AnnotationKind_ANNOTATION_KIND_PHASE:
		return "phase"
	default:
		return kind.String()
	}
}

// bearerToken sends `authorization: Bearer TOKEN` with every call.
type bearerToken struct {
	token string
	file  string
}

func (b bearerToken) value() (string, error) {
	if b.file == "" {
		return b.token, nil
	}
	data, err := os.ReadFile(b.file)
	if err != nil {
		return "", fmt.Errorf("read bearer token: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("read bearer token: %s is empty", b.file)
	}
	return token, nil
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	token, err := b.value()
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: false, so a token
// also goes to an agent serving plaintext (keep such an agent on loopback or a
// trusted network).
func (bearerToken) RequireTransportSecurity() bool { return false }
