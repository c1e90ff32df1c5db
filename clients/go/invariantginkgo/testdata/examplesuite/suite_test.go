// Package examplesuite is a small Ginkgo suite with the three lines that connect it to
// an invariant-agent. The tests of package invariantginkgo compile and run it against a
// real agent, serially (like e2e.test) and in parallel (ginkgo -p).
package examplesuite_test

import (
	"testing"

	"github.com/invariant-agent/invariant-agent/clients/go/invariantginkgo"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
)

// The line that annotates every spec in the agent at $INVARIANT_AGENT_ADDR and writes
// its report to $ARTIFACTS after the suite (with the import above).
var _ = invariantginkgo.Attach()

func TestExample(t *testing.T) {
	gomega.RegisterFailHandler(ginkgo.Fail)
	ginkgo.RunSpecs(t, "Example suite")
}
