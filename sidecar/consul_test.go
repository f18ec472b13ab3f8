package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
)

// consulYAML is a config with upstreams a and b fed by Consul on addr; bTags are b's tags.
func consulYAML(outA, outB, addr, bTags string) string {
	return fmt.Sprintf(`service: web
admin: {address: 127.0.0.1:1}
outbound:
  - {upstream: a, address: %s}
  - {upstream: b, address: %s}
upstreams:
  - {name: a, consul: {service: svc-a}}
  - {name: b, consul: {service: svc-b, tags: [%s]}}
discovery:
  consul: {address: %q}
`, outA, outB, bTags, addr)
}

func TestConsulReloadRestartsOnlyAffectedWatches(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	s := New(Options{})
	drained(t, s)
	outA, outB := freeAddr(t), freeAddr(t)
	if err := s.Apply(parse(t, consulYAML(outA, outB, agent.Addr, ""))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	// An empty first answer (no instance registered) makes the upstream ready.
	waitFor(t, "ready with empty Consul answers", func() bool { ok, _ := s.Ready(); return ok })

	snapshot := func() (any, *consulSource, *consulSource) {
		s.consul.mu.Lock()
		defer s.consul.mu.Unlock()
		return s.consul.client, s.consul.sources["a"], s.consul.sources["b"]
	}
	c1, a1, b1 := snapshot()
	if c1 == nil || a1 == nil || b1 == nil {
		t.Fatalf("client %v, sources a %v b %v; want all set", c1, a1, b1)
	}

	if err := s.Apply(parse(t, consulYAML(outA, outB, agent.Addr, "v2"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	c2, a2, b2 := snapshot()
	if c2 != c1 || a2 != a1 || b2 == b1 {
		t.Errorf("after changing b's tags: client kept %v, a's source kept %v, b's source kept %v; want true, true, false",
			c2 == c1, a2 == a1, b2 == b1)
	}

	if err := s.Apply(parse(t, consulYAML(outA, outB, "http://"+agent.Addr, "v2"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	c3, a3, b3 := snapshot()
	if c3 == c2 || a3 == a2 || b3 == b2 {
		t.Errorf("after changing the address: client kept %v, a's source kept %v, b's source kept %v; want all false",
			c3 == c2, a3 == a2, b3 == b2)
	}

	// Back to static endpoints: the Consul source is forgotten.
	be := backend(t, "static")
	if err := s.Apply(parse(t, fmt.Sprintf(`service: web
admin: {address: 127.0.0.1:1}
outbound: [{upstream: a, address: %s}]
upstreams: [{name: a, endpoints: [%s]}]
`, outA, be))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if _, a4, b4 := snapshot(); a4 != nil || b4 != nil {
		t.Errorf("after going static: sources a %v b %v, want none", a4, b4)
	}
	if d := s.discoveryStatus("a", true); d.Source != "static" {
		t.Errorf("discoveryStatus(a) = %+v, want source static", d)
	}
}

func TestConsulDiscoveryEndToEnd(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = agent.Addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "b1") }))
	t.Cleanup(be.Close)
	port := be.Listener.Addr().(interface{ String() string }).String()
	var p int
	_, _ = fmt.Sscanf(port[strings.LastIndexByte(port, ':')+1:], "%d", &p)
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "a1", Name: "svc-a", Address: "127.0.0.1", Port: p}); err != nil {
		t.Fatal(err)
	}

	s := New(Options{})
	drained(t, s)
	outA, outB := freeAddr(t), freeAddr(t)
	if err := s.Apply(parse(t, consulYAML(outA, outB, agent.Addr, ""))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	waitFor(t, "ready", func() bool { ok, _ := s.Ready(); return ok })
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	waitFor(t, "a request through a reaches the Consul instance", func() bool {
		resp, err := hc.Get("http://" + outA + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b) == "b1"
	})
	d := s.discoveryStatus("a", true)
	if d.Source != "consul" || d.Service != "svc-a" || !d.Ready || d.LastContact == nil || d.StaleSince != nil {
		t.Errorf("discoveryStatus(a) = %+v, want consul svc-a, ready, answered, not stale", d)
	}

	// The metrics are collected at scrape time.
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`ferry_discovery_ready{source="consul",upstream="a"} 1`,
		`ferry_discovery_stale_seconds{source="consul",upstream="a"} 0`,
		`ferry_discovery_errors_total{source="consul",upstream="a"} 0`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Consul goes away: the endpoint keeps serving, the staleness shows.
	agent.Stop()
	waitFor(t, "stale", func() bool { return s.discoveryStatus("a", true).StaleSince != nil })
	resp, err := hc.Get("http://" + outA + "/")
	if err != nil {
		t.Fatalf("request with Consul down: %v", err)
	}
	resp.Body.Close()
	if ok, why := s.Ready(); !ok {
		t.Errorf("Ready() with Consul down after the first answer = false, %q; want true", why)
	}
}

func TestConsulNotReadyWhileDown(t *testing.T) {
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{})
	drained(t, s)
	outA, outB := freeAddr(t), freeAddr(t)
	start := time.Now()
	if err := s.Apply(parse(t, consulYAML(outA, outB, fmt.Sprintf("127.0.0.1:%d", ports.HTTP), ""))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Apply() with Consul down took %v, want at most about 2s", took)
	}
	ok, why := s.Ready()
	if ok || !strings.Contains(why, "waiting for its first answer from Consul") {
		t.Errorf("Ready() = %v, %q; want false, waiting for Consul", ok, why)
	}
}

func TestConsulRegistrationFollowsReloadsAndDrain(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = agent.Addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	app := backend(t, "app")
	in, admin := freeAddr(t), freeAddr(t)
	yaml := func(tag string) string {
		return fmt.Sprintf(`service: web
admin: {address: %s}
inbound: {address: %s, target: %s}
outbound: []
upstreams: []
discovery:
  consul: {address: %s, register: true, service_id: web-x, service_tags: [%s], check_interval: 1s, deregister_delay: 0s}
`, admin, in, app, agent.Addr, tag)
	}
	s := New(Options{})
	if err := s.Apply(parse(t, yaml("v1"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	tags := func() string {
		svcs, err := c.Agent().Services()
		if err != nil || svcs["web-x"] == nil || svcs["web-x-sidecar-proxy"] == nil {
			return ""
		}
		return strings.Join(svcs["web-x"].Tags, ",")
	}
	waitFor(t, "registered with tag v1", func() bool { return tags() == "v1" })
	if err := s.Apply(parse(t, yaml("v2"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	waitFor(t, "registration updated to tag v2 by the reload", func() bool { return tags() == "v2" })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Drain(ctx)
	svcs, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if svcs["web-x"] != nil || svcs["web-x-sidecar-proxy"] != nil {
		t.Errorf("after Drain the agent still has %v", svcs)
	}
}

func TestConsulAddressFromEnvironment(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	t.Setenv("CONSUL_HTTP_ADDR", agent.Addr)
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	s := New(Options{})
	drained(t, s)
	// No discovery block: the agent is found the way the Consul CLI finds it.
	if err := s.Apply(parse(t, fmt.Sprintf(`service: web
admin: {address: 127.0.0.1:1}
outbound: [{upstream: a, address: %s}]
upstreams: [{name: a, consul: {service: svc-a}}]
`, freeAddr(t)))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	waitFor(t, "ready from the agent named by CONSUL_HTTP_ADDR", func() bool { ok, _ := s.Ready(); return ok })
}

func TestStatusPageShowsConsulStaleness(t *testing.T) {
	now := time.Now()
	data := []ClusterStatus{{Name: "a", Discovery: &DiscoveryStatus{Source: "consul", Service: "svc-a", Ready: true, StaleSince: &now}}}
	var b strings.Builder
	if err := statusPage.Execute(&b, map[string]any{"Service": "web", "Clusters": data}); err != nil {
		t.Fatalf("statusPage.Execute() error = %v", err)
	}
	for _, want := range []string{"Consul service svc-a", "Consul unreachable since"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status page lacks %q:\n%s", want, b.String())
		}
	}
}
