package invariantginkgo_test

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/invariant-agent/invariant-agent/clients/go/invariantginkgo"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
)

func TestSpecName(t *testing.T) {
	for _, tc := range []struct {
		name   string
		report types.SpecReport
		want   string
	}{
		{
			name: "texts joined as --ginkgo.focus sees them",
			report: types.SpecReport{
				ContainerHierarchyTexts: []string{"[sig-node] Pods", "when rebooted"},
				LeafNodeText:            "should come back [Disruptive]",
			},
			want: "[sig-node] Pods when rebooted should come back [Disruptive]",
		},
		{
			name: "labels as Ginkgo prints them, deduplicated",
			report: types.SpecReport{
				ContainerHierarchyTexts:  []string{"[sig-node] Pods", ""},
				ContainerHierarchyLabels: [][]string{{"sig-node"}, {"Slow"}},
				LeafNodeText:             "should restart",
				LeafNodeLabels:           []string{"Disruptive", "Slow"},
			},
			want: "[sig-node] Pods should restart [sig-node, Slow, Disruptive]",
		},
		{
			name:   "no text: the code location",
			report: types.SpecReport{LeafNodeLocation: types.CodeLocation{FileName: "a_test.go", LineNumber: 7}},
			want:   "a_test.go:7",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := invariantginkgo.SpecName(tc.report); got != tc.want {
				t.Errorf("SpecName = %q, want %q", got, tc.want)
			}
		})
	}

	long := invariantginkgo.SpecName(types.SpecReport{LeafNodeText: strings.Repeat("é", 3000)})
	if len(long) > 4096 || !utf8.ValidString(long) || !strings.HasPrefix(long, "éé") {
		t.Errorf("a long name is cut to %d bytes (valid UTF-8: %v), want at most 4096", len(long), utf8.ValidString(long))
	}
}

// An in-process suite (this test binary's only RunSpecs) with WithFailOnError and an
// unreachable agent: the spec passes, the suite fails in the report node.

// syncBuffer collects the helpers' log lines.
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

var inProcessLog syncBuffer

var _ = invariantginkgo.Attach(invariantginkgo.WithFailOnError(), invariantginkgo.WithLogOutput(&inProcessLog))

// inProcessReport is the suite report as a ReportAfterSuite defined after Attach's sees
// it (including Attach's report node).
var inProcessReport types.Report

var _ = ginkgo.ReportAfterSuite("capture the suite report", func(r ginkgo.Report) { inProcessReport = r })

var _ = ginkgo.Describe("An in-process suite", func() {
	ginkgo.It("passes although the agent is unreachable", func() {})
})

// failRecorder is the testing.T RunSpecs reports the suite's result to.
type failRecorder struct{ failed bool }

func (f *failRecorder) Fail() { f.failed = true }

func TestFailOnErrorFailsTheSuiteNotTheSpecs(t *testing.T) {
	g := gomega.NewWithT(t)
	addr := closedAddr(t)
	t.Setenv(invariantginkgo.EnvAddress, addr)
	t.Setenv(invariantginkgo.EnvArtifacts, t.TempDir())

	var suite failRecorder
	passed := ginkgo.RunSpecs(&suite, "In-process suite")

	g.Expect(passed).To(gomega.BeFalse())
	g.Expect(suite.failed).To(gomega.BeTrue())
	states := map[string]types.SpecState{}
	var failure string
	for _, spec := range inProcessReport.SpecReports {
		switch {
		case spec.LeafNodeType == types.NodeTypeIt:
			states[spec.FullText()] = spec.State
		case spec.LeafNodeType == types.NodeTypeReportAfterSuite && spec.LeafNodeText == "invariant-agent report":
			states[spec.LeafNodeText] = spec.State
			failure = spec.Failure.Message
		}
	}
	g.Expect(states).To(gomega.Equal(map[string]types.SpecState{
		"An in-process suite passes although the agent is unreachable": types.SpecStatePassed,
		"invariant-agent report": types.SpecStateFailed,
	}))
	g.Expect(failure).To(gomega.ContainSubstring("no invariant report"))
	g.Expect(failure).To(gomega.ContainSubstring(addr))
	g.Expect(strings.Count(inProcessLog.String(), "the suite goes on without it")).To(gomega.Equal(1), inProcessLog.String())
}
