package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
	invariantv1 "github.com/invariant-agent/invariant-agent/clients/go/invariant/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The real agent is tested in client_test.go. These tests use a scripted server for
// the streams it does not produce on demand: a subscriber that lost events, and a
// stream closed before the run ended.

// scriptedTail answers every Tail with the same events, then closes the stream (OK).
type scriptedTail struct {
	invariantv1.UnimplementedAgentServiceServer
	events []*invariantv1.TailResponse
}

func (s *scriptedTail) Tail(_ *invariantv1.TailRequest, stream grpc.ServerStreamingServer[invariantv1.TailResponse]) error {
	for _, ev := range s.events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func serveScript(t *testing.T, events ...*invariantv1.TailResponse) *agent.Client {
	t.Helper()
	srv := grpc.NewServer()
	invariantv1.RegisterAgentServiceServer(srv, &scriptedTail{events: events})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return dial(t, l.Addr().String())
}

var (
	snapshotEvent = &invariantv1.TailResponse{Event: &invariantv1.TailResponse_Snapshot{Snapshot: &invariantv1.Snapshot{}}}
	liveEvent     = &invariantv1.TailResponse{Event: &invariantv1.TailResponse_Live{Live: &invariantv1.Live{}}}
	lostEvent     = &invariantv1.TailResponse{Event: &invariantv1.TailResponse_Lost{Lost: &invariantv1.Lost{Events: 7}}}
	endedEvent    = &invariantv1.TailResponse{Event: &invariantv1.TailResponse_RunEnded{RunEnded: &invariantv1.RunEnded{}}}
)

func sampleEvent(seq uint64) *invariantv1.TailResponse {
	return &invariantv1.TailResponse{Sequence: seq, Event: &invariantv1.TailResponse_Sample{
		Sample: &invariantv1.Sample{Invariant: "x", Outcome: invariantv1.Outcome_OUTCOME_OK},
	}}
}

// kinds names the events fn saw.
func kinds(evs []*invariantv1.TailResponse) string {
	var out []string
	for _, ev := range evs {
		switch e := ev.GetEvent().(type) {
		case *invariantv1.TailResponse_Snapshot:
			out = append(out, "snapshot")
		case *invariantv1.TailResponse_Live:
			out = append(out, "live")
		case *invariantv1.TailResponse_Sample:
			out = append(out, "sample")
		case *invariantv1.TailResponse_Lost:
			out = append(out, "lost")
		case *invariantv1.TailResponse_RunEnded:
			out = append(out, "run_ended")
		default:
			out = append(out, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(out, " ")
}

func TestTailPassesLostOnAndReturnsNilAtRunEnd(t *testing.T) {
	c := serveScript(t, snapshotEvent, liveEvent, sampleEvent(3), lostEvent, sampleEvent(11), endedEvent)
	var seen []*invariantv1.TailResponse
	err := c.Tail(context.Background(), nil, func(ev *invariantv1.TailResponse) error {
		seen = append(seen, ev)
		return nil
	})
	if err != nil {
		t.Fatalf("Tail: %v", err)
	}
	if got, want := kinds(seen), "snapshot live sample lost sample run_ended"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if seen[3].GetLost().GetEvents() != 7 {
		t.Errorf("lost event: %v", seen[3])
	}
}

func TestTailFailsWhenTheStreamClosesBeforeTheRunEnds(t *testing.T) {
	c := serveScript(t, snapshotEvent, liveEvent, sampleEvent(1))
	err := c.Tail(context.Background(), nil, func(*invariantv1.TailResponse) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "before the run ended") {
		t.Fatalf("Tail: %v, want an error saying the stream closed before the run ended", err)
	}
}

func TestTailStopsOnCallbackError(t *testing.T) {
	c := serveScript(t, snapshotEvent, liveEvent, sampleEvent(1), sampleEvent(2), endedEvent)
	calls := 0
	err := c.Tail(context.Background(), nil, func(*invariantv1.TailResponse) error {
		calls++
		if calls == 2 {
			return agent.StopTail
		}
		return nil
	})
	if err != nil || calls != 2 {
		t.Errorf("StopTail: Tail returned %v after %d calls, want nil after 2", err, calls)
	}

	mine := errors.New("mine")
	err = c.Tail(context.Background(), nil, func(*invariantv1.TailResponse) error { return mine })
	if !errors.Is(err, mine) {
		t.Errorf("Tail returned %v, want the callback's error", err)
	}
}
