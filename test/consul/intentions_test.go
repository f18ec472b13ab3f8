package consul

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
	"github.com/ferrymesh/ferry/test/ferrytest"
)

// ixIssue issues a certificate per service from one development CA, whose
// spiffe://mesh.local/svc/NAME identities map to Consul service NAME.
func ixIssue(t *testing.T, services ...string) map[string]ferrytest.Certs {
	t.Helper()
	pki := ferrytest.NewPKI(t)
	out := map[string]ferrytest.Certs{}
	for _, s := range services {
		out[s] = pki.Issue(s)
	}
	return out
}

// countingApp is the application behind the web sidecar: it counts what reaches it.
type countingApp struct {
	addr string
	n    atomic.Int64
}

func startCountingApp(t *testing.T) *countingApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &countingApp{addr: ln.Addr().String()}
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		a.n.Add(1)
		_, _ = io.WriteString(w, "web")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return a
}

// webConfig is the server-side sidecar of service web, enforcing the Consul intentions of
// web from the agent at consulAddr.
func webConfig(admin, inbound, target, consulAddr string, c ferrytest.Certs) string {
	return fmt.Sprintf(`service: web
admin: {address: %s}
inbound: {address: %s, target: %s}
discovery:
  consul: {address: %s}
telemetry: {access_log: stdout}
policy:
  access: {source: consul}
drain_timeout: 2s
%s`, admin, inbound, target, consulAddr, c.MTLSBlock())
}

// callerConfig is a client-side sidecar of service name calling web at inbound.
func callerConfig(name, admin, out, inbound string, c ferrytest.Certs) string {
	return fmt.Sprintf(`service: %s
admin: {address: %s}
outbound: [{upstream: web, address: %s}]
upstreams: [{name: web, endpoints: [%s]}]
drain_timeout: 2s
%s`, name, admin, out, inbound, c.MTLSBlock())
}

// ixSend sends one request and returns its status and Proxy-Status.
func ixSend(t *testing.T, c *http.Client, method, url string) (int, string) {
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
	return resp.StatusCode, resp.Header.Get("Proxy-Status")
}

func denied(rule string) string {
	return `ferry; error=http_request_denied; details="rule ` + rule + `"`
}

func setIntentions(t *testing.T, c *api.Client, sources ...*api.SourceIntention) {
	t.Helper()
	e := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "web", Sources: sources}
	if _, _, err := c.ConfigEntries().Set(e, nil); err != nil {
		t.Fatalf("writing service-intentions: %v", err)
	}
}

func TestIntentions(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	cc := consulClient(t, agent)
	// L7 intentions need an HTTP destination.
	if _, _, err := cc.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	setIntentions(t, cc,
		&api.SourceIntention{Name: "frontend", Action: api.IntentionActionAllow},
		&api.SourceIntention{Name: "batch", Action: api.IntentionActionDeny})

	certs := ixIssue(t, "web", "frontend", "batch")
	app := startCountingApp(t)
	inbound, webAdmin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	web := startFerry(t, webAdmin, webConfig(webAdmin, inbound, app.addr, agent.Addr, certs["web"]))
	via := map[string]string{}
	for _, name := range []string{"frontend", "batch"} {
		admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
		startFerry(t, admin, callerConfig(name, admin, out, inbound, certs[name]))
		via[name] = "http://" + out
	}
	c := ferrytest.NewClient(t, 8, nil)

	// check sends one request and checks its status, its Proxy-Status and whether it
	// reached the app.
	check := func(t *testing.T, caller, method, path string, status int, rule string) {
		t.Helper()
		before := app.n.Load()
		got, ps := ixSend(t, c, method, via[caller]+path)
		arrived := app.n.Load() - before
		if got != status {
			t.Fatalf("%s %s %s = %d (%s), want %d", caller, method, path, got, ps, status)
		}
		if status == http.StatusOK {
			if arrived != 1 {
				t.Errorf("app got %d requests, want 1", arrived)
			}
			return
		}
		if arrived != 0 {
			t.Errorf("app got %d requests, want 0: a denied request must never arrive", arrived)
		}
		if ps != denied(rule) {
			t.Errorf("Proxy-Status = %q, want %q", ps, denied(rule))
		}
	}
	// await polls until caller's request gets status, then checks it once more, and
	// returns how long the change took.
	await := func(t *testing.T, caller, method, path string, status int, rule string) time.Duration {
		t.Helper()
		start := time.Now()
		eventually(t, fmt.Sprintf("%s %s %s answers %d", caller, method, path, status), func() bool {
			got, _ := ixSend(t, c, method, via[caller]+path)
			return got == status
		})
		took := time.Since(start)
		t.Logf("%s %s %s answered %d after %v", caller, method, path, status, took.Round(time.Millisecond))
		check(t, caller, method, path, status, rule)
		return took
	}

	t.Run("L4 allow and deny", func(t *testing.T) {
		check(t, "frontend", "GET", "/", http.StatusOK, "")
		check(t, "batch", "GET", "/", http.StatusForbidden, "intention:batch->web")
		if v := web.MetricWith("ferry_policy_decisions_total", `rule="intention:batch->web"`, `outcome="denied"`); v < 1 {
			t.Errorf("ferry_policy_decisions_total{rule=intention:batch->web,outcome=denied} = %v, want >= 1", v)
		}
		if v := web.MetricWith("ferry_consul_intentions_ready"); v != 1 {
			t.Errorf("ferry_consul_intentions_ready = %v, want 1", v)
		}
		eventually(t, "the access log names the intention", func() bool { return web.logHas("intention:batch->web", "403") })
	})

	t.Run("L7 permissions without restart", func(t *testing.T) {
		setIntentions(t, cc,
			&api.SourceIntention{Name: "frontend", Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
				{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/", Methods: []string{"GET"}}},
			}},
			&api.SourceIntention{Name: "batch", Action: api.IntentionActionDeny})
		if took := await(t, "frontend", "GET", "/admin/users", http.StatusForbidden, "intention:frontend->web:permissions[0]"); took > 5*time.Second {
			t.Errorf("the new intention took %v to apply, want within one blocking round (< 5s)", took)
		}
		check(t, "frontend", "GET", "/api/x", http.StatusOK, "")
		// No permission matches POST: the default (allow, Consul without ACLs) decides,
		// not a lower-precedence intention.
		check(t, "frontend", "POST", "/api/x", http.StatusOK, "")
		check(t, "batch", "GET", "/api/x", http.StatusForbidden, "intention:batch->web")
	})

	t.Run("precedence: exact source beats the wildcard", func(t *testing.T) {
		setIntentions(t, cc,
			&api.SourceIntention{Name: "*", Action: api.IntentionActionDeny},
			&api.SourceIntention{Name: "batch", Action: api.IntentionActionAllow})
		await(t, "frontend", "GET", "/", http.StatusForbidden, "intention:*->web")
		check(t, "batch", "GET", "/", http.StatusOK, "")
	})

	t.Run("Consul stopped: cached intentions still enforced", func(t *testing.T) {
		setIntentions(t, cc,
			&api.SourceIntention{Name: "frontend", Permissions: []*api.IntentionPermission{
				{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathExact: "/secret"}},
			}},
			&api.SourceIntention{Name: "batch", Action: api.IntentionActionDeny})
		await(t, "batch", "GET", "/", http.StatusForbidden, "intention:batch->web")
		agent.Stop()
		eventually(t, "ferry_consul_intentions_stale_seconds > 0", func() bool {
			return web.MetricWith("ferry_consul_intentions_stale_seconds") > 0
		})
		for range 3 {
			check(t, "batch", "GET", "/", http.StatusForbidden, "intention:batch->web")
			check(t, "frontend", "GET", "/secret", http.StatusForbidden, "intention:frontend->web:permissions[0]")
			check(t, "frontend", "GET", "/public", http.StatusOK, "")
			time.Sleep(300 * time.Millisecond)
		}
		if code, body := web.ready(); code != http.StatusOK {
			t.Errorf("/ready during the outage = %d %s, want 200 (the last intentions are in force)", code, body)
		}
	})
}

func TestIntentionsFreshSidecarWithoutConsulRefuses(t *testing.T) {
	certs := ixIssue(t, "web", "frontend")
	app := startCountingApp(t)
	down := ferrytest.FreeAddr(t) // no Consul agent there
	inbound, webAdmin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	web := runFerry(t, webAdmin, webConfig(webAdmin, inbound, app.addr, down, certs["web"]))
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, admin, callerConfig("frontend", admin, out, inbound, certs["frontend"]))

	eventually(t, "/ready says it waits for the intentions", func() bool {
		code, body := web.ready()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "intentions")
	})
	c := ferrytest.NewClient(t, 8, nil)
	eventually(t, "the inbound listener answers", func() bool {
		resp, err := c.Get("http://" + out + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable
	})
	got, ps := ixSend(t, c, "GET", "http://"+out+"/")
	if got != http.StatusForbidden || ps != denied("intentions:pending") {
		t.Errorf("GET before any intention = %d %q, want 403 %q", got, ps, denied("intentions:pending"))
	}
	if n := app.n.Load(); n != 0 {
		t.Errorf("app got %d requests, want 0 before the intentions are known", n)
	}
	if !web.logHas("waiting for Consul intentions") {
		t.Errorf("no log line says the sidecar waits for Consul intentions")
	}
}
