// The target server of benches/peers.sh: one keep-alive HTTP/1.1 server on loopback that
// every tool probes, so all of them see the same targets and the probes they really make
// are counted in one place.
//
//	GET /metrics   about SERIES series of Prometheus text (counters and gauges whose
//	               values move on every scrape), like a busy component's /metrics
//	GET /stats     {"probes": N, "scrapes": M} so far (not counted)
//	GET /anything  200 "bench_ok 1\n" (a valid one-line metrics page, so a Prometheus
//	               scrape of it also succeeds); counted as a probe
//
// Standard library only: built with `go build target.go`, no module download.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

var probes, scrapes atomic.Int64

// metricsPage renders the /metrics body: families of 1,000 series each, labels shaped
// like an API server's request metrics (verb, resource, code), values that change per
// scrape so a scraper cannot short-cut unchanged samples.
func metricsPage(series, scrape int) []byte {
	var b bytes.Buffer
	const perFamily = 1000
	verbs := []string{"GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "DELETE", "APPLY"}
	codes := []string{"200", "201", "404", "409", "429", "500", "503"}
	for f := 0; f*perFamily < series; f++ {
		name := fmt.Sprintf("bench_requests_%d_total", f)
		kind := "counter"
		if f%2 == 1 {
			name = fmt.Sprintf("bench_inflight_%d", f)
			kind = "gauge"
		}
		fmt.Fprintf(&b, "# HELP %s Requests served by the bench target (family %d).\n# TYPE %s %s\n", name, f, name, kind)
		for i := 0; i < perFamily && f*perFamily+i < series; i++ {
			fmt.Fprintf(&b, "%s{verb=%q,resource=\"res%d\",code=%q,instance=\"bench-%d\"} %d\n",
				name, verbs[i%len(verbs)], i/len(verbs)%64, codes[i%len(codes)], f, (i+1)*(scrape+1))
		}
	}
	return b.Bytes()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	series := flag.Int("series", 10000, "series on /metrics")
	flag.Parse()

	mux := http.NewServeMux()
	ok := []byte("bench_ok 1\n")
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Header().Set("Content-Length", strconv.Itoa(len(ok)))
		w.Write(ok)
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		n := scrapes.Add(1)
		body := metricsPage(*series, int(n))
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "{\"probes\": %d, \"scrapes\": %d}\n", probes.Load(), scrapes.Load())
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("target: listen on %s: %v", *listen, err)
	}
	srv := &http.Server{Handler: mux, IdleTimeout: 5 * time.Minute, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.Serve(ln))
}
