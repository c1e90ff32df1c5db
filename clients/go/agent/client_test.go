package agent_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
	"github.com/invariant-agent/invariant-agent/clients/go/internal/agenttest"
	invariantv1 "github.com/invariant-agent/invariant-agent/clients/go/invariant/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// annotation is one entry of report.json's annotations.
type annotation struct {
	Kind    string  `json:"kind"`
	Name    string  `json:"name"`
	Start   string  `json:"start"`
	End     *string `json:"end"`
	Outcome *string `json:"outcome"`
}

// reportJSON is the part of report.json these tests read.
type reportJSON struct {
	Annotations []annotation `json:"annotations"`
	Invariants  []struct {
		Name       string `json:"name"`
		Verdict    string `json:"verdict"`
		Violations []struct {
			Start string   `json:"start"`
			Tests []string `json:"tests"`
		} `json:"violations"`
	} `json:"invariants"`
}

// testCase is a JUnit test case.
type testCase struct {
	Name string `xml:"name,attr"`
}

func dial(t *testing.T, addr string, opts ...agent.Option) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func report(t *testing.T, c *agent.Client) reportJSON {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	content, err := c.Report(ctx, invariantv1.ReportFormat_REPORT_FORMAT_JSON)
	if err != nil {
		t.Fatal(err)
	}
	var r reportJSON
	if err := json.Unmarshal(content, &r); err != nil {
		t.Fatalf("report.json: %v\n%s", err, content)
	}
	return r
}

// waitState polls Status until the invariant is in state.
func waitState(t *testing.T, c *agent.Client, name string, state invariantv1.State) *invariantv1.InvariantStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, inv := range st.GetInvariants() {
			if inv.GetName() == name && inv.GetState() == state {
				return inv
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not reach %s within 10s: %v", name, state, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestClientAgainstAgent(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{})
	c := dial(t, a.Addr)
	ctx := context.Background()

	t.Run("Status", func(t *testing.T) {
		inv := waitState(t, c, agenttest.Invariant, invariantv1.State_STATE_HOLDING)
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetRun().GetId() == "" || st.GetRun().GetStartedAt() == nil {
			t.Errorf("run facts missing: %v", st.GetRun())
		}
		var names []string
		for _, i := range st.GetInvariants() {
			names = append(names, i.GetName())
		}
		if want := []string{agenttest.Invariant, agenttest.SteadyInvariant}; !slices.Equal(names, want) {
			t.Errorf("invariants %v, want %v (file order)", names, want)
		}
		if inv.GetProbe() != "http" || inv.GetLabels()["kind"] != "http" || inv.GetSamplesOk() == 0 {
			t.Errorf("status of %s: %v", agenttest.Invariant, inv)
		}
	})

	t.Run("AnnotateThenReport", func(t *testing.T) {
		name := "[sig-test] client annotates a test"
		start, err := c.TestStarted(ctx, name, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 5*time.Second || time.Since(start) < 0 {
			t.Errorf("recorded start %v is not about now", start)
		}
		running := findAnnotation(t, report(t, c), "test", name)
		if running.End != nil {
			t.Errorf("a started test has an end: %v", *running.End)
		}
		if err := c.TestFinished(ctx, name, start, time.Now(), "passed"); err != nil {
			t.Fatal(err)
		}
		end, err := c.Phase(ctx, "upgrade")
		if err != nil {
			t.Fatal(err)
		}
		if err := end(ctx); err != nil {
			t.Fatal(err)
		}
		r := report(t, c)
		finished := findAnnotation(t, r, "test", name)
		if finished.End == nil || finished.Outcome == nil || *finished.Outcome != "passed" {
			t.Errorf("finished test annotation: %+v", finished)
		}
		if n := countAnnotations(r, "test", name); n != 1 {
			t.Errorf("%d annotations named %q, want 1: the end must replace the start", n, name)
		}
		if phase := findAnnotation(t, r, "phase", "upgrade"); phase.End == nil {
			t.Errorf("phase has no end: %+v", phase)
		}

		junit, err := c.Report(ctx, invariantv1.ReportFormat_REPORT_FORMAT_JUNIT)
		if err != nil {
			t.Fatal(err)
		}
		var suites struct {
			Cases []testCase `xml:"testsuite>testcase"`
		}
		if err := xml.Unmarshal(junit, &suites); err != nil {
			t.Fatalf("JUnit report: %v\n%s", err, junit)
		}
		if !slices.Contains(suites.Cases, testCase{Name: "[invariant] " + agenttest.Invariant}) {
			t.Errorf("JUnit report has no test case for %s:\n%s", agenttest.Invariant, junit)
		}
	})

	t.Run("AnnotateRejectsEmptyName", func(t *testing.T) {
		_, err := c.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_TEST, "", time.Time{}, time.Time{}, "")
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("got %v, want INVALID_ARGUMENT", err)
		}
		if !strings.Contains(err.Error(), a.Addr) || !strings.Contains(err.Error(), "annotate test") {
			t.Errorf("error does not say where and what: %v", err)
		}
	})

	t.Run("TailSeesSamplesAndViolation", func(t *testing.T) {
		waitState(t, c, agenttest.Invariant, invariantv1.State_STATE_HOLDING)
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		var (
			events      []string
			live        bool
			samples     int
			lastSeq     uint64
			broke       bool
			violated    *invariantv1.Transition
			failedSeen  bool
			recoveredAt *invariantv1.Transition
		)
		req := &invariantv1.TailRequest{Invariants: []string{agenttest.Invariant}}
		err := c.Tail(ctx, req, func(ev *invariantv1.TailResponse) error {
			switch e := ev.GetEvent().(type) {
			case *invariantv1.TailResponse_Snapshot:
				events = append(events, "snapshot")
				if len(e.Snapshot.GetInvariants()) != 1 || e.Snapshot.GetInvariants()[0].GetName() != agenttest.Invariant {
					t.Errorf("snapshot is not filtered to %s: %v", agenttest.Invariant, e.Snapshot)
				}
			case *invariantv1.TailResponse_Live:
				events = append(events, "live")
				live = true
			case *invariantv1.TailResponse_Sample:
				if len(events) == 0 || events[len(events)-1] != "sample" {
					events = append(events, "sample")
				}
				if e.Sample.GetInvariant() != agenttest.Invariant {
					t.Errorf("sample of %s, which the request filtered out", e.Sample.GetInvariant())
				}
				if ev.GetSequence() <= lastSeq {
					t.Errorf("sequence %d after %d", ev.GetSequence(), lastSeq)
				}
				lastSeq = ev.GetSequence()
				samples++
				if e.Sample.GetOutcome() == invariantv1.Outcome_OUTCOME_FAILED {
					failedSeen = true
					if e.Sample.GetErrorClass() == "" {
						t.Errorf("failed sample without error class: %v", e.Sample)
					}
				}
				if live && samples >= 3 && !broke {
					broke = true
					a.Target.Break()
				}
			case *invariantv1.TailResponse_Transition:
				events = append(events, "transition to "+e.Transition.GetTo().String())
				switch e.Transition.GetTo() {
				case invariantv1.State_STATE_VIOLATED:
					violated = e.Transition
					a.Target.Fix()
				case invariantv1.State_STATE_HOLDING:
					if violated != nil {
						recoveredAt = e.Transition
						return agent.StopTail
					}
				}
			case *invariantv1.TailResponse_Lost:
				t.Errorf("lost %d events although the test reads promptly", e.Lost.GetEvents())
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Tail: %v (events %v)", err, events)
		}
		if events[0] != "snapshot" || events[1] != "live" {
			t.Errorf("stream starts %v, want snapshot, live", events)
		}
		if !failedSeen || violated == nil || recoveredAt == nil {
			t.Fatalf("no failed sample, violation and recovery in %v", events)
		}
		if violated.GetReason() == "" || violated.GetFrom() == invariantv1.State_STATE_VIOLATED {
			t.Errorf("violation transition: %v", violated)
		}
		if !recoveredAt.GetTime().AsTime().After(violated.GetTime().AsTime()) {
			t.Errorf("recovered at %v, before the violation at %v", recoveredAt.GetTime().AsTime(), violated.GetTime().AsTime())
		}

		r := report(t, c)
		for _, inv := range r.Invariants {
			if inv.Name == agenttest.Invariant && (inv.Verdict != "violated" || len(inv.Violations) == 0) {
				t.Errorf("report after the outage: %s is %s with %d violations", inv.Name, inv.Verdict, len(inv.Violations))
			}
		}
	})

	t.Run("TailFiltersAndHistory", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req := &invariantv1.TailRequest{
			Labels:          map[string]string{"kind": "tcp"},
			TransitionsOnly: true,
			History:         &invariantv1.TailRequest_Last{Last: 5},
		}
		var snapshot *invariantv1.Snapshot
		var beforeLive, afterLive []*invariantv1.TailResponse
		err := c.Tail(ctx, req, func(ev *invariantv1.TailResponse) error {
			switch {
			case ev.GetSnapshot() != nil:
				snapshot = ev.GetSnapshot()
			case ev.GetLive() != nil:
				afterLive = []*invariantv1.TailResponse{}
				// No transitions are due on a steady target: give samples a chance
				// to (wrongly) arrive, then stop.
				go func() { time.Sleep(500 * time.Millisecond); cancel() }()
			case afterLive == nil:
				beforeLive = append(beforeLive, ev)
			default:
				afterLive = append(afterLive, ev)
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Tail ended with %v, want the cancellation", err)
		}
		if len(snapshot.GetInvariants()) != 1 || snapshot.GetInvariants()[0].GetName() != agenttest.SteadyInvariant {
			t.Errorf("snapshot for labels kind=tcp: %v", snapshot)
		}
		for _, ev := range append(beforeLive, afterLive...) {
			if ev.GetSample() != nil {
				t.Errorf("sample despite transitions_only: %v", ev)
			}
		}
		for _, ev := range beforeLive {
			if !ev.GetReplay() {
				t.Errorf("history event without replay: %v", ev)
			}
		}
	})

	t.Run("TailRejectsUnknownInvariant", func(t *testing.T) {
		err := c.Tail(ctx, &invariantv1.TailRequest{Invariants: []string{"no-such-invariant"}}, func(*invariantv1.TailResponse) error {
			return nil
		})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("got %v, want INVALID_ARGUMENT", err)
		}
	})
}

func findAnnotation(t *testing.T, r reportJSON, kind, name string) annotation {
	t.Helper()
	for _, a := range r.Annotations {
		if a.Kind == kind && a.Name == name {
			return a
		}
	}
	t.Fatalf("report has no %s annotation %q: %+v", kind, name, r.Annotations)
	panic("unreachable")
}

func countAnnotations(r reportJSON, kind, name string) int {
	n := 0
	for _, a := range r.Annotations {
		if a.Kind == kind && a.Name == name {
			n++
		}
	}
	return n
}

func TestTailReturnsWhenTheRunEnds(t *testing.T) {
	a := agenttest.Start(t, agenttest.Options{Duration: 5 * time.Second})
	c := dial(t, a.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last *invariantv1.TailResponse
	err := c.Tail(ctx, nil, func(ev *invariantv1.TailResponse) error {
		if last.GetRunEnded() != nil {
			t.Errorf("event after run_ended: %v", ev)
		}
		last = ev
		return nil
	})
	if err != nil {
		t.Fatalf("Tail: %v", err)
	}
	if last.GetRunEnded() == nil {
		t.Fatalf("last event %v, want run_ended", last)
	}
}

func TestTokenAuth(t *testing.T) {
	const token = "s3cret-token"
	a := agenttest.Start(t, agenttest.Options{Token: token})
	ctx := context.Background()

	// The health check in Dial needs no token.
	anonymous := dial(t, a.Addr)
	if _, err := anonymous.Status(ctx); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Status without a token: got %v, want UNAUTHENTICATED", err)
	}
	err := anonymous.Tail(ctx, nil, func(*invariantv1.TailResponse) error { return agent.StopTail })
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("Tail without a token: got %v, want UNAUTHENTICATED", err)
	}
	if _, err := dial(t, a.Addr, agent.WithToken("wrong")).Status(ctx); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Status with a wrong token: got %v, want UNAUTHENTICATED", err)
	}
	if _, err := dial(t, a.Addr, agent.WithToken(token)).Status(ctx); err != nil {
		t.Errorf("Status with the token: %v", err)
	}

	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile := dial(t, a.Addr, agent.WithTokenFile(file))
	if _, err := fromFile.Annotate(ctx, invariantv1.AnnotationKind_ANNOTATION_KIND_PHASE, "authenticated", time.Time{}, time.Time{}, ""); err != nil {
		t.Errorf("Annotate with the token from a file: %v", err)
	}
	// The file is read for every call: a rotated token is used at once.
	if err := os.WriteFile(file, []byte("rotated-away"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fromFile.Status(ctx); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Status after the token file changed: got %v, want UNAUTHENTICATED", err)
	}

	_, err = agent.Dial(ctx, a.Addr, agent.WithTokenFile(filepath.Join(t.TempDir(), "missing")))
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Dial with a missing token file: %v", err)
	}
}

func TestDialFailsFastWhenRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	_, err = agent.Dial(ctx, addr)
	if err == nil || !strings.Contains(err.Error(), addr) || status.Code(err) != codes.Unavailable {
		t.Fatalf("Dial to a closed port: %v, want UNAVAILABLE naming %s", err, addr)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("Dial took %v to notice a refused connection", took)
	}
}
