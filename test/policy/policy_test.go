package policy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// Rate limit of /api/limited on the server-side sidecar.
const (
	limitRate  = 20 // requests per second
	limitBurst = 10
)

// app is the local application behind the server-side sidecar: it counts the requests
// that reach it and keeps their paths.
type app struct {
	addr  string
	count atomic.Int64
	mu    sync.Mutex
	paths []string
}

func startApp(t *testing.T) *app {
	t.Helper()
	a := &app{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.count.Add(1)
		a.mu.Lock()
		a.paths = append(a.paths, r.URL.EscapedPath())
		a.mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return a
}

// seenPaths returns the paths the app has seen.
func (a *app) seenPaths() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.paths...)
}

// policyMesh is a server-side sidecar (service api, with a policy) in front of an app, and
// two client-side sidecars: frontend (allowed GET on /api) and batch (denied everywhere).
type policyMesh struct {
	app                *app
	server             *ferrytest.Process
	inbound            string
	frontend, batch    string // the client sidecars' outbound listeners for api
	frontendCerts, api ferrytest.Certs
}

func startPolicyMesh(t *testing.T) *policyMesh {
	t.Helper()
	p := ferrytest.NewPKI(t)
	m := &policyMesh{app: startApp(t), inbound: ferrytest.FreeAddr(t), frontend: ferrytest.FreeAddr(t), batch: ferrytest.FreeAddr(t)}
	m.api = p.Issue("api")
	m.frontendCerts = p.Issue("frontend")
	batchCerts := p.Issue("batch")
	serverAdmin := ferrytest.FreeAddr(t)
	m.server = startFerry(t, serverAdmin, fmt.Sprintf(`service: api
admin: {address: %s}
inbound: {address: %s, target: %s}
telemetry: {access_log: stdout}
policy:
  access:
    default: deny
    rules:
      - {name: frontend-get-api, from: [spiffe://mesh.local/svc/frontend], paths: [/api, /api/*], methods: [GET], action: allow}
      - {name: no-admin, from: [any], paths: [/admin, /admin/*], action: deny}
  rate_limits:
    - {name: limited, path_prefix: /api/limited, requests_per_second: %d, burst: %d}
%s`, serverAdmin, m.inbound, m.app.addr, limitRate, limitBurst, m.api.MTLSBlock()))
	for _, c := range []struct {
		name, addr string
		certs      ferrytest.Certs
	}{{"frontend", m.frontend, m.frontendCerts}, {"batch", m.batch, batchCerts}} {
		admin := ferrytest.FreeAddr(t)
		startFerry(t, admin, fmt.Sprintf(`service: %s
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams: [{name: api, endpoints: [%s]}]
%s`, c.name, admin, c.addr, m.inbound, c.certs.MTLSBlock()))
	}
	return m
}

// send makes a request and returns its status, Proxy-Status and Retry-After; a transport
// error fails the test.
func send(t *testing.T, c *http.Client, method, url string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Proxy-Status"), resp.Header.Get("Retry-After")
}

// rawTLS sends a request line as written (no client cleans its path) straight to the
// server-side sidecar over mTLS with c's certificate, and returns the status.
func rawTLS(t *testing.T, addr string, c ferrytest.Certs, method, target string) int {
	t.Helper()
	conf := &tls.Config{Certificates: []tls.Certificate{c.TLSCert(t)},
		InsecureSkipVerify: true} // the test checks the server's policy, not its identity
	d := &net.Dialer{Timeout: ioTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", addr, conf)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n", method, target); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestPolicy(t *testing.T) {
	m := startPolicyMesh(t)
	c := ferrytest.NewClient(t, 64, nil)
	// What the server-side sidecar should have counted, by rule and outcome.
	want := map[string]int{}
	var status403, status429, status400 int

	t.Run("identities", func(t *testing.T) {
		tests := []struct {
			name, via, method, path string
			status                  int
			rule                    string
		}{
			{"frontend GET /api", m.frontend, "GET", "/api", 200, "frontend-get-api"},
			{"frontend GET /api/x", m.frontend, "GET", "/api/x", 200, "frontend-get-api"},
			{"frontend POST /api/x", m.frontend, "POST", "/api/x", 403, "default"},
			{"frontend GET /admin", m.frontend, "GET", "/admin", 403, "no-admin"},
			{"frontend GET /other", m.frontend, "GET", "/other", 403, "default"},
			{"batch GET /api", m.batch, "GET", "/api", 403, "default"},
			{"batch POST /api/x", m.batch, "POST", "/api/x", 403, "default"},
			{"batch GET /other", m.batch, "GET", "/other", 403, "default"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := m.app.count.Load()
				status, ps, _ := send(t, c, tc.method, "http://"+tc.via+tc.path)
				if status != tc.status {
					t.Fatalf("%s %s = %d (%s), want %d", tc.method, tc.path, status, ps, tc.status)
				}
				arrived := m.app.count.Load() - before
				if tc.status == 200 {
					want[tc.rule+" allowed"]++
					if arrived != 1 {
						t.Errorf("app got %d requests, want 1", arrived)
					}
					return
				}
				want[tc.rule+" denied"]++
				status403++
				if arrived != 0 {
					t.Errorf("app got %d requests, want 0 (denied requests never arrive)", arrived)
				}
				if wantPS := `ferry; error=http_request_denied; details="rule ` + tc.rule + `"`; ps != wantPS {
					t.Errorf("Proxy-Status = %q, want %q", ps, wantPS)
				}
			})
		}
	})

	t.Run("normalization bypass attempts", func(t *testing.T) {
		tests := []struct {
			method, target string
			status         int
			rule           string // for a 403
		}{
			{"POST", "/%61pi", 403, "default"},
			{"POST", "/%61pi/x", 403, "default"},
			{"GET", "//api/../admin", 403, "no-admin"},
			{"GET", "/api/../admin", 403, "no-admin"},
			{"GET", "/%61dmin", 403, "no-admin"},
			{"GET", "/admin;x", 403, "no-admin"},
			{"GET", "/ADMIN/../admin/x", 403, "no-admin"},
			{"GET", "/admin%2f", 400, ""},
			{"GET", "/api/x%2f..%2f..%2fadmin", 400, ""},
		}
		for _, tc := range tests {
			t.Run(tc.method+" "+tc.target, func(t *testing.T) {
				before := m.app.count.Load()
				if got := rawTLS(t, m.inbound, m.frontendCerts, tc.method, tc.target); got != tc.status {
					t.Fatalf("%s %s = %d, want %d", tc.method, tc.target, got, tc.status)
				}
				if n := m.app.count.Load() - before; n != 0 {
					t.Errorf("app got %d requests, want 0", n)
				}
				if tc.status == 403 {
					want[tc.rule+" denied"]++
					status403++
				} else {
					status400++
				}
			})
		}
		// The allowed spelling of the same path reaches the app normalized.
		before := m.app.count.Load()
		if got := rawTLS(t, m.inbound, m.frontendCerts, "GET", "/%61pi//x/./y/../z"); got != 200 {
			t.Fatalf("GET /%%61pi//x/./y/../z = %d, want 200", got)
		}
		want["frontend-get-api allowed"]++
		if n := m.app.count.Load() - before; n != 1 {
			t.Fatalf("app got %d requests, want 1", n)
		}
		if paths := m.app.seenPaths(); paths[len(paths)-1] != "/api/x/z" {
			t.Errorf("app saw %q, want /api/x/z", paths[len(paths)-1])
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		// A bounded burst at 3× the limit for 3 s.
		const (
			sendRate = 3 * limitRate
			duration = 3 * time.Second
		)
		before := m.app.count.Load()
		tick := time.NewTicker(time.Second / sendRate)
		defer tick.Stop()
		var allowed, limited int
		var first, last time.Time
		retryAfter := true
		for n := 0; n < int(duration.Seconds()*sendRate); n++ {
			<-tick.C
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			last = now
			status, ps, ra := send(t, c, "GET", "http://"+m.frontend+"/api/limited")
			switch status {
			case 200:
				allowed++
			case 429:
				limited++
				if ra == "" || ps != `ferry; error=http_request_denied; details="rate limit limited"` {
					retryAfter = false
					t.Errorf("429: Retry-After %q, Proxy-Status %q", ra, ps)
				}
			default:
				t.Fatalf("GET /api/limited = %d (%s), want 200 or 429", status, ps)
			}
		}
		elapsed := last.Sub(first).Seconds()
		expect := limitRate*elapsed + limitBurst
		if math.Abs(float64(allowed)-expect) > 0.1*expect {
			t.Errorf("allowed %d of %d in %.2fs, want %.1f ± 10%%", allowed, allowed+limited, elapsed, expect)
		} else {
			t.Logf("allowed %d of %d in %.2fs (rate × time + burst = %.1f)", allowed, allowed+limited, elapsed, expect)
		}
		if limited == 0 || !retryAfter {
			t.Errorf("limited = %d, want 429s with Retry-After", limited)
		}
		if n := m.app.count.Load() - before; n != int64(allowed) {
			t.Errorf("app got %d requests, want %d (limited requests never arrive)", n, allowed)
		}
		want["frontend-get-api allowed"] += allowed + limited
		want["limited allowed"] += allowed
		want["limited limited"] += limited
		status429 += limited
	})

	t.Run("metrics", func(t *testing.T) {
		for key, n := range want {
			rule, outcome, _ := strings.Cut(key, " ")
			kind := "access"
			if rule == "limited" {
				kind = "rate_limit"
			}
			got, _ := m.server.Metric("ferry_policy_decisions_total", map[string]string{"kind": kind, "rule": rule, "outcome": outcome})
			if got != float64(n) {
				t.Errorf("ferry_policy_decisions_total{kind=%q,rule=%q,outcome=%q} = %v, want %d", kind, rule, outcome, got, n)
			}
		}
		for _, s := range []struct {
			code string
			n    int
		}{{"403", status403}, {"429", status429}, {"400", status400}} {
			got, _ := m.server.Metric("ferry_requests_total", map[string]string{"direction": "inbound", "upstream": "api", "code": s.code})
			if got != float64(s.n) {
				t.Errorf("ferry_requests_total{direction=inbound,upstream=api,code=%s} = %v, want %d", s.code, got, s.n)
			}
		}
	})
}
