package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeEndpoint is a probe target whose checks pass or fail on command.
type fakeEndpoint struct {
	failing atomic.Bool
	checks  atomic.Int64
	mu      sync.Mutex
	at      []time.Time
}

func (f *fakeEndpoint) probe(context.Context, string) error {
	f.checks.Add(1)
	f.mu.Lock()
	f.at = append(f.at, time.Now())
	f.mu.Unlock()
	if f.failing.Load() {
		return errors.New("status 503")
	}
	return nil
}

type recorder struct {
	mu      sync.Mutex
	events  []Event
	changes int
}

func (r *recorder) onEvent(e Event) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }
func (r *recorder) onChange()       { r.mu.Lock(); r.changes++; r.mu.Unlock() }

func (r *recorder) snapshot() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, e.From.String()+"→"+e.To.String())
	}
	return out, r.changes
}

func testConfig() Config {
	return Config{Protocol: HTTP, Path: "/healthz", Interval: time.Second, Timeout: 500 * time.Millisecond,
		HealthyThreshold: 2, UnhealthyThreshold: 3}
}

func TestThresholds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEndpoint{}
		rec := &recorder{}
		st := new(balancer.EndpointState)
		c := New(Options{Upstream: "api", Config: testConfig(), Probe: fe.probe, OnEvent: rec.onEvent, OnChange: rec.onChange})
		defer c.Stop()
		c.SetEndpoints(map[string]*balancer.EndpointState{"10.0.0.1:80": st})
		synctest.Wait() // the first check runs at once
		if h := st.Health(); h != balancer.HealthHealthy {
			t.Fatalf("after a first passed check: Health() = %v, want healthy", h)
		}

		fe.failing.Store(true)
		// Checks at t = 1s, 2s fail: still healthy. The third, at 3s, marks it unhealthy.
		for i, want := range []balancer.Health{balancer.HealthHealthy, balancer.HealthHealthy, balancer.HealthUnhealthy} {
			time.Sleep(time.Second)
			synctest.Wait()
			if h := st.Health(); h != want {
				t.Fatalf("after %d failed checks: Health() = %v, want %v", i+1, h, want)
			}
		}
		hs := st.HealthStatus()
		if !hs.Since.Equal(time.Now()) || hs.Detail != "3 failed check(s) in a row: status 503" {
			t.Errorf("HealthStatus = %+v, want since now, detail about 3 failed checks", hs)
		}
		fe.failing.Store(false)
		for i, want := range []balancer.Health{balancer.HealthUnhealthy, balancer.HealthHealthy} {
			time.Sleep(time.Second)
			synctest.Wait()
			if h := st.Health(); h != want {
				t.Fatalf("after %d passed checks: Health() = %v, want %v", i+1, h, want)
			}
		}
		events, changes := rec.snapshot()
		if got, want := strings.Join(events, ", "), "unknown→healthy, healthy→unhealthy, unhealthy→healthy"; got != want {
			t.Errorf("events = %s, want %s", got, want)
		}
		if changes != 2 {
			t.Errorf("OnChange calls = %d, want 2 (to and from unhealthy)", changes)
		}
		if n := fe.checks.Load(); n != 6 {
			t.Errorf("checks = %d, want 6", n)
		}
	})
}

func TestUnknownToUnhealthy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fe := &fakeEndpoint{}
		fe.failing.Store(true)
		st := new(balancer.EndpointState)
		c := New(Options{Upstream: "api", Config: testConfig(), Probe: fe.probe})
		defer c.Stop()
		c.SetEndpoints(map[string]*balancer.EndpointState{"10.0.0.1:80": st})
		time.Sleep(2 * time.Second) // checks at 0, 1s, 2s
		synctest.Wait()
		if h := st.Health(); h != balancer.HealthUnhealthy {
			t.Fatalf("Health() = %v after 3 failed checks, want unhealthy", h)
		}
	})
}

func TestTimeoutAndJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.Jitter = 300 * time.Millisecond
		cfg.UnhealthyThreshold = 1
		var mu sync.Mutex
		var starts []time.Time
		hang := func(ctx context.Context, _ string) error {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			<-ctx.Done() // never answers
			return ctx.Err()
		}
		st := new(balancer.EndpointState)
		c := New(Options{Upstream: "api", Config: cfg, Probe: hang})
		c.SetEndpoints(map[string]*balancer.EndpointState{"10.0.0.1:80": st})
		time.Sleep(20 * time.Second)
		synctest.Wait()
		c.Stop()
		mu.Lock()
		defer mu.Unlock()
		if len(starts) < 10 {
			t.Fatalf("%d checks in 20s, want at least 10", len(starts))
		}
		for i := 1; i < len(starts); i++ {
			gap := starts[i].Sub(starts[i-1])
			// timeout + interval + jitter in [0, 300ms]
			if gap < 1500*time.Millisecond || gap > 1800*time.Millisecond {
				t.Errorf("gap between checks %d and %d = %v, want 1.5s to 1.8s", i-1, i, gap)
			}
		}
		if st.HealthStatus() != nil {
			t.Errorf("HealthStatus after Stop = %+v, want nil", st.HealthStatus())
		}
	})
}

func TestTimeoutIsAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.UnhealthyThreshold = 1
		st := new(balancer.EndpointState)
		c := New(Options{Upstream: "api", Config: cfg, Probe: func(ctx context.Context, _ string) error {
			<-ctx.Done()
			return ctx.Err()
		}})
		defer c.Stop()
		c.SetEndpoints(map[string]*balancer.EndpointState{"10.0.0.1:80": st})
		time.Sleep(time.Second)
		synctest.Wait()
		if hs := st.HealthStatus(); hs == nil || hs.Health != balancer.HealthUnhealthy || hs.Detail != "1 failed check(s) in a row: timed out after 500ms" {
			t.Errorf("HealthStatus = %+v, want unhealthy after a timeout", hs)
		}
	})
}

func TestSetEndpoints(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		checked := map[string]int{}
		probe := func(_ context.Context, addr string) error {
			mu.Lock()
			checked[addr]++
			mu.Unlock()
			return nil
		}
		a, b, cst := new(balancer.EndpointState), new(balancer.EndpointState), new(balancer.EndpointState)
		c := New(Options{Upstream: "api", Config: testConfig(), Probe: probe})
		c.SetEndpoints(map[string]*balancer.EndpointState{"a:1": a, "b:1": b})
		synctest.Wait()
		c.SetEndpoints(map[string]*balancer.EndpointState{"b:1": b, "c:1": cst})
		time.Sleep(5 * time.Second)
		synctest.Wait()
		c.Stop()
		mu.Lock()
		defer mu.Unlock()
		if checked["a:1"] != 1 || checked["b:1"] != 6 || checked["c:1"] != 6 {
			t.Errorf("checks = %v, want a:1 once (then removed), b:1 and c:1 6 times", checked)
		}
		c.SetEndpoints(map[string]*balancer.EndpointState{"d:1": new(balancer.EndpointState)}) // after Stop: nothing starts
	})
}

func TestConfigEqual(t *testing.T) {
	a := testConfig()
	b := testConfig()
	if !a.Equal(b) {
		t.Error("Equal() = false for equal configs")
	}
	b.ExpectedStatuses = []StatusRange{{200, 200}}
	if a.Equal(b) {
		t.Error("Equal() = true for different expected statuses")
	}
	c := testConfig()
	c.Interval = 2 * time.Second
	if a.Equal(c) {
		t.Error("Equal() = true for different intervals")
	}
}

// probeOnce runs one real check of the configured protocol against addr.
func probeOnce(t *testing.T, cfg Config, addr string) error {
	t.Helper()
	c := New(Options{Upstream: "api", Config: cfg})
	defer c.Stop()
	probe, closeProbe := c.newProbe()
	defer closeProbe()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	return probe(ctx, addr)
}

func TestHTTPProbe(t *testing.T) {
	var status atomic.Int64
	var host, path, agent atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host.Store(r.Host)
		path.Store(r.URL.Path)
		agent.Store(r.UserAgent())
		if int(status.Load()) == http.StatusFound {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	tests := []struct {
		status   int
		expected []StatusRange
		wantErr  string
	}{
		{200, nil, ""},
		{204, nil, ""},
		{503, nil, "status 503"},
		{302, nil, "status 302"}, // redirects are judged, not followed
		{302, []StatusRange{{200, 399}}, ""},
		{404, []StatusRange{{200, 200}, {404, 404}}, ""},
		{201, []StatusRange{{200, 200}}, "status 201"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d %v", tc.status, tc.expected), func(t *testing.T) {
			status.Store(int64(tc.status))
			cfg := testConfig()
			cfg.ExpectedStatuses = tc.expected
			err := probeOnce(t, cfg, addr)
			if got := errString(err); got != tc.wantErr {
				t.Errorf("probe = %q, want %q", got, tc.wantErr)
			}
			if host.Load() != "api" || path.Load() != "/healthz" || agent.Load() != "ferry-health-check" {
				t.Errorf("request Host, path, User-Agent = %v, %v, %v; want api, /healthz, ferry-health-check", host.Load(), path.Load(), agent.Load())
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}))
		defer slow.Close()
		cfg := testConfig()
		cfg.Timeout = 100 * time.Millisecond
		if err := probeOnce(t, cfg, slow.Listener.Addr().String()); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("probe = %v, want a deadline error", err)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cfg := testConfig()
	cfg.Protocol = TCP
	if err := probeOnce(t, cfg, addr); err != nil {
		t.Errorf("probe of a listening port = %v, want nil", err)
	}
	ln.Close()
	if err := probeOnce(t, cfg, addr); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("probe of a closed port = %v, want connection refused", err)
	}
}

func TestGRPCProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	addr := ln.Addr().String()
	hs.SetServingStatus("api.v1.Users", healthpb.HealthCheckResponse_SERVING)
	tests := []struct {
		service string
		set     healthpb.HealthCheckResponse_ServingStatus
		wantErr string
	}{
		{"", healthpb.HealthCheckResponse_SERVING, ""},
		{"", healthpb.HealthCheckResponse_NOT_SERVING, "status NOT_SERVING"},
		{"api.v1.Users", healthpb.HealthCheckResponse_SERVING, ""},
		{"api.v1.Users", healthpb.HealthCheckResponse_NOT_SERVING, "status NOT_SERVING"},
		{"unknown.Service", healthpb.HealthCheckResponse_SERVING, "rpc error: code = NotFound desc = unknown service"},
	}
	for _, tc := range tests {
		t.Run(tc.service+"/"+tc.set.String(), func(t *testing.T) {
			if tc.service != "unknown.Service" {
				hs.SetServingStatus(tc.service, tc.set)
			}
			cfg := testConfig()
			cfg.Protocol = GRPC
			cfg.Service = tc.service
			if got := errString(probeOnce(t, cfg, addr)); got != tc.wantErr {
				t.Errorf("probe = %q, want %q", got, tc.wantErr)
			}
		})
	}
}

// TestRealChecksEndToEnd runs a Checker with its real HTTP probe against a server whose
// health flips, with short intervals.
func TestRealChecksEndToEnd(t *testing.T) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	cfg := testConfig()
	cfg.Interval = 20 * time.Millisecond
	cfg.UnhealthyThreshold = 2
	st := new(balancer.EndpointState)
	changed := make(chan struct{}, 16)
	c := New(Options{Upstream: "api", Config: cfg, OnChange: func() { changed <- struct{}{} }})
	defer c.Stop()
	c.SetEndpoints(map[string]*balancer.EndpointState{srv.Listener.Addr().String(): st})
	waitHealth := func(want balancer.Health) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for st.Health() != want {
			if time.Now().After(deadline) {
				t.Fatalf("Health() = %v, want %v", st.Health(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitHealth(balancer.HealthHealthy)
	failing.Store(true)
	waitHealth(balancer.HealthUnhealthy)
	if d := st.HealthStatus().Detail; d != "2 failed check(s) in a row: status 503" {
		t.Errorf("Detail = %q", d)
	}
	failing.Store(false)
	waitHealth(balancer.HealthHealthy)
	if len(changed) != 2 {
		t.Errorf("OnChange calls = %d, want 2", len(changed))
	}
}
