package sidecar

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
			for range 2 { // the second answer comes from the cache
				if got := ci.IdentityOf("127.0.0.1:1"); got != tt.want {
					t.Errorf("IdentityOf() = %q, want %q", got, tt.want)
				}
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

func (f fixedIdentity) IdentityOf(addr string) string { return f[addr] }

func TestIdentityChain(t *testing.T) {
	c := identityChain{fixedIdentity{"a": "spiffe://x/svc/a"}, fixedIdentity{"a": "spiffe://x/svc/other", "b": "spiffe://x/svc/b"}}
	for _, tt := range []struct{ addr, want string }{{"a", "spiffe://x/svc/a"}, {"b", "spiffe://x/svc/b"}, {"c", ""}} {
		if got := c.IdentityOf(tt.addr); got != tt.want {
			t.Errorf("IdentityOf(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}
