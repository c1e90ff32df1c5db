package examplesuite_test

import (
	"net/http"
	"os"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// target is the base URL of the HTTP server the agent watches; POST /break and /fix
// make its /healthz fail and recover.
var target = os.Getenv("EXAMPLE_TARGET_URL")

var _ = SynchronizedBeforeSuite(func() []byte {
	time.Sleep(50 * time.Millisecond) // set up the cluster
	return nil
}, func([]byte) {})

var _ = Describe("[sig-example] Target", func() {
	It("answers while nothing disturbs it", Label("Fast"), func() {
		Expect(get("/healthz")).To(Equal(http.StatusOK))
	})

	It("is skipped at run time", func() {
		Skip("not today")
	})

	It("fails on purpose", Label("Failing"), func() {
		Fail("failing on purpose")
	})

	PIt("is pending")

	It("is broken for a while", Serial, Label("Disruptive"), func() {
		// Far enough (several sample intervals) from the previous spec that the
		// violation cannot be attributed to it.
		time.Sleep(500 * time.Millisecond)
		post("/break")
		time.Sleep(1500 * time.Millisecond)
		post("/fix")
		// Long enough for a good sample to close the violation before this spec ends.
		time.Sleep(time.Second)
	})
})

func get(path string) int {
	GinkgoHelper()
	resp, err := http.Get(target + path)
	Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	return resp.StatusCode
}

func post(path string) {
	GinkgoHelper()
	resp, err := http.Post(target+path, "text/plain", nil)
	Expect(err).NotTo(HaveOccurred())
	resp.Body.Close()
	Expect(resp.StatusCode).To(Equal(http.StatusOK))
}
