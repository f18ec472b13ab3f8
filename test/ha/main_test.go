// Package ha holds the end-to-end tests of high availability: outlier detection, active
// health checks, retries with budgets and circuit breaking. They build the real ferry
// binary once, run it as a child process with config files written to a temporary
// directory, and talk to it and to backends that fail on command, all on 127.0.0.1.
// Every wait is bounded.
package ha

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

const (
	// ioTimeout bounds every network operation and HTTP request of the tests.
	ioTimeout = ferrytest.IOTimeout
	// waitTimeout bounds the waits for a state change (an ejection, a health transition).
	waitTimeout = 20 * time.Second
)

var (
	// ferryBin and backendBin are built by TestMain.
	ferryBin, backendBin string
)

func TestMain(m *testing.M) {
	os.Exit(ferrytest.Main(m, "ha",
		ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"},
		ferrytest.Build{Out: &backendBin, Pkg: "./test/ha/testdata/backend"}))
}

// ferry is one running ferry process.
type ferry struct {
	*ferrytest.Process
	t *testing.T
}

// startFerry writes config (which must set admin.address to admin) and runs ferry on it
// until the test ends (SIGTERM, then SIGKILL after 10s); it returns once /ready answers
// 200.
func startFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", config)
	f := &ferry{Process: ferrytest.StartWith(t, ferrytest.Options{Grace: 10 * time.Second}, ferryBin, cfg, admin), t: t}
	f.WaitReady()
	return f
}

// logLines returns the lines of ferry's log that contain every one of subs.
func (f *ferry) logLines(subs ...string) []string {
	var out []string
	for _, l := range strings.Split(f.Output(), "\n") {
		match := true
		for _, s := range subs {
			if !strings.Contains(l, s) {
				match = false
				break
			}
		}
		if match && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// cluster is one upstream of /clusters, as the tests read it.
type cluster struct {
	Name      string     `json:"name"`
	Available int        `json:"available_endpoints"`
	Panic     bool       `json:"panic"`
	Endpoints []endpoint `json:"endpoints"`
}

type endpoint struct {
	Address        string     `json:"address"`
	Status         string     `json:"status"`
	Health         string     `json:"health"`
	HealthDetail   string     `json:"health_detail"`
	HealthSince    *time.Time `json:"health_since"`
	Outlier        string     `json:"outlier"`
	Ejections      uint64     `json:"ejections"`
	EjectedAt      *time.Time `json:"ejected_at"`
	EjectedUntil   *time.Time `json:"ejected_until"`
	Reason         string     `json:"reason"`
	SuccessRate    *float64   `json:"success_rate"`
	IntervalCalls  uint64     `json:"interval_calls"`
	ActiveRequests int64      `json:"active_requests"`
}

// cluster returns upstream name from /clusters.
func (f *ferry) cluster(name string) cluster {
	f.t.Helper()
	c := newClient(f.t)
	resp, err := c.Get(f.AdminURL("/clusters"))
	if err != nil {
		f.t.Fatalf("GET /clusters: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Upstreams []cluster `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		f.t.Fatalf("GET /clusters: %v", err)
	}
	for _, u := range body.Upstreams {
		if u.Name == name {
			return u
		}
	}
	f.t.Fatalf("/clusters has no upstream %q", name)
	return cluster{}
}

// endpoint returns one endpoint of upstream name from /clusters.
func (f *ferry) endpoint(name, addr string) endpoint {
	f.t.Helper()
	for _, e := range f.cluster(name).Endpoints {
		if e.Address == addr {
			return e
		}
	}
	f.t.Fatalf("upstream %s has no endpoint %s", name, addr)
	return endpoint{}
}

// eventually polls cond every 10ms until it holds, or fails t after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ferrytest.EventuallyEvery(t, waitTimeout, 10*time.Millisecond, cond, func() string { return "waiting for " + what })
}

// newClient returns an HTTP/1.1 client of its own, closed at cleanup.
func newClient(t *testing.T) *http.Client { return ferrytest.NewClient(t, 64, nil) }

// get sends GET url and returns the status, the body and the Proxy-Status header; a
// transport error is status 0.
func get(c *http.Client, url string) (int, string, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Proxy-Status")
}

// load sends n GETs to url from workers goroutines and returns how many got 200, and the
// first few failures.
func load(c *http.Client, url string, n, workers int) (okCount int, failures []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range workers {
		wg.Go(func() {
			for range next {
				code, body, ps := get(c, url)
				mu.Lock()
				if code == http.StatusOK {
					okCount++
				} else if len(failures) < 5 {
					failures = append(failures, fmt.Sprintf("%d %q %s", code, strings.TrimSpace(body), ps))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return okCount, failures
}
