package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry/jaegertest"
	"github.com/ferrymesh/ferry/test/ferrytest"
)

// routeBackend is a backend for the route tests: it names itself in X-Backend, reports
// the path, query and the X-Route and X-Drop headers it received in the body, always sends
// an X-Backend-Drop header, and waits a second on /slow.
type routeBackend struct {
	addr     string
	requests atomic.Int64
}

func startRouteBackend(t *testing.T, name string) *routeBackend {
	t.Helper()
	b := &routeBackend{}
	b.addr = serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.requests.Add(1)
		if r.URL.Path == "/slow" {
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Backend-Drop", "from the backend")
		fmt.Fprintf(w, "path=%s query=%s x-route=%s x-drop=%s", r.URL.EscapedPath(), r.URL.RawQuery,
			r.Header.Get("X-Route"), r.Header.Get("X-Drop"))
	}))
	return b
}

// TestRoutes runs a ferry process whose outbound listeners route by path to two upstreams
// (one named only by routes), split traffic 80/20, rewrite paths and headers, answer
// redirects and fixed responses themselves and time out by route, and checks the routes in
// /metrics, the access log and /config_dump.
func TestRoutes(t *testing.T) {
	ferrytest.CheckLeaks(t)
	web, adm := startRouteBackend(t, "web"), startRouteBackend(t, "adm")
	dir := t.TempDir()
	admin, routed, only := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	accessLog := filepath.Join(dir, "access.log")
	cfg := ferrytest.WriteFile(t, dir, "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
telemetry: {access_log: %s}
outbound:
  - address: %s
    upstream: web
    routes:
      - {name: admin, match: {prefix: /admin/}, upstream: adm}
      - name: canary
        match: {prefix: /canary/}
        split: [{upstream: web, weight: 80}, {upstream: adm, weight: 20}]
      - name: api
        match: {prefix: /api/}
        upstream: adm
        prefix_rewrite: /v2/
        request_headers: {set: {x-route: api}, remove: [x-drop]}
        response_headers: {add: {x-routed: "yes"}, remove: [x-backend-drop]}
      - {name: old, match: {prefix: /old/}, redirect: {prefix_rewrite: /new/, code: 308}}
      - {name: gone, match: {path: /gone}, response: {status: 410, body: "gone\n"}}
      - {name: slow, match: {path: /slow}, upstream: web, timeout: 100ms}
  - address: %s
    routes:
      - {name: only-admin, match: {prefix: /admin/}, upstream: adm}
upstreams:
  - {name: web, endpoints: [%s]}
  - {name: adm, endpoints: [%s]}
`, admin, accessLog, routed, only, web.addr, adm.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	tests := []struct {
		name, addr, target string
		header             http.Header
		status             int
		backend            string            // "" when Ferry answers itself
		body               string            // the whole body
		respHeader         map[string]string // "" for absent
	}{
		{name: "default upstream", addr: routed, target: "/other?q=1", status: 200, backend: "web",
			body: "path=/other query=q=1 x-route= x-drop="},
		{name: "prefix route to an upstream only routes name", addr: routed, target: "/admin/users", status: 200, backend: "adm",
			body: "path=/admin/users query= x-route= x-drop="},
		{name: "an encoded path takes the same route", addr: routed, target: "/a%64min/users", status: 200, backend: "adm",
			body: "path=/admin/users query= x-route= x-drop="},
		{name: "prefix rewrite and header changes", addr: routed, target: "/api/items?id=7",
			header: http.Header{"X-Drop": {"secret"}, "X-Route": {"from the client"}}, status: 200, backend: "adm",
			body: "path=/v2/items query=id=7 x-route=api x-drop=", respHeader: map[string]string{"X-Routed": "yes", "X-Backend-Drop": ""}},
		{name: "redirect", addr: routed, target: "/old/page?x=1", status: 308,
			respHeader: map[string]string{"Location": "http://shop.example/new/page?x=1"}},
		{name: "fixed response", addr: routed, target: "/gone", status: 410, body: "gone\n",
			respHeader: map[string]string{"Proxy-Status": "", "Content-Type": "text/plain; charset=utf-8"}},
		{name: "route timeout", addr: routed, target: "/slow", status: 504, backend: "web",
			respHeader: map[string]string{"Proxy-Status": `ferry; error=http_response_timeout; details="no response headers within request_timeout"`}},
		{name: "no route and no default upstream", addr: only, target: "/other", status: 404,
			respHeader: map[string]string{"Proxy-Status": `ferry; error=destination_not_found; details="no route"`}},
		{name: "routes-only listener", addr: only, target: "/admin/x", status: 200, backend: "adm",
			body: "path=/admin/x query= x-route= x-drop="},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			webBefore, admBefore := web.requests.Load(), adm.requests.Load()
			header := http.Header{"Host": {"shop.example"}}
			for k, v := range tc.header {
				header[k] = v
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+tc.addr+tc.target, nil)
			req.Header = header
			req.Host = "shop.example"
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.target, err)
			}
			r := readResponse(t, resp)
			if r.status != tc.status {
				t.Fatalf("GET %s = %d %q (Proxy-Status %q), want %d", tc.target, r.status, r.body, r.header.Get("Proxy-Status"), tc.status)
			}
			if tc.body != "" && r.body != tc.body {
				t.Errorf("GET %s: body %q, want %q", tc.target, r.body, tc.body)
			}
			if tc.backend != "" && tc.status == 200 && backendOf(r) != tc.backend {
				t.Errorf("GET %s: answered by %q, want %q", tc.target, backendOf(r), tc.backend)
			}
			for k, v := range tc.respHeader {
				if got := r.header.Get(k); got != v {
					t.Errorf("GET %s: response header %s = %q, want %q", tc.target, k, got, v)
				}
			}
			webGot, admGot := web.requests.Load()-webBefore, adm.requests.Load()-admBefore
			if webGot != b2i(tc.backend == "web") || admGot != b2i(tc.backend == "adm") {
				t.Errorf("GET %s reached web %d times and adm %d times, want only %q once", tc.target, webGot, admGot, tc.backend)
			}
		})
	}

	t.Run("split_80_20", func(t *testing.T) {
		const n = 500
		counts := map[string]int{}
		for i := range n {
			r := do(t, client, http.MethodGet, "http://"+routed+"/canary/"+strconv.Itoa(i), nil, "")
			if r.status != http.StatusOK {
				t.Fatalf("request %d: status %d", i, r.status)
			}
			counts[backendOf(r)]++
		}
		// adm should take 20%: 100 of 500, with a standard deviation of
		// sqrt(500 × 0.2 × 0.8) ≈ 8.9. ±40 is ±4.5σ: a false failure once in ~150,000 runs.
		if counts["web"]+counts["adm"] != n || counts["adm"] < 60 || counts["adm"] > 140 {
			t.Errorf("split over %d requests = %v, want adm in [60, 140] (20%% ± 40) and the rest web", n, counts)
		}
		labels := map[string]string{"direction": "outbound", "upstream": "adm", "route": "canary", "code": "200"}
		var got float64
		ferrytest.Eventually(t, 5*time.Second, func() bool {
			got, _ = f.Metric("ferry_requests_total", labels)
			return got == float64(counts["adm"])
		}, func() string {
			return fmt.Sprintf("ferry_requests_total%v = %v, want %d", labels, got, counts["adm"])
		})
	})

	t.Run("metrics", func(t *testing.T) {
		for _, c := range []struct {
			upstream, route, code string
			want                  float64
		}{
			{"web", "", "200", 1},
			{"adm", "admin", "200", 2},
			{"adm", "api", "200", 1},
			{"web", "old", "308", 1},
			{"web", "gone", "410", 1},
			{"web", "slow", "504", 1},
			{"", "", "404", 1},
			{"adm", "only-admin", "200", 1},
		} {
			labels := map[string]string{"direction": "outbound", "upstream": c.upstream, "route": c.route, "code": c.code}
			var got float64
			ferrytest.Eventually(t, 5*time.Second, func() bool {
				got, _ = f.Metric("ferry_requests_total", labels)
				return got == c.want
			}, func() string { return fmt.Sprintf("ferry_requests_total%v = %v, want %v", labels, got, c.want) })
		}
	})

	t.Run("access_log", func(t *testing.T) {
		want := map[string]bool{"admin 200": false, "api 200": false, "old 308": false, "gone 410": false,
			"slow 504": false, "only-admin 200": false, " 404": false, " 200": false}
		ferrytest.Eventually(t, 5*time.Second, func() bool {
			data, err := os.ReadFile(accessLog)
			if err != nil {
				return false
			}
			for _, line := range lines(string(data)) {
				var rec struct {
					Route  string `json:"route"`
					Status int    `json:"status"`
				}
				if json.Unmarshal([]byte(line), &rec) == nil {
					if _, ok := want[rec.Route+" "+strconv.Itoa(rec.Status)]; ok {
						want[rec.Route+" "+strconv.Itoa(rec.Status)] = true
					}
				}
			}
			for _, seen := range want {
				if !seen {
					return false
				}
			}
			return true
		}, func() string { return fmt.Sprintf("access log records by route and status: %v, want all seen", want) })
	})

	t.Run("config_dump", func(t *testing.T) {
		var dump struct {
			Config struct {
				Outbound []struct {
					Routes []struct {
						Name string `json:"name"`
					} `json:"routes"`
				} `json:"outbound"`
			} `json:"config"`
		}
		getJSON(t, f.AdminURL("/config_dump"), &dump)
		var names []string
		for _, o := range dump.Config.Outbound {
			for _, r := range o.Routes {
				names = append(names, r.Name)
			}
		}
		if got := strings.Join(names, ","); got != "admin,canary,api,old,gone,slow,only-admin" {
			t.Errorf("/config_dump route names = %q, want admin,canary,api,old,gone,slow,only-admin", got)
		}
	})
}

// TestInboundRoutes runs a ferry process whose inbound listener routes: to the local
// application with a prefix rewrite and a route timeout, to an upstream (ingress-style),
// and with a fixed response, paths matched without case as the policy block says.
func TestInboundRoutes(t *testing.T) {
	ferrytest.CheckLeaks(t)
	app, adm := startRouteBackend(t, "app"), startRouteBackend(t, "adm")
	dir := t.TempDir()
	admin, in := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, dir, "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
inbound:
  address: %s
  target: %s
  routes:
    - {name: v1, match: {prefix: /v1/}, prefix_rewrite: /, request_headers: {set: {x-route: v1}}}
    - {name: ingress, match: {prefix: /adm/}, upstream: adm}
    - {name: secret, match: {path: /secret}, response: {status: 403, body: "no\n"}}
    - {name: slow, match: {path: /slow}, timeout: 100ms}
upstreams:
  - {name: adm, endpoints: [%s]}
policy:
  normalize: {case_insensitive: true}
`, admin, in, app.addr, adm.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)
	tests := []struct {
		target  string
		status  int
		backend string
		body    string
		route   string
	}{
		{"/v1/items", 200, "app", "path=/items query= x-route=v1 x-drop=", "v1"},
		{"/V1/items", 200, "app", "path=/items query= x-route=v1 x-drop=", "v1"},
		{"/adm/x", 200, "adm", "path=/adm/x query= x-route= x-drop=", "ingress"},
		{"/Secret", 403, "", "no\n", "secret"},
		{"/slow", 504, "app", "", "slow"},
		{"/other", 200, "app", "path=/other query= x-route= x-drop=", ""},
	}
	for _, tc := range tests {
		t.Run(strings.TrimPrefix(tc.target, "/"), func(t *testing.T) {
			appBefore, admBefore := app.requests.Load(), adm.requests.Load()
			r := do(t, client, http.MethodGet, "http://"+in+tc.target, nil, "")
			if r.status != tc.status || tc.body != "" && r.body != tc.body {
				t.Fatalf("GET %s = %d %q (Proxy-Status %q), want %d %q", tc.target, r.status, r.body, r.header.Get("Proxy-Status"), tc.status, tc.body)
			}
			appGot, admGot := app.requests.Load()-appBefore, adm.requests.Load()-admBefore
			if appGot != b2i(tc.backend == "app") || admGot != b2i(tc.backend == "adm") {
				t.Errorf("GET %s reached app %d times and adm %d times, want only %q once", tc.target, appGot, admGot, tc.backend)
			}
			upstream := "e2e"
			if tc.backend == "adm" {
				upstream = "adm"
			}
			labels := map[string]string{"direction": "inbound", "upstream": upstream, "route": tc.route, "code": strconv.Itoa(tc.status)}
			var got float64
			ferrytest.Eventually(t, 5*time.Second, func() bool {
				got, _ = f.Metric("ferry_requests_total", labels)
				return got >= 1
			}, func() string { return fmt.Sprintf("ferry_requests_total%v = %v, want at least 1", labels, got) })
		})
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// readResponse reads resp to its end.
func readResponse(t *testing.T, resp *http.Response) response {
	t.Helper()
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return response{status: resp.StatusCode, header: resp.Header, body: sb.String(), proto: resp.Proto}
}

// TestValidateRoutes checks that `ferry validate` reports route problems at their lines.
func TestValidateRoutes(t *testing.T) {
	ferrytest.CheckLeaks(t)
	dir := t.TempDir()
	bad := ferrytest.WriteFile(t, dir, "routes.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - address: %s
    routes:
      - {name: a, match: {prefix: /a/}, upstream: nope}
      - {name: b, match: {regex: "/b/[0-9+"}, upstream: api}
  - address: %s
    protocol: tcp
    upstream: api
    routes: [{upstream: api}]
upstreams:
  - {name: api, endpoints: [127.0.0.1:9]}
`, ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)))
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, ferryBin, "validate", "--config", bad).CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("ferry validate: %v, want exit code 1\n%s", err, out)
	}
	for _, want := range []string{
		bad + `:6: outbound[0].routes[0].upstream: unknown upstream "nope"`,
		bad + `:7: outbound[0].routes[1].match.regex: invalid regular expression`,
		bad + `:11: outbound[1].routes: routes apply only to http listeners`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ferry validate output lacks %q:\n%s", want, out)
		}
	}
	if n := countLines(string(out), bad+":"); n != 3 {
		t.Errorf("%d problem lines, want 3:\n%s", n, out)
	}
}

// TestRouteSpans checks that server spans name the route that took the request
// (ferry.route) and, for a route to another upstream than the listener's, that upstream.
func TestRouteSpans(t *testing.T) {
	ferrytest.CheckLeaks(t)
	j := jaegertest.Start(t)
	web, adm := startRouteBackend(t, "web"), startRouteBackend(t, "adm")
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: routes-spans
admin: {address: %s}
outbound:
  - address: %s
    upstream: web
    routes:
      - {name: admin, match: {prefix: /admin/}, upstream: adm}
      - {name: gone, match: {path: /gone}, response: {status: 410}}
upstreams:
  - {name: web, endpoints: [%s]}
  - {name: adm, endpoints: [%s]}
telemetry:
  tracing: {otlp_endpoint: %s, sample_ratio: 1.0, batch_timeout: 100ms}
`, admin, out, web.addr, adm.addr, j.OTLPGRPCAddr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)
	for i, tc := range []struct {
		target, route, upstream string
		status, spans           int
	}{
		{"/admin/x", "admin", "adm", 200, 2},
		{"/gone", "gone", "web", 410, 1},
		{"/other", "", "web", 200, 2},
	} {
		t.Run(strings.TrimPrefix(tc.target, "/"), func(t *testing.T) {
			traceID := fmt.Sprintf("%032x", 0xf00d0000+i)
			r := do(t, client, http.MethodGet, "http://"+out+tc.target,
				http.Header{"Traceparent": {"00-" + traceID + "-00000000000000a1-01"}}, "")
			if r.status != tc.status {
				t.Fatalf("GET %s = %d, want %d", tc.target, r.status, tc.status)
			}
			tr := j.WaitTrace(t, traceID, tc.spans, 30*time.Second)
			var server *jaegertest.Span
			for i := range tr.Spans {
				if tr.Spans[i].TagString("span.kind") == "server" {
					server = &tr.Spans[i]
				}
			}
			if server == nil {
				t.Fatalf("trace %s has no server span: %+v", traceID, tr.Spans)
			}
			if got := server.TagString("ferry.route"); got != tc.route {
				t.Errorf("server span ferry.route = %q, want %q", got, tc.route)
			}
			if got := server.TagString("ferry.upstream"); got != tc.upstream {
				t.Errorf("server span ferry.upstream = %q, want %q", got, tc.upstream)
			}
		})
	}
}
