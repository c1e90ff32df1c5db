package invariantginkgo_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
	"github.com/invariant-agent/invariant-agent/clients/go/internal/agenttest"
	invariantv1 "github.com/invariant-agent/invariant-agent/clients/go/invariant/v1"
	"github.com/invariant-agent/invariant-agent/clients/go/invariantginkgo"
)

// These tests compile testdata/examplesuite (a suite with the three lines) into a test
// binary, as Kubernetes builds e2e.test, and run it against a real agent: on its own
// (serially) and with the ginkgo CLI in parallel (-p).

// The example suite's specs, as annotated.
const (
	specFast       = "[sig-example] Target answers while nothing disturbs it [Fast]"
	specSkipped    = "[sig-example] Target is skipped at run time"
	specFailing    = "[sig-example] Target fails on purpose [Failing]"
	specDisruptive = "[sig-example] Target is broken for a while [Serial, Disruptive]" // Serial is a label too
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// exampleBinary compiles the example suite once per test run.
func exampleBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "invariantginkgo-example")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "example.test")
		out, err := exec.Command("go", "test", "-c", "-o", binary, "./testdata/examplesuite").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go test -c ./testdata/examplesuite: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary != "" {
		os.RemoveAll(filepath.Dir(binary))
	}
	os.Exit(code)
}

type run struct {
	output  string
	code    int
	elapsed time.Duration
}

// runSuite runs cmd with env added to this process's environment (without the
// variables the helpers read, so a developer's own agent is not used).
func runSuite(t *testing.T, cmd *exec.Cmd, env ...string) run {
	t.Helper()
	for _, kv := range os.Environ() {
		key, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(key, "INVARIANT_AGENT_") || key == invariantginkgo.EnvArtifacts {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	began := time.Now()
	err := cmd.Run()
	r := run{output: out.String(), elapsed: time.Since(began)}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", cmd, err)
	}
	return r
}

type suiteReport struct {
	Annotations []struct {
		Kind    string  `json:"kind"`
		Name    string  `json:"name"`
		Start   string  `json:"start"`
		End     *string `json:"end"`
		Outcome *string `json:"outcome"`
	} `json:"annotations"`
	Invariants []struct {
		Name       string `json:"name"`
		Verdict    string `json:"verdict"`
		Violations []struct {
			Start string   `json:"start"`
			End   *string  `json:"end"`
			Tests []string `json:"tests"`
		} `json:"violations"`
	} `json:"invariants"`
}

// checkArtifacts checks what the suite left in the artifacts directory: the report
// annotates every spec that ran with its outcome, attributes the outage to the spec
// that caused it, and a JUnit file is there. maxPhases is how many phases of each name
// there may be (at least one each): in parallel runs every process reports its
// SynchronizedBeforeSuite, and the agent keeps one of those that started in the same
// millisecond (same kind, name and start).
func checkArtifacts(t *testing.T, r run, artifacts string, maxPhases map[string]int) {
	t.Helper()
	if r.code != 1 || !strings.Contains(r.output, "1 Failed") {
		t.Errorf("exit code %d, want 1 from the one failing spec; output:\n%s", r.code, r.output)
	}
	if n := strings.Count(r.output, "wrote "+invariantginkgo.ReportFile); n != 1 {
		t.Errorf("the report was written %d times, want once; output:\n%s", n, r.output)
	}
	content, err := os.ReadFile(filepath.Join(artifacts, invariantginkgo.ReportFile))
	if err != nil {
		t.Fatalf("%v; output:\n%s", err, r.output)
	}
	var rep suiteReport
	if err := json.Unmarshal(content, &rep); err != nil {
		t.Fatalf("%s: %v", invariantginkgo.ReportFile, err)
	}

	tests := map[string]string{}
	phases := map[string]int{}
	for _, a := range rep.Annotations {
		if a.End == nil || *a.End < a.Start {
			t.Errorf("annotation without a proper end: %+v", a)
		}
		switch a.Kind {
		case "test":
			if _, dup := tests[a.Name]; dup {
				t.Errorf("test %q annotated twice", a.Name)
			}
			if a.Outcome != nil {
				tests[a.Name] = *a.Outcome
			} else {
				tests[a.Name] = "(none)"
			}
		case "phase":
			phases[a.Name]++
		}
	}
	wantTests := map[string]string{
		specFast:       "passed",
		specSkipped:    "skipped",
		specFailing:    "failed",
		specDisruptive: "passed",
	}
	if !mapsEqual(tests, wantTests) {
		t.Errorf("annotated tests and outcomes:\n got %v\nwant %v (the pending spec never runs)", tests, wantTests)
	}
	for name, n := range phases {
		if n > maxPhases[name] {
			t.Errorf("%d phases named %q, want at most %d", n, name, maxPhases[name])
		}
	}
	for name := range maxPhases {
		if phases[name] == 0 {
			t.Errorf("no phase named %q in %v", name, phases)
		}
	}

	for _, inv := range rep.Invariants {
		switch inv.Name {
		case agenttest.Invariant:
			if inv.Verdict != "violated" || len(inv.Violations) == 0 {
				t.Errorf("%s: verdict %s with %d violations, want violated", inv.Name, inv.Verdict, len(inv.Violations))
			}
			for _, v := range inv.Violations {
				if !slices.Equal(v.Tests, []string{specDisruptive}) {
					t.Errorf("violation from %s attributed to %q, want only %q", v.Start, v.Tests, specDisruptive)
				}
			}
		case agenttest.SteadyInvariant:
			if inv.Verdict != "held" {
				t.Errorf("%s: verdict %s, want held", inv.Name, inv.Verdict)
			}
		}
	}

	junit, err := os.ReadFile(filepath.Join(artifacts, invariantginkgo.JUnitFile))
	if err != nil {
		t.Fatal(err)
	}
	var suites struct {
		Cases []struct {
			Name string `xml:"name,attr"`
		} `xml:"testsuite>testcase"`
	}
	if err := xml.Unmarshal(junit, &suites); err != nil || len(suites.Cases) != 2 {
		t.Errorf("%s: %v, %d test cases, want 2:\n%s", invariantginkgo.JUnitFile, err, len(suites.Cases), junit)
	}
}

func mapsEqual[V comparable](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestSuiteAnnotatesSpecsAndWritesReport(t *testing.T) {
	bin := exampleBinary(t)
	// Over TLS, configured by the environment like the address.
	certs := agenttest.NewCertificates(t)
	a := agenttest.Start(t, agenttest.Options{TLS: &certs})
	artifacts := filepath.Join(t.TempDir(), "artifacts")
	r := runSuite(t, exec.Command(bin, "--ginkgo.no-color"),
		"INVARIANT_AGENT_ADDR="+a.Addr,
		"INVARIANT_AGENT_CA_FILE="+certs.CAFile,
		"ARTIFACTS="+artifacts,
		"EXAMPLE_TARGET_URL="+a.Target.URL)
	checkArtifacts(t, r, artifacts, map[string]int{
		"suite: Example suite":    1,
		"SynchronizedBeforeSuite": 1,
	})
}

func TestParallelSuiteAnnotatesSpecsAndWritesReportOnce(t *testing.T) {
	bin := exampleBinary(t)
	a := agenttest.Start(t, agenttest.Options{Token: "parallel-token"})
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("parallel-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	artifacts := filepath.Join(dir, "artifacts")
	r := runSuite(t, exec.Command("go", "tool", "ginkgo", "--no-color", "-p", "--procs=2", bin),
		"INVARIANT_AGENT_ADDR="+a.Addr,
		"INVARIANT_AGENT_TOKEN_FILE="+tokenFile,
		"ARTIFACTS="+artifacts,
		"EXAMPLE_TARGET_URL="+a.Target.URL)
	if !strings.Contains(r.output, "Running in parallel across 2 processes") {
		t.Errorf("the suite did not run in parallel:\n%s", r.output)
	}
	// Every process runs the second function of SynchronizedBeforeSuite.
	checkArtifacts(t, r, artifacts, map[string]int{
		"suite: Example suite":    1,
		"SynchronizedBeforeSuite": 2,
	})
}

// closedAddr returns a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// blackholeAddr returns the address of a server that accepts connections and never
// answers, like an agent behind a dropped route.
func blackholeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestUnreachableAgentNeitherFailsNorSlowsTheSuite(t *testing.T) {
	bin := exampleBinary(t)
	target := agenttest.StartTarget(t)
	for _, tc := range []struct {
		name    string
		addr    string
		maxTime time.Duration
	}{
		// Refused at once: every call fails fast.
		{"refused", closedAddr(t), 3 * time.Second},
		// Hangs: one 2 s timeout when the first spec starts, then a pause covering
		// the other specs, and one more try after the suite (without the pause,
		// it would be 2 s for each of the 4 calls, then 2 more).
		{"hanging", blackholeAddr(t), 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			artifacts := filepath.Join(t.TempDir(), "artifacts")
			r := runSuite(t, exec.Command(bin, "--ginkgo.no-color", "--ginkgo.label-filter=!Failing && !Disruptive"),
				"INVARIANT_AGENT_ADDR="+tc.addr,
				"ARTIFACTS="+artifacts,
				"EXAMPLE_TARGET_URL="+target.URL)
			if r.code != 0 {
				t.Errorf("the suite failed (exit %d) because the agent is unreachable:\n%s", r.code, r.output)
			}
			if n := strings.Count(r.output, "the suite goes on without it"); n != 1 {
				t.Errorf("warned %d times, want once:\n%s", n, r.output)
			}
			if !strings.Contains(r.output, tc.addr) {
				t.Errorf("the warning does not name the address %s:\n%s", tc.addr, r.output)
			}
			if r.elapsed > tc.maxTime {
				t.Errorf("the suite took %v, want at most %v:\n%s", r.elapsed, tc.maxTime, r.output)
			}
			if _, err := os.Stat(artifacts); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("artifacts written without an agent: %v", err)
			}
		})
	}
}

func TestNoAddressMeansNothingToDo(t *testing.T) {
	bin := exampleBinary(t)
	target := agenttest.StartTarget(t)
	r := runSuite(t, exec.Command(bin, "--ginkgo.no-color", "--ginkgo.label-filter=!Failing && !Disruptive"),
		"EXAMPLE_TARGET_URL="+target.URL)
	if r.code != 0 {
		t.Errorf("exit %d:\n%s", r.code, r.output)
	}
	if n := strings.Count(r.output, invariantginkgo.EnvAddress+" is not set"); n != 1 {
		t.Errorf("said %d times that %s is not set, want once:\n%s", n, invariantginkgo.EnvAddress, r.output)
	}
}

func TestDryRunSendsNothing(t *testing.T) {
	bin := exampleBinary(t)
	a := agenttest.Start(t, agenttest.Options{})
	artifacts := filepath.Join(t.TempDir(), "artifacts")
	r := runSuite(t, exec.Command(bin, "--ginkgo.no-color", "--ginkgo.dry-run"),
		"INVARIANT_AGENT_ADDR="+a.Addr,
		"ARTIFACTS="+artifacts,
		"EXAMPLE_TARGET_URL="+a.Target.URL)
	if r.code != 0 {
		t.Errorf("exit %d:\n%s", r.code, r.output)
	}
	if _, err := os.Stat(artifacts); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dry run wrote artifacts: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	content, err := c.Report(ctx, invariantv1.ReportFormat_REPORT_FORMAT_JSON)
	if err != nil {
		t.Fatal(err)
	}
	var rep suiteReport
	if err := json.Unmarshal(content, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Annotations) != 0 {
		t.Errorf("a dry run annotated %+v", rep.Annotations)
	}
}
