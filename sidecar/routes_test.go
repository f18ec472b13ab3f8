package sidecar

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/l7"
)

func TestRouteRetry(t *testing.T) {
	on := func(names ...string) l7.RetryOn {
		o, err := l7.ParseRetryOn(names)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	base := &l7.RetryPolicy{Retries: 2, On: on("reset"), StatusCodes: []int{409}, PerTryTimeout: time.Second,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, BufferLimit: 1024}
	tests := []struct {
		name  string
		base  *l7.RetryPolicy
		route *route.Retries
		want  *l7.RetryPolicy
	}{
		{"no route retries keeps the upstream's", base, nil, base},
		{"none at all", nil, nil, nil},
		{"attempts 0 turns retries off", base, &route.Retries{Attempts: 0}, nil},
		{"route overrides attempts, on and per_try_timeout", base,
			&route.Retries{Attempts: 3, On: []string{"5xx", "retriable-status-codes"}, PerTryTimeout: policy.Duration(200 * time.Millisecond)},
			&l7.RetryPolicy{Retries: 3, On: on("5xx", "retriable-status-codes"), StatusCodes: []int{409}, PerTryTimeout: 200 * time.Millisecond,
				BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, BufferLimit: 1024}},
		{"empty on keeps the upstream's conditions", base, &route.Retries{Attempts: 1},
			&l7.RetryPolicy{Retries: 1, On: on("reset"), StatusCodes: []int{409},
				BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, BufferLimit: 1024}},
		{"an upstream without retries takes the defaults", nil, &route.Retries{Attempts: 2},
			&l7.RetryPolicy{Retries: 2, On: on(config.DefaultRetryOn()...), BackoffBase: config.DefaultRetryBackoffBase,
				BackoffMax: 10 * config.DefaultRetryBackoffBase, BufferLimit: config.DefaultRetryBufferLimit}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := routeRetry(tc.base, tc.route); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("routeRetry() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRouteRetryBudgets(t *testing.T) {
	cfg := &config.Config{
		Inbound: &config.Inbound{Routes: []route.Route{{Name: "local", Retries: &route.Retries{Attempts: 1}}}},
		Outbound: []config.Outbound{{Routes: []route.Route{
			{Name: "a", Upstream: "plain", Retries: &route.Retries{Attempts: 1}},
			{Name: "b", Upstream: "own", Retries: &route.Retries{Attempts: 1}},
			{Name: "c", Upstream: "off", Retries: &route.Retries{Attempts: 0}},
		}}},
		Upstreams: []config.Upstream{{Name: "plain"}, {Name: "own", Retries: &config.Retries{BudgetPercent: 0}}, {Name: "off"}},
	}
	specs := map[string]upstreamConfig{"plain": {}, "own": {}, "off": {}, inboundUpstream: {}}
	routeRetryBudgets(cfg, specs)
	for name, want := range map[string]float64{"plain": config.DefaultRetryBudgetPercent, "own": 0, "off": 0,
		inboundUpstream: config.DefaultRetryBudgetPercent} {
		if got := specs[name].limits.BudgetPercent; got != want {
			t.Errorf("%s: limits.BudgetPercent = %v, want %v", name, got, want)
		}
	}
}

// TestApplyRoutes applies a config whose routes send to an upstream no listener names,
// then reloads it with other routes on the same listener, and checks every request goes
// where the config in force says. A route's retries work on an upstream that has none of
// its own (its circuit breaker got a retry budget).
func TestApplyRoutes(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	var calls atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		_, _ = io.WriteString(w, "flaky")
	}))
	t.Cleanup(flaky.Close)
	out := freeAddr(t)
	s := New(Options{})
	drained(t, s)
	cfg := func(routes string) *config.Config {
		return parse(t, fmt.Sprintf(`service: web
admin: {address: %s}
outbound:
  - address: %s
    upstream: a
    routes:
%s
upstreams:
  - {name: a, endpoints: [%s]}
  - {name: b, endpoints: [%s]}
  - {name: flaky, endpoints: [%s]}
`, freeAddr(t), out, routes, a, b, flaky.Listener.Addr()))
	}
	getBody := func(path string) string {
		t.Helper()
		resp, err := http.Get("http://" + out + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
	if err := s.Apply(cfg(`      - {name: to-b, match: {prefix: /b/}, upstream: b}
      - {name: retry, match: {prefix: /flaky}, upstream: flaky, retries: {attempts: 1, on: [gateway-error]}}`)); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	for path, want := range map[string]string{"/b/x": "200 b", "/x": "200 a", "/flaky": "200 flaky"} {
		if got := getBody(path); got != want {
			t.Errorf("GET %s = %q, want %q", path, got, want)
		}
	}
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	for _, want := range []string{"routes of outbound " + out + " (otherwise a)",
		"<td>to-b</td><td>prefix /b/</td><td>→ b</td><td></td>",
		"<td>retry</td><td>prefix /flaky</td><td>→ flaky</td><td>retries 1</td>"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("status page lacks %q:\n%s", want, rec.Body.String())
		}
	}
	if err := s.Apply(cfg(`      - {name: gone, match: {prefix: /b/}, response: {status: 410, body: gone}}`)); err != nil {
		t.Fatalf("Apply() (reload) error = %v", err)
	}
	for path, want := range map[string]string{"/b/x": "410 gone", "/x": "200 a", "/flaky": "200 a"} {
		if got := getBody(path); got != want {
			t.Errorf("after reload: GET %s = %q, want %q", path, got, want)
		}
	}
}
