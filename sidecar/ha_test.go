package sidecar

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// flaky is an HTTP backend whose answers (and /healthz) change on command.
type flaky struct {
	addr   string
	status atomic.Int64 // for every path but /healthz; 0 means 200
	health atomic.Int64 // for /healthz; 0 means 200
	hits   atomic.Int64
}

func startFlaky(t *testing.T) *flaky {
	t.Helper()
	f := &flaky{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if c := f.health.Load(); c != 0 {
				w.WriteHeader(int(c))
			}
			return
		}
		f.hits.Add(1)
		if c := f.status.Load(); c != 0 {
			w.WriteHeader(int(c))
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	f.addr = srv.Listener.Addr().String()
	return f
}

func clusterByName(t *testing.T, s *Sidecar, name string) ClusterStatus {
	t.Helper()
	// Through JSON, as /clusters serves it.
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/clusters", nil))
	var body struct {
		Upstreams []ClusterStatus `json:"upstreams"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("/clusters: %v\n%s", err, rec.Body)
	}
	for _, c := range body.Upstreams {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("/clusters has no upstream %q", name)
	return ClusterStatus{}
}

func endpointByAddr(t *testing.T, c ClusterStatus, addr string) EndpointStatus {
	t.Helper()
	for _, e := range c.Endpoints {
		if e.Address == addr {
			return e
		}
	}
	t.Fatalf("upstream %s has no endpoint %s", c.Name, addr)
	return EndpointStatus{}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOutlierAndHealthInClusters(t *testing.T) {
	good, bad, sick := startFlaky(t), startFlaky(t), startFlaky(t)
	bad.status.Store(500)
	sick.health.Store(503)
	out := freeAddr(t)
	m := telemetry.NewMetrics()
	s := New(Options{Metrics: m})
	drained(t, s)
	cfg := fmt.Sprintf(`service: web
outbound: [{upstream: api, address: %s}]
upstreams:
  - name: api
    endpoints: [%s, %s, %s]
    healthy_panic_threshold: 30
    outlier_detection: {consecutive_5xx: 3, base_ejection_time: 30s, max_ejection_percent: 100, interval: 100ms}
    health_check: {http: /healthz, interval: 20ms, interval_jitter: 0s, unhealthy_threshold: 2, healthy_threshold: 1}
`, out, good.addr, bad.addr, sick.addr)
	if err := s.Apply(parse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sick to fail its checks", func() bool {
		return endpointByAddr(t, clusterByName(t, s, "api"), sick.addr).Health == "unhealthy"
	})
	for range 20 {
		resp, err := http.Get("http://" + out + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	waitFor(t, "bad to be ejected", func() bool {
		return endpointByAddr(t, clusterByName(t, s, "api"), bad.addr).Outlier == "ejected"
	})
	c := clusterByName(t, s, "api")
	if c.Available != 1 || c.Panic {
		t.Errorf("available, panic = %d, %v; want 1, false", c.Available, c.Panic)
	}
	be := endpointByAddr(t, c, bad.addr)
	if be.Status != "ejected" || !ejectedFor(be.Reason, "consecutive_5xx", 3) || be.Ejections != 1 || be.EjectedUntil == nil ||
		be.EjectedUntil.Sub(*be.EjectedAt) != 30*time.Second || be.Health != "healthy" {
		t.Errorf("bad endpoint = %+v", be)
	}
	se := endpointByAddr(t, c, sick.addr)
	if se.Status != "unhealthy" || se.Outlier != "ok" || se.HealthDetail != "2 failed check(s) in a row: status 503" || se.HealthSince == nil {
		t.Errorf("sick endpoint = %+v", se)
	}
	if ge := endpointByAddr(t, c, good.addr); ge.Status != "available" || ge.Health != "healthy" || ge.Outlier != "ok" {
		t.Errorf("good endpoint = %+v", ge)
	}
	// Every request now goes to good.
	before := good.hits.Load()
	for range 10 {
		resp, err := http.Get("http://" + out + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("status = %d, want 200", resp.StatusCode)
		}
	}
	if got := good.hits.Load() - before; got != 10 {
		t.Errorf("good got %d of 10 requests", got)
	}
	// The success rate of the last interval is published.
	waitFor(t, "a success rate for good", func() bool {
		return endpointByAddr(t, clusterByName(t, s, "api"), good.addr).SuccessRate != nil ||
			endpointByAddr(t, clusterByName(t, s, "api"), good.addr).IntervalCalls == 0
	})
	if got := testutilCounter(t, m, "ferry_outlier_ejections_total", `upstream="api"`, `detector="consecutive_5xx"`); got != 1 {
		t.Errorf("ferry_outlier_ejections_total = %v, want 1", got)
	}
	if got := testutilCounter(t, m, "ferry_health_check_transitions_total", `upstream="api"`, `to="unhealthy"`); got != 1 {
		t.Errorf("ferry_health_check_transitions_total{to=unhealthy} = %v, want 1", got)
	}
	if got := testutilCounter(t, m, "ferry_upstream_available_endpoints", `upstream="api"`); got != 1 {
		t.Errorf("ferry_upstream_available_endpoints = %v, want 1", got)
	}

	// The status page shows the same.
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if page := rec.Body.String(); !strings.Contains(page, be.Reason) || !strings.Contains(page, `class="unhealthy"`) {
		t.Errorf("status page lacks the ejection reason or the unhealthy row")
	}

	// A reload without outlier detection and health checks puts everything back at once.
	noHA := fmt.Sprintf("service: web\noutbound: [{upstream: api, address: %s}]\nupstreams: [{name: api, endpoints: [%s, %s, %s]}]\n",
		out, good.addr, bad.addr, sick.addr)
	if err := s.Apply(parse(t, noHA)); err != nil {
		t.Fatal(err)
	}
	c = clusterByName(t, s, "api")
	for _, e := range c.Endpoints {
		if e.Status != "available" || e.Outlier != "off" || e.Health != "unchecked" {
			t.Errorf("after the reload: %+v, want available, outlier off, unchecked", e)
		}
	}
	if c.Available != 3 {
		t.Errorf("available after the reload = %d, want 3", c.Available)
	}
}

func TestPanicMode(t *testing.T) {
	a, b := startFlaky(t), startFlaky(t)
	a.health.Store(503)
	b.health.Store(503)
	out := freeAddr(t)
	s := New(Options{})
	drained(t, s)
	cfg := fmt.Sprintf(`service: web
outbound: [{upstream: api, address: %s}]
upstreams:
  - name: api
    endpoints: [%s, %s]
    health_check: {http: /healthz, interval: 20ms, interval_jitter: 0s, unhealthy_threshold: 1}
`, out, a.addr, b.addr)
	if err := s.Apply(parse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "panic mode", func() bool { return clusterByName(t, s, "api").Panic })
	// Both failing their checks: balance over both rather than fail everything.
	resp, err := http.Get("http://" + out + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("in panic mode: status %d, want 200", resp.StatusCode)
	}
	a.health.Store(0)
	waitFor(t, "the end of panic mode", func() bool { return !clusterByName(t, s, "api").Panic })
	before := b.hits.Load()
	for range 5 {
		resp, err := http.Get("http://" + out + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if b.hits.Load() != before {
		t.Errorf("unhealthy b still picked out of panic mode")
	}
}

func TestTCPConnectRetriesAndOutlier(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	dead := freeAddr(t)
	out := freeAddr(t)
	s := New(Options{})
	drained(t, s)
	cfg := fmt.Sprintf(`service: web
outbound: [{upstream: db, address: %s, protocol: tcp}]
upstreams:
  - name: db
    endpoints: [%s, %s]
    retries: {attempts: 1}
    outlier_detection: {consecutive_5xx: 2, max_ejection_percent: 50}
`, out, dead, ln.Addr())
	if err := s.Apply(parse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		c, err := net.Dial("tcp", out)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := fmt.Sprintf("ping %d\n", i)
		_, _ = io.WriteString(c, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Errorf("session %d: echo %q, %v; want %q (a connect retry reaches the live endpoint)", i, buf, err, msg)
		}
		c.Close()
	}
	waitFor(t, "the dead endpoint's ejection", func() bool {
		return endpointByAddr(t, clusterByName(t, s, "db"), dead).Outlier == "ejected"
	})
	if r := endpointByAddr(t, clusterByName(t, s, "db"), dead).Reason; !ejectedFor(r, "consecutive_5xx", 2) {
		t.Errorf("reason = %q", r)
	}
}

// ejectedFor reports whether an ejection reason is "DETECTOR: N in a row" with N at least
// threshold. The detector acts on a signal sent when a run reaches its threshold; calls
// finishing before it looks (a loaded machine) lengthen the run it reports.
func ejectedFor(reason, detector string, threshold int) bool {
	rest, ok := strings.CutPrefix(reason, detector+": ")
	if !ok {
		return false
	}
	n, ok := strings.CutSuffix(rest, " in a row")
	if !ok {
		return false
	}
	v, err := strconv.Atoi(n)
	return err == nil && v >= threshold
}

// testutilCounter returns the value of the metric whose name and labels contain all of
// want, from the registry's text exposition.
func testutilCounter(t *testing.T, m *telemetry.Metrics, name string, want ...string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		match := true
		for _, w := range want {
			if !strings.Contains(line, w) {
				match = false
			}
		}
		if match {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				return v
			}
		}
	}
	return -1
}
