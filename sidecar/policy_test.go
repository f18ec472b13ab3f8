package sidecar

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// TestInboundPolicy applies a config with a policy block: denied requests get 403 and
// never reach the app, the connection rate limit closes connections on accept, and the
// per-rule counters are exported and survive a reload.
func TestInboundPolicy(t *testing.T) {
	var arrived atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		_, _ = io.WriteString(w, "app")
	}))
	t.Cleanup(srv.Close)
	app := srv.Listener.Addr().String()
	in := freeAddr(t)
	m := telemetry.NewMetrics()
	s := New(Options{Metrics: m})
	drained(t, s)
	cfg := func(extra string) string {
		return fmt.Sprintf(`service: api
admin: {address: %s}
inbound: {address: %s, target: %s}
policy:
  access:
    rules:
      - {name: no-admin, paths: [/admin, /admin/*], action: deny}
%s`, freeAddr(t), in, app, extra)
	}
	if err := s.Apply(parse(t, cfg(""))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	status := func(path string) int {
		t.Helper()
		resp, err := c.Get("http://" + in + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("/admin/x"); got != http.StatusForbidden {
		t.Errorf("GET /admin/x = %d, want 403", got)
	}
	if got := status("/ok"); got != http.StatusOK {
		t.Errorf("GET /ok = %d, want 200", got)
	}
	if arrived.Load() != 1 {
		t.Errorf("app got %d requests, want 1", arrived.Load())
	}
	want := `
# HELP ferry_policy_decisions_total Policy decisions per rule: kind is normalize, filter, access, rate_limit or connection_rate_limit; outcome is allowed, denied, dry_run_denied, limited or error (a failed call to the rate limit service).
# TYPE ferry_policy_decisions_total counter
ferry_policy_decisions_total{kind="access",outcome="allowed",rule="default"} 1
ferry_policy_decisions_total{kind="access",outcome="denied",rule="default"} 0
ferry_policy_decisions_total{kind="access",outcome="dry_run_denied",rule="default"} 0
ferry_policy_decisions_total{kind="access",outcome="allowed",rule="no-admin"} 0
ferry_policy_decisions_total{kind="access",outcome="denied",rule="no-admin"} 1
ferry_policy_decisions_total{kind="access",outcome="dry_run_denied",rule="no-admin"} 0
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "ferry_policy_decisions_total"); err != nil {
		t.Errorf("metrics: %v", err)
	}

	// A reload adds a connection rate limit with room for one connection; the counters
	// of the rules that carry over keep counting.
	if err := s.Apply(parse(t, cfg("  connection_rate_limit: {connections_per_second: 0.001, burst: 1}\n"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if got := status("/admin"); got != http.StatusForbidden {
		t.Errorf("GET /admin = %d, want 403", got)
	}
	conn, err := net.DialTimeout("tcp", in, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(conn, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("second connection: Read() = %d, %v; want it closed on accept", n, err)
	}
	if arrived.Load() != 1 {
		t.Errorf("app got %d requests, want 1", arrived.Load())
	}
	if got := policyValue(t, m, "access", "no-admin", "denied"); got != 2 {
		t.Errorf(`ferry_policy_decisions_total{rule="no-admin",outcome="denied"} = %v, want 2`, got)
	}
	if got := policyValue(t, m, "connection_rate_limit", "connection_rate_limit", "limited"); got != 1 {
		t.Errorf(`ferry_policy_decisions_total{kind="connection_rate_limit",outcome="limited"} = %v, want 1`, got)
	}
}

// policyValue returns the value of ferry_policy_decisions_total with these labels.
func policyValue(t *testing.T, m *telemetry.Metrics, kind, rule, outcome string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ferry_policy_decisions_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == kind && labels["rule"] == rule && labels["outcome"] == outcome {
				return mt.GetCounter().GetValue()
			}
		}
	}
	return 0
}
