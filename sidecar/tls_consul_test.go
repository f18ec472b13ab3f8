package sidecar

import (
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/sidecar/config"
)

// consulMaterial is material for service web in Consul's form, datacenter dc, trust
// domain td.
func consulMaterial(t *testing.T, td spiffeid.TrustDomain, dc string) *mtls.Material {
	t.Helper()
	ca, err := mtls.NewCA(td, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, err := mtls.ConsulServiceID(td, "default", dc, "web")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(mtls.IssueRequest{ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	m, err := mtls.NewMaterial("consul", svid, time.Now(), ca.Bundle(td))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConsulIdentity(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("1111.consul")
	tests := []struct {
		name string
		uc   config.Upstream
		want string
	}{
		{"static: the upstream's name, this sidecar's datacenter", config.Upstream{Name: "api"},
			"spiffe://1111.consul/ns/default/dc/dc1/svc/api"},
		{"consul: the service, its namespace and datacenter",
			config.Upstream{Name: "db", Consul: &config.ConsulUpstream{Service: "postgres", Namespace: "team", Datacenter: "dc2"}},
			"spiffe://1111.consul/ns/team/dc/dc2/svc/postgres"},
		{"consul without namespace or datacenter", config.Upstream{Name: "db", Consul: &config.ConsulUpstream{Service: "postgres"}},
			"spiffe://1111.consul/ns/default/dc/dc1/svc/postgres"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := mtls.NewStore("consul")
			ci := newConsulIdentity(st, &tt.uc)
			if got := ci.IdentityOf("127.0.0.1:1"); got != "" {
				t.Errorf("IdentityOf() without material = %q, want empty", got)
			}
			st.Publish(consulMaterial(t, td, "dc1"))
			if got := ci.IdentityOf("127.0.0.1:1"); got != tt.want {
				t.Errorf("IdentityOf() = %q, want %q", got, tt.want)
			}
			if again := newConsulIdentity(st, &tt.uc); again != ci {
				t.Errorf("newConsulIdentity() of the same upstream = %+v, want a value equal to %+v (kept transports)", again, ci)
			}
		})
	}

	// A new certificate (another datacenter here) changes the answer.
	st := mtls.NewStore("consul")
	ci := newConsulIdentity(st, &config.Upstream{Name: "api"})
	st.Publish(consulMaterial(t, td, "dc1"))
	_ = ci.IdentityOf("")
	st.Publish(consulMaterial(t, td, "east"))
	if got, want := ci.IdentityOf(""), "spiffe://1111.consul/ns/default/dc/east/svc/api"; got != want {
		t.Errorf("IdentityOf() after rotation = %q, want %q", got, want)
	}
}

type fixedIdentity map[string]string

func (f *fixedIdentity) IdentityOf(addr string) string { return (*f)[addr] }

func TestIdentityChain(t *testing.T) {
	c := identityChain{&fixedIdentity{"a": "spiffe://x/svc/a"}, &fixedIdentity{"a": "spiffe://x/svc/other", "b": "spiffe://x/svc/b"}}
	for _, tt := range []struct{ addr, want string }{{"a", "spiffe://x/svc/a"}, {"b", "spiffe://x/svc/b"}, {"c", ""}} {
		if got := c.IdentityOf(tt.addr); got != tt.want {
			t.Errorf("IdentityOf(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

// consulMTLSYAML is a config with mtls.source consul on the agent at addr; dc, if set,
// is discovery.consul.datacenter (a change of it builds a new Consul client).
func consulMTLSYAML(out, addr, dc string) string {
	return fmt.Sprintf(`service: web
admin: {address: 127.0.0.1:1}
outbound: [{upstream: api, address: %s}]
upstreams: [{name: api, endpoints: [127.0.0.1:1]}]
discovery:
  consul: {address: %q, datacenter: %q}
mtls: {source: consul}
`, out, addr, dc)
}

// TestConsulMTLSSourceFollowsReloads: source consul is ready once the agent's leaf
// arrives, is kept across a reload that changes nothing of it, and is replaced, already
// loaded, when the Consul connection changes.
func TestConsulMTLSSourceFollowsReloads(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	s := New(Options{})
	drained(t, s)
	out := freeAddr(t)
	if err := s.Apply(parse(t, consulMTLSYAML(out, agent.Addr, ""))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	waitFor(t, "ready with a certificate from Consul", func() bool { ok, _ := s.Ready(); return ok })
	first := s.mesh.live.Load()
	m, err := first.src.Current()
	if err != nil {
		t.Fatalf("Current() error = %v", err)
	}
	if svc, err := mtls.ParseService(m.ID()); err != nil || svc.Name != "web" || svc.Datacenter != "dc1" || m.Source() != "consul" {
		t.Errorf("certificate %s from %q, want Consul's identity of web in dc1 from consul", m.ID(), m.Source())
	}

	s.mu.Lock()
	tr := s.transports["api"]
	s.mu.Unlock()
	if err := s.Apply(parse(t, consulMTLSYAML(out, agent.Addr, ""))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if s.mesh.live.Load() != first {
		t.Errorf("an unchanged config replaced the Consul certificate source")
	}
	s.mu.Lock()
	kept := s.transports["api"] == tr
	s.mu.Unlock()
	if tr == nil || !kept {
		t.Errorf("an unchanged config replaced upstream api's transport (%p), want it kept", tr)
	}
	if err := s.Apply(parse(t, consulMTLSYAML(out, agent.Addr, "dc1"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	second := s.mesh.live.Load()
	if second == first {
		t.Fatalf("a new Consul connection kept the old certificate source")
	}
	if _, err := second.src.Current(); err != nil {
		t.Errorf("new source right after Apply: Current() error = %v, want its certificate loaded", err)
	}
	if ok, why := s.Ready(); !ok {
		t.Errorf("Ready() after the reload = false (%s), want true", why)
	}
}
