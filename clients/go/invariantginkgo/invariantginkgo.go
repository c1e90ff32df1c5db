// Package invariantginkgo connects a Ginkgo v2 suite to an invariant-agent, so that
// the agent's report says which spec was running when an invariant was violated, and
// the suite's artifacts hold that report.
//
// A suite adds three lines: the module, an import, and a call at the top level of any
// file of the suite (usually the one whose TestXxx function calls RunSpecs):
//
//	go get github.com/invariant-agent/invariant-agent/clients/go
//
//	import "github.com/invariant-agent/invariant-agent/clients/go/invariantginkgo"
//
//	var _ = invariantginkgo.Attach()
//
// Then, for every spec that runs, the agent at $INVARIANT_AGENT_ADDR records a test
// annotation named by the spec's full text and labels as Ginkgo prints them (e.g.
// "[sig-node] Pods should restart [Disruptive]"), from when it started to when it ended,
// with its outcome ("passed", "failed", "skipped", ...). After the suite,
// invariant-report.json and junit_invariants.xml (the name Kubernetes CI picks up as
// JUnit) are written to $ARTIFACTS, the directory Prow uploads.
//
// Attach registers a ReportBeforeEach, a ReportAfterEach and a ReportAfterSuite node. In
// parallel runs (ginkgo -p) every process annotates its own specs, and Ginkgo runs the
// ReportAfterSuite on process 1 once the others have exited, so the report it fetches
// holds every spec. With --dry-run nothing is sent or written.
//
// Informational by default: when $INVARIANT_AGENT_ADDR is unset, or the agent cannot be
// reached, or a call fails, the helpers log one warning (per Ginkgo process), carry on,
// and never fail a spec or the suite; after the suite they log one line saying what was
// written, or why nothing was. Calls time out after 2 s (fetching the report after
// 30 s), and after a failure the helpers stop calling for a while (5 s, doubling up to
// 2 minutes), so an unreachable agent costs the suite at most one timeout per pause.
// WithFailOnError makes a missing report fail the suite instead.
//
// The environment configures it, so a suite needs no code change per environment:
//
//	INVARIANT_AGENT_ADDR        the agent's gRPC address, host:port; unset: do nothing
//	INVARIANT_AGENT_TOKEN_FILE  a file with the bearer token (agent --grpc-token-file)
//	INVARIANT_AGENT_CA_FILE     connect with TLS, trusting the CA certificates in this file
//	ARTIFACTS                   where to write the report files (Prow sets it)
//
// Options given to Attach take precedence over these variables.
package invariantginkgo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
	invariantv1 "github.com/invariant-agent/invariant-agent/clients/go/invariant/v1"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
)

// Environment variables read when the first spec starts (not when Attach runs, so a
// suite's TestMain or flags may still set them).
const (
	// EnvAddress holds the agent's gRPC address (host:port).
	EnvAddress = "INVARIANT_AGENT_ADDR"
	// EnvTokenFile holds the path of a file with the agent's bearer token.
	EnvTokenFile = "INVARIANT_AGENT_TOKEN_FILE"
	// EnvCAFile holds the path of a PEM file of CA certificates; when set, the helpers
	// connect with TLS.
	EnvCAFile = "INVARIANT_AGENT_CA_FILE"
	// EnvArtifacts holds the directory the report files are written to.
	EnvArtifacts = "ARTIFACTS"
)

// Names of the files written into the artifacts directory.
const (
	// ReportFile is the agent's report.json.
	ReportFile = "invariant-report.json"
	// JUnitFile is the agent's JUnit report, one test case per invariant. Kubernetes CI
	// (Kettle, Spyglass) reads junit_*.xml files from the artifacts directory.
	JUnitFile = "junit_invariants.xml"
)

const (
	dialTimeout    = 2 * time.Second
	callTimeout    = 2 * time.Second
	reportTimeout  = 30 * time.Second
	firstPause     = 5 * time.Second
	longestPause   = 2 * time.Minute
	maxNameBytes   = 4096
	logPrefix      = "invariant-agent: "
	suitePhaseName = "suite: "
)

// Option changes what Attach does.
type Option func(*settings)

type settings struct {
	address     string
	dialOpts    []agent.Option
	artifacts   func() string
	log         io.Writer
	failOnError bool
}

// WithAddress sets the agent's gRPC address (host:port) instead of $INVARIANT_AGENT_ADDR.
func WithAddress(addr string) Option {
	return func(s *settings) { s.address = addr }
}

// WithDialOptions sets how to connect (token, TLS) instead of $INVARIANT_AGENT_TOKEN_FILE
// and $INVARIANT_AGENT_CA_FILE.
func WithDialOptions(opts ...agent.Option) Option {
	return func(s *settings) { s.dialOpts = append(s.dialOpts, opts...) }
}

// WithArtifactsDir sets where the report files go instead of $ARTIFACTS. dir is called
// after the suite, so it may return a flag's value, e.g.
//
//	invariantginkgo.WithArtifactsDir(func() string { return framework.TestContext.ReportDir })
//
// An empty result falls back to $ARTIFACTS.
func WithArtifactsDir(dir func() string) Option {
	return func(s *settings) { s.artifacts = dir }
}

// WithLogOutput sets where the helpers' few log lines go (default: standard error,
// which Ginkgo shows with the spec's output in parallel runs).
func WithLogOutput(w io.Writer) Option {
	return func(s *settings) { s.log = w }
}

// WithFailOnError makes the suite fail (in its ReportAfterSuite node) when the report
// could not be fetched and written: no agent address, an unreachable agent, a failed
// call or an unwritable directory. Specs never fail because of the agent.
func WithFailOnError() Option {
	return func(s *settings) { s.failOnError = true }
}

// Attach registers the nodes that annotate every spec in the agent and write its report
// after the suite. Call it once, at the top level of the suite:
//
//	var _ = invariantginkgo.Attach()
func Attach(opts ...Option) bool {
	s := settings{log: os.Stderr}
	for _, opt := range opts {
		opt(&s)
	}
	r := &reporter{settings: s}
	ginkgo.ReportBeforeEach(r.specStarted)
	ginkgo.ReportAfterEach(r.specFinished)
	ginkgo.ReportAfterSuite("invariant-agent report", r.suiteFinished)
	return true
}

// reporter is the state of one Ginkgo process.
type reporter struct {
	settings

	mu        sync.Mutex
	resolved  bool          // the environment has been read
	addr      string        // empty: not configured
	client    *agent.Client // nil until a Dial succeeded
	pauseTill time.Time     // no calls before this, after a failure
	pause     time.Duration // the next pause
	warned    bool          // a failure has been logged
	lost      int           // annotations that could not be sent
	lastErr   error         // the latest failure
	running   *runningSpec  // the spec this process runs now
}

type runningSpec struct {
	name  string
	start time.Time
}

func (r *reporter) specStarted(report types.SpecReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running = nil
	if dryRun() || report.State.Is(types.SpecStateSkipped|types.SpecStatePending) {
		return // filtered out, pending, or after an abort: it will not run
	}
	spec := &runningSpec{name: SpecName(report), start: time.Now()}
	r.running = spec
	r.call(func(ctx context.Context, c *agent.Client) error {
		start, err := c.TestStarted(ctx, spec.name, spec.start)
		if err == nil {
			spec.start = start
		}
		return err
	})
}

func (r *reporter) specFinished(report types.SpecReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	spec := r.running
	r.running = nil
	if spec == nil {
		return
	}
	end := report.EndTime
	if end.Before(spec.start) {
		end = time.Now()
	}
	r.call(func(ctx context.Context, c *agent.Client) error {
		return c.TestFinished(ctx, spec.name, spec.start, end, report.State.String())
	})
}

func (r *reporter) suiteFinished(report types.Report) {
	if dryRun() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resolve()
	if r.addr == "" {
		if r.failOnError {
			ginkgo.Fail(logPrefix + EnvAddress + " is not set: no invariant report")
		}
		return
	}
	// One more try even while pausing: the report is what the suite came for.
	r.pauseTill = time.Time{}
	for _, p := range suitePhases(report) {
		r.call(func(ctx context.Context, c *agent.Client) error {
			_, err := c.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_PHASE, p.name, p.start, p.end, "")
			return err
		})
	}
	var err error
	var wrote string
	if time.Now().Before(r.pauseTill) {
		err = r.lastErr // the agent failed just now
	} else {
		wrote, err = r.writeReport()
	}
	notSent := ""
	if r.lost > 0 {
		notSent = fmt.Sprintf(" (%d annotations from this process could not be sent)", r.lost)
	}
	if err != nil {
		err = fmt.Errorf("no invariant report%s: %w", notSent, err)
		r.logf("%v", err)
	} else {
		r.logf("%s%s", wrote, notSent)
	}
	if r.client != nil {
		_ = r.client.Close()
		r.client = nil
	}
	if r.failOnError && err != nil {
		ginkgo.Fail(logPrefix + err.Error())
	}
}

// writeReport fetches the JSON and JUnit reports and writes them to the artifacts
// directory; it returns what it did, in words.
func (r *reporter) writeReport() (string, error) {
	dir := ""
	if r.artifacts != nil {
		dir = r.artifacts()
	}
	if dir == "" {
		dir = os.Getenv(EnvArtifacts)
	}
	if dir == "" {
		return "", errors.New(EnvArtifacts + " is not set (the agent's --report-dir has the report)")
	}
	if err := r.connect(dialTimeout); err != nil {
		return "", err
	}
	files := []struct {
		name   string
		format invariantv1.ReportFormat
	}{
		{ReportFile, invariantv1.ReportFormat_REPORT_FORMAT_JSON},
		{JUnitFile, invariantv1.ReportFormat_REPORT_FORMAT_JUNIT},
	}
	var summary string
	for _, f := range files {
		ctx, cancel := context.WithTimeout(context.Background(), reportTimeout)
		content, err := r.client.Report(ctx, f.format)
		cancel()
		if err != nil {
			return "", err
		}
		if err := writeFileAtomic(filepath.Join(dir, f.name), content); err != nil {
			return "", err
		}
		if f.format == invariantv1.ReportFormat_REPORT_FORMAT_JSON {
			summary = totals(content)
		}
	}
	return fmt.Sprintf("%swrote %s and %s to %s", summary, ReportFile, JUnitFile, dir), nil
}

// call runs fn with a connected client and a short timeout, unless the helpers are
// pausing after a failure. A failure is logged the first time and starts a pause.
func (r *reporter) call(fn func(context.Context, *agent.Client) error) {
	r.resolve()
	if r.addr == "" {
		return
	}
	if time.Now().Before(r.pauseTill) {
		r.lost++
		return
	}
	err := r.connect(dialTimeout)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err = fn(ctx, r.client)
		cancel()
	}
	if err == nil {
		r.pause = 0
		return
	}
	r.lost++
	if r.pause == 0 {
		r.pause = firstPause
	} else {
		r.pause = min(2*r.pause, longestPause)
	}
	r.pauseTill = time.Now().Add(r.pause)
	r.lastErr = err
	r.warn(err)
}

// connect dials the agent unless already connected.
func (r *reporter) connect(timeout time.Duration) error {
	if r.client != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := agent.Dial(ctx, r.addr, r.dialOpts...)
	if err != nil {
		return err
	}
	r.client = c
	return nil
}

// resolve reads the environment once.
func (r *reporter) resolve() {
	if r.resolved {
		return
	}
	r.resolved = true
	r.addr = r.address
	if r.addr == "" {
		r.addr = os.Getenv(EnvAddress)
	}
	if r.addr == "" {
		if ginkgo.GinkgoParallelProcess() == 1 {
			r.logf("%s is not set: specs are not annotated and no invariant report is written", EnvAddress)
		}
		return
	}
	if r.dialOpts == nil {
		if f := os.Getenv(EnvTokenFile); f != "" {
			r.dialOpts = append(r.dialOpts, agent.WithTokenFile(f))
		}
		if f := os.Getenv(EnvCAFile); f != "" {
			r.dialOpts = append(r.dialOpts, agent.WithTLS(f))
		}
	}
}

func (r *reporter) warn(err error) {
	if r.warned {
		return
	}
	r.warned = true
	r.logf("%v; the suite goes on without it (this is logged once)", err)
}

func (r *reporter) logf(format string, args ...any) {
	if r.log != nil {
		fmt.Fprintf(r.log, logPrefix+format+"\n", args...)
	}
}

// SpecName is the name a spec is annotated with: its full text (container texts and
// leaf text joined by spaces, what --ginkgo.focus matches), then its labels as Ginkgo
// prints them, e.g. "[sig-node] Pods should restart [Disruptive, Slow]". Names longer
// than the agent accepts (4096 bytes) are cut.
func SpecName(report types.SpecReport) string {
	name := report.FullText()
	if labels := report.Labels(); len(labels) > 0 {
		name += " [" + strings.Join(labels, ", ") + "]"
	}
	name = strings.TrimSpace(name)
	if name == "" {
		name = report.LeafNodeLocation.String()
	}
	if len(name) > maxNameBytes {
		name = name[:maxNameBytes]
		for !utf8.ValidString(name) {
			name = name[:len(name)-1]
		}
	}
	return name
}

type phase struct {
	name       string
	start, end time.Time
}

// suitePhases are the phases of a finished suite: the suite itself ("suite:
// DESCRIPTION") and the suite-level nodes that ran (SynchronizedBeforeSuite, AfterSuite,
// ...), as the agent names them when it reads a Ginkgo JSON report.
func suitePhases(report types.Report) []phase {
	var out []phase
	if !report.StartTime.IsZero() {
		end := report.EndTime
		if end.Before(report.StartTime) {
			end = time.Now()
		}
		out = append(out, phase{suitePhaseName + report.SuiteDescription, report.StartTime, end})
	}
	nodes := types.NodeTypesForSuiteLevelNodes &^ (types.NodeTypeReportBeforeSuite | types.NodeTypeReportAfterSuite)
	for _, spec := range report.SpecReports {
		if !spec.LeafNodeType.Is(nodes) || spec.StartTime.IsZero() || spec.EndTime.Before(spec.StartTime) {
			continue
		}
		out = append(out, phase{spec.LeafNodeType.String(), spec.StartTime, spec.EndTime})
	}
	return out
}

// totals summarises a report.json as "1 violated, 0 expected disruption, 2 held, 0 not
// examined; ", or "" when it cannot be read.
func totals(reportJSON []byte) string {
	var r struct {
		Totals *struct {
			Violated           int `json:"violated"`
			ExpectedDisruption int `json:"expected_disruption"`
			Held               int `json:"held"`
			NotExamined        int `json:"not_examined"`
		} `json:"totals"`
	}
	if json.Unmarshal(reportJSON, &r) != nil || r.Totals == nil {
		return ""
	}
	t := r.Totals
	return fmt.Sprintf("invariants: %d violated, %d expected disruption, %d held, %d not examined; ",
		t.Violated, t.ExpectedDisruption, t.Held, t.NotExamined)
}

// writeFileAtomic writes a file through a temporary file in the same directory, so a
// reader never sees half of it.
func writeFileAtomic(path string, content []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func dryRun() bool {
	suite, _ := ginkgo.GinkgoConfiguration()
	return suite.DryRun
}
