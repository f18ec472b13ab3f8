package ingress

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestIngressRoutes: an ingress listener's routes send /api/ to an upstream with its path
// rewritten, answer /old with a redirect and /down with a fixed response without touching
// any backend, and send everything else — including paths that only normalize to /api/ —
// where the listener itself sends.
func TestIngressRoutes(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	cert := ca.issue("www", "www.example")
	site, api := startApp(t, "site"), startApp(t, "api")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
upstreams: [{name: api, endpoints: [%s]}]
ingress:
  - address: %s
    certificates: [%s]
    target: %s
    routes:
      - {name: api, match: {prefix: /api/}, upstream: api}
      - {name: moved, match: {path: /old}, redirect: {path: /new, code: 308}}
      - {name: down, match: {prefix: /down}, response: {status: 503, body: "maintenance\n"}}
`, admin, api.addr, addr, cert.entry(), site.addr))
	c := ca.httpsClient(t, "www.example", nil, true)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	for _, tc := range []struct {
		path, want string
	}{{"/api/orders", "api"}, {"/x/../api/orders", "api"}, {"/index.html", "site"}, {"/apix", "site"}} {
		if status, body, _ := get(c, "https://"+addr+tc.path, nil); status != http.StatusOK || body != tc.want {
			t.Errorf("GET %s = %d %q, want 200 from %s", tc.path, status, body, tc.want)
		}
	}
	before := site.count.Load() + api.count.Load()
	if status, _, resp := get(c, "https://"+addr+"/old", nil); status != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://"+addr+"/new" {
		t.Errorf("GET /old = %d Location %q, want 308 to https://%s/new", status, resp.Header.Get("Location"), addr)
	}
	if status, body, _ := get(c, "https://"+addr+"/down/x", nil); status != http.StatusServiceUnavailable || body != "maintenance\n" {
		t.Errorf("GET /down/x = %d %q, want the fixed 503", status, body)
	}
	if got := site.count.Load() + api.count.Load(); got != before {
		t.Errorf("backends served %d requests for the redirect and the fixed response, want none", got-before)
	}
	if v := f.MetricWith("ferry_requests_total", `direction="ingress"`, `route="api"`, `code="200"`); v != 2 {
		t.Errorf("ferry_requests_total{direction=ingress,route=api,code=200} = %v, want 2", v)
	}
}
