package agent_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/invariant-agent/invariant-agent/clients/go/agent"
	invariantv1 "github.com/invariant-agent/invariant-agent/clients/go/invariant/v1"
)

// Record a test's run, then save the report.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.Dial(ctx, "127.0.0.1:9465", agent.WithTokenFile("/var/run/invariant-agent/token"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	name := "[sig-node] Pods should be restarted [Disruptive]"
	start, err := c.TestStarted(ctx, name, time.Time{})
	if err != nil {
		log.Print(err) // informational: carry on without the agent
	}
	// ... run the test ...
	if err := c.TestFinished(ctx, name, start, time.Now(), "passed"); err != nil {
		log.Print(err)
	}

	report, err := c.Report(ctx, invariantv1.ReportFormat_REPORT_FORMAT_JSON)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("invariant-report.json", report, 0o644); err != nil {
		log.Fatal(err)
	}
}

// Mark a phase of the run, such as an upgrade, from now until end is called.
func ExampleClient_Phase() {
	ctx := context.Background()
	c, err := agent.Dial(ctx, "127.0.0.1:9465")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	end, err := c.Phase(ctx, "upgrade control plane")
	if err != nil {
		log.Fatal(err)
	}
	// ... upgrade ...
	if err := end(ctx); err != nil {
		log.Fatal(err)
	}
}

// Print every state transition of the invariants labelled component=apiserver, from
// the last 10 samples each until the run ends.
func ExampleClient_Tail() {
	ctx := context.Background()
	c, err := agent.Dial(ctx, "127.0.0.1:9465")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	req := &invariantv1.TailRequest{
		Labels:          map[string]string{"component": "apiserver"},
		TransitionsOnly: true,
		History:         &invariantv1.TailRequest_Last{Last: 10},
	}
	err = c.Tail(ctx, req, func(ev *invariantv1.TailResponse) error {
		switch {
		case ev.GetTransition() != nil:
			t := ev.GetTransition()
			fmt.Printf("%s %s: %s -> %s (%s)\n", t.GetTime().AsTime().Format(time.RFC3339), t.GetInvariant(), t.GetFrom(), t.GetTo(), t.GetReason())
		case ev.GetLost() != nil:
			fmt.Printf("missed %d events\n", ev.GetLost().GetEvents())
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}
