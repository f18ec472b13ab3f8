package l7

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// echoBackend answers with its name, the path, query and a few headers it received, and
// counts its requests. Paths under /slow wait 300ms; /flaky answers 503 on odd requests.
func echoBackend(t *testing.T, name string, hits *atomic.Int64) string {
	t.Helper()
	var flaky atomic.Int64
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if strings.HasPrefix(r.URL.Path, "/slow") {
			select {
			case <-time.After(300 * time.Millisecond):
			case <-r.Context().Done():
			}
		}
		if strings.HasPrefix(r.URL.Path, "/flaky") && flaky.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("X-Backend-Header", "kept")
		w.Header().Set("X-Backend-Drop", "dropped")
		fmt.Fprintf(w, "%s %s?%s route=%s drop=%s", name, r.URL.EscapedPath(), r.URL.RawQuery,
			r.Header.Get("X-Route"), r.Header.Get("X-Drop"))
	}))
}

// routedProxy serves a Handler with routes over backends a and b (a the default upstream
// when withDefault) and returns its address, metrics and access log file.
func routedProxy(t *testing.T, a, b string, withDefault bool, routes []route.Route) (string, *telemetry.Metrics, string) {
	t.Helper()
	table, err := route.Compile(routes, route.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := telemetry.NewMetrics()
	logFile := filepath.Join(t.TempDir(), "access.log")
	al, err := telemetry.OpenAccessLog(logFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = al.Close() })
	ups := map[string]Upstream{"a": upstreamOf(a), "b": upstreamOf(b)}
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
	t.Cleanup(tr.CloseIdleConnections)
	addr := startProxy(t, ups["a"], func(o *Options) {
		o.AccessLog = al
		if withDefault {
			o.Name, o.Metrics = "a", m.HTTP(telemetry.Outbound, "a")
		} else {
			o.Name, o.Upstream, o.Metrics = "", nil, m.HTTP(telemetry.Outbound, "")
		}
		o.Routes = &Routing{
			Table: table,
			Target: func(e *route.Entry, up string) Target {
				tg := Target{Name: up, Upstream: ups[up], Transport: tr, RequestTimeout: 5 * time.Second}
				if d := e.Timeout(); d > 0 {
					tg.RequestTimeout = d
				}
				if r := e.Retries(); r != nil {
					on, err := ParseRetryOn(r.On)
					if err != nil {
						t.Fatal(err)
					}
					tg.Retry = &RetryPolicy{Retries: r.Attempts, On: on, PerTryTimeout: time.Duration(r.PerTryTimeout)}
				}
				return tg
			},
			Metrics: func(up, rt string) *telemetry.HTTPMetrics { return m.HTTPRoute(telemetry.Outbound, up, rt) },
		}
	})
	return addr, m, logFile
}

// counterValue is the value of the counter name with the given labels in m, 0 if absent.
func counterValue(t *testing.T, m *telemetry.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range mt.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			return metricValue(mt)
		}
	}
	return 0
}

func metricValue(mt *dto.Metric) float64 {
	switch {
	case mt.GetCounter() != nil:
		return mt.GetCounter().GetValue()
	case mt.GetHistogram() != nil:
		return float64(mt.GetHistogram().GetSampleCount())
	}
	return mt.GetGauge().GetValue()
}

func TestRoutedHandler(t *testing.T) {
	var hitsA, hitsB atomic.Int64
	a, b := echoBackend(t, "A", &hitsA), echoBackend(t, "B", &hitsB)
	proxy, m, logFile := routedProxy(t, a, b, true, []route.Route{
		{Name: "admin", Match: route.Match{Prefix: "/admin/"}, Upstream: "b"},
		{Name: "api", Match: route.Match{Prefix: "/api/"}, Upstream: "b", PrefixRewrite: "/v2/",
			RequestHeaders:  route.HeaderOps{Set: map[string]string{"x-route": "api"}, Remove: []string{"x-drop"}},
			ResponseHeaders: route.HeaderOps{Add: map[string]string{"x-routed": "yes"}, Remove: []string{"x-backend-drop"}}},
		{Name: "old", Match: route.Match{Prefix: "/old/"}, Redirect: &route.Redirect{PrefixRewrite: "/new/", Code: 308}},
		{Name: "gone", Match: route.Match{Path: "/gone"}, Response: &route.FixedResponse{Status: 410, Body: "gone\n"},
			ResponseHeaders: route.HeaderOps{Set: map[string]string{"x-fixed": "1"}}},
		{Name: "slow", Match: route.Match{Prefix: "/slow"}, Upstream: "b", Timeout: policy.Duration(50 * time.Millisecond)},
		{Name: "flaky", Match: route.Match{Prefix: "/flaky"}, Upstream: "b",
			Retries: &route.Retries{Attempts: 1, On: []string{"5xx"}}},
	})

	tests := []struct {
		name, target string
		header       map[string]string
		status       int
		body         string            // prefix of the body
		respHeader   map[string]string // response headers ("" for absent)
		backend      string            // "A", "B" or "" (answered by Ferry)
	}{
		{name: "default upstream", target: "/other?q=1", status: 200, body: "A /other?q=1 route= drop=", backend: "A"},
		{name: "prefix route", target: "/admin/users", status: 200, body: "B /admin/users? route=", backend: "B"},
		{name: "encoded path cannot bypass the route", target: "/a%64min/users", status: 200, body: "B /admin/users?", backend: "B"},
		{name: "dot segments cannot bypass the route", target: "/x/../admin/users", status: 200, body: "B /admin/users?", backend: "B"},
		{name: "prefix rewrite and header ops", target: "/api/items?id=7", header: map[string]string{"X-Drop": "secret", "X-Route": "client"},
			status: 200, body: "B /v2/items?id=7 route=api drop=", backend: "B",
			respHeader: map[string]string{"X-Routed": "yes", "X-Backend-Header": "kept", "X-Backend-Drop": ""}},
		{name: "redirect", target: "/old/page?x=1", status: 308, respHeader: map[string]string{"Location": "http://shop.local/new/page?x=1"}},
		{name: "fixed response", target: "/gone", status: 410, body: "gone\n", respHeader: map[string]string{"X-Fixed": "1", "Proxy-Status": ""}},
		{name: "route timeout", target: "/slow", status: 504, respHeader: map[string]string{"X-Routed": "",
			"Proxy-Status": `ferry; error=http_response_timeout; details="no response headers within request_timeout"`}, backend: "B"},
		{name: "route retries", target: "/flaky", status: 200, body: "B /flaky?", backend: "B"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			beforeA, beforeB := hitsA.Load(), hitsB.Load()
			req, _ := http.NewRequest("GET", "http://"+proxy+tc.target, nil)
			req.Host = "shop.local"
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			c := client(false)
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.HasPrefix(string(body), tc.body) {
				t.Fatalf("GET %s = %d %q (%s), want %d %q", tc.target, resp.StatusCode, body, resp.Header.Get("Proxy-Status"), tc.status, tc.body)
			}
			for k, v := range tc.respHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("response header %s = %q, want %q", k, got, v)
				}
			}
			gotA, gotB := hitsA.Load() > beforeA, hitsB.Load() > beforeB
			if gotA != (tc.backend == "A") || gotB != (tc.backend == "B") {
				t.Errorf("backends reached: A %v, B %v; want %q", gotA, gotB, tc.backend)
			}
		})
	}

	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"upstream": "a", "route": "", "code": "200"}, 1},
		{map[string]string{"upstream": "b", "route": "admin", "code": "200"}, 3},
		{map[string]string{"upstream": "b", "route": "api", "code": "200"}, 1},
		{map[string]string{"upstream": "a", "route": "old", "code": "308"}, 1},
		{map[string]string{"upstream": "a", "route": "gone", "code": "410"}, 1},
		{map[string]string{"upstream": "b", "route": "slow", "code": "504"}, 1},
		{map[string]string{"upstream": "b", "route": "flaky", "code": "200"}, 1},
	} {
		if got := counterValue(t, m, "ferry_requests_total", c.labels); got != c.want {
			t.Errorf("ferry_requests_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if got := counterValue(t, m, "ferry_retries_total", map[string]string{"upstream": "b", "condition": "5xx"}); got != 1 {
		t.Errorf("ferry_retries_total{upstream=b,condition=5xx} = %v, want 1", got)
	}
	if got := counterValue(t, m, "ferry_active_requests", map[string]string{"upstream": "b"}) +
		counterValue(t, m, "ferry_active_requests", map[string]string{"upstream": "a"}); got != 0 {
		t.Errorf("ferry_active_requests = %v, want 0 once every request is done", got)
	}

	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]string{} // route → upstream, from the access log
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec struct {
			Route    string `json:"route"`
			Upstream string `json:"upstream"`
			Status   int    `json:"status"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		routes[rec.Route+" "+strconv.Itoa(rec.Status)] = rec.Upstream
	}
	for k, want := range map[string]string{" 200": "a", "admin 200": "b", "api 200": "b", "old 308": "a", "gone 410": "a", "slow 504": "b"} {
		if got, ok := routes[k]; !ok || got != want {
			t.Errorf("access log record with route, status %q: upstream %q (found %v), want %q", k, got, ok, want)
		}
	}
}

func TestRoutedHandlerWithoutDefault(t *testing.T) {
	var hitsA, hitsB atomic.Int64
	a, b := echoBackend(t, "A", &hitsA), echoBackend(t, "B", &hitsB)
	proxy, m, _ := routedProxy(t, a, b, false, []route.Route{
		{Name: "split", Match: route.Match{Prefix: "/split/"}, Split: []route.WeightedUpstream{{Upstream: "a", Weight: 80}, {Upstream: "b", Weight: 20}}},
	})
	c := client(false)
	resp, err := c.Get("http://" + proxy + "/nowhere")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := `ferry; error=destination_not_found; details="no route"`; resp.StatusCode != 404 || resp.Header.Get("Proxy-Status") != want {
		t.Errorf("GET /nowhere = %d, Proxy-Status %q; want 404, %q", resp.StatusCode, resp.Header.Get("Proxy-Status"), want)
	}
	if hitsA.Load()+hitsB.Load() != 0 {
		t.Errorf("an unrouted request reached a backend")
	}
	if got := counterValue(t, m, "ferry_proxy_errors_total", map[string]string{"upstream": "", "error": "destination_not_found"}); got != 1 {
		t.Errorf("ferry_proxy_errors_total{error=destination_not_found} = %v, want 1", got)
	}

	const n = 1000
	for i := range n {
		resp, err := c.Get("http://" + proxy + "/split/" + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET /split/%d = %d, want 200", i, resp.StatusCode)
		}
	}
	// 20% of 1000: the standard deviation is sqrt(1000·0.2·0.8) ≈ 12.6; ±60 is over 4.7σ.
	if gotB := hitsB.Load(); gotB < 140 || gotB > 260 || hitsA.Load()+gotB != n {
		t.Errorf("split 80/20 over %d requests: A %d, B %d; want B in [140, 260]", n, hitsA.Load(), gotB)
	}
	if got := counterValue(t, m, "ferry_requests_total", map[string]string{"upstream": "b", "route": "split"}); got != float64(hitsB.Load()) {
		t.Errorf("ferry_requests_total{upstream=b,route=split} = %v, want %d", got, hitsB.Load())
	}
}
