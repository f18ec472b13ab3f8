package config

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMTLSConsul(t *testing.T) {
	tests := []struct {
		name                   string
		doc                    string
		trustDomain, consulSvc string
		apiIdentity, apiTLS    string
	}{
		{
			name: "defaults: trust domain from Consul, leaf for the service, identities at run time",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls: {source: consul}
`,
			consulSvc: "web", apiTLS: "mesh",
		},
		{
			name: "pinned trust domain, own consul service, explicit identity kept",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081], identity: spiffe://x.consul/ns/default/dc/dc1/svc/api}]
discovery: {consul: {address: 127.0.0.1:8500}}
mtls: {source: consul, trust_domain: x.consul, consul_service: web-v2, mode: permissive}
`,
			trustDomain: "x.consul", consulSvc: "web-v2",
			apiIdentity: "spiffe://x.consul/ns/default/dc/dc1/svc/api", apiTLS: "mesh",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.doc)
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() of a parsed config = %v, want nil", err)
			}
			got := []string{c.MTLS.Source, c.MTLS.TrustDomain, c.MTLS.ConsulService, c.Upstreams[0].TLS, c.Upstreams[0].Identity}
			want := []string{"consul", tc.trustDomain, tc.consulSvc, tc.apiTLS, tc.apiIdentity}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("source, trust_domain, consul_service, tls, identity = %q, want %q", got, want)
			}
		})
	}
}

func TestParseMTLSSDS(t *testing.T) {
	tests := []struct {
		name                           string
		sds                            string
		address, certName, validName   string
		trustDomain, apiIdentity, mode string
	}{
		{
			name:    "Istio's agent: secret names by default",
			sds:     `mtls: {source: sds, sds: {address: "unix:///var/run/secrets/workload-spiffe-uds/socket"}}`,
			address: "unix:///var/run/secrets/workload-spiffe-uds/socket", certName: "default", validName: "ROOTCA",
			trustDomain: "mesh.local", apiIdentity: "spiffe://mesh.local/svc/api", mode: "strict",
		},
		{
			name: "SPIRE's agent: SPIFFE ID and trust domain bundle, own trust domain",
			sds: `mtls:
  mode: permissive
  trust_domain: example.org
  source: sds
  sds:
    address: unix:///run/spire/agent.sock
    cert_name: spiffe://example.org/svc/web
    validation_name: spiffe://example.org
`,
			address: "unix:///run/spire/agent.sock", certName: "spiffe://example.org/svc/web", validName: "spiffe://example.org",
			trustDomain: "example.org", apiIdentity: "spiffe://example.org/svc/api", mode: "permissive",
		},
		{
			name:    "loopback TCP",
			sds:     `mtls: {source: sds, sds: {address: "127.0.0.1:8234", validation_name: ALL}}`,
			address: "127.0.0.1:8234", certName: "default", validName: "ALL",
			trustDomain: "mesh.local", apiIdentity: "spiffe://mesh.local/svc/api", mode: "strict",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := "service: web\noutbound: [{upstream: api, address: 127.0.0.1:9191}]\nupstreams: [{name: api, endpoints: [127.0.0.1:8081]}]\n" + tc.sds
			c, err := parse(t, doc)
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() of a parsed config = %v, want nil", err)
			}
			m := c.MTLS
			got := []string{m.Source, m.SDS.Address, m.SDS.CertName, m.SDS.ValidationName, m.TrustDomain, c.Upstreams[0].Identity, m.Mode}
			want := []string{"sds", tc.address, tc.certName, tc.validName, tc.trustDomain, tc.apiIdentity, tc.mode}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("source, address, cert_name, validation_name, trust_domain, identity, mode = %q, want %q", got, want)
			}
			if w := c.Warnings(); len(w) != 0 {
				t.Errorf("Warnings() = %q, want none for a local SDS server", w)
			}
		})
	}
}

func TestMTLSConsulErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "files and dir do not apply to source consul",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls:
  source: consul
  cert_file: web.pem
  key_file: web-key.pem
  ca_file: ca.pem
  dir: /tmp/ca
  consul_service: "we b"
`,
			want: []string{
				`ferry.yaml:6: mtls.cert_file: cert_file applies to source files only (source consul takes the certificate from Consul)`,
				`ferry.yaml:7: mtls.key_file: key_file applies to source files only`,
				`ferry.yaml:8: mtls.ca_file: ca_file applies to source files only`,
				`ferry.yaml:9: mtls.dir: dir applies to source dev only`,
				`ferry.yaml:10: mtls.consul_service: invalid Consul service name "we b"`,
			},
		},
		{
			name: "consul_service without source consul; bad trust domain with consul",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls: {source: dev, dir: /tmp/ca, consul_service: web}
`,
			want: []string{
				`ferry.yaml:4: mtls.consul_service: consul_service applies to source consul only`,
			},
		},
		{
			name: "invalid pinned trust domain",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls:
  source: consul
  trust_domain: "spiffe://x.consul"
`,
			want: []string{
				`ferry.yaml:6: mtls.trust_domain: invalid trust domain "spiffe://x.consul"`,
			},
		},
		{
			name: "unknown source lists consul",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls: {source: vault}
`,
			want: []string{
				`ferry.yaml:4: mtls.source: unknown source "vault" (want files, dev, consul or sds)`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.doc)
			if err == nil {
				t.Fatalf("Parse() = %+v, want errors %q", c, tc.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse() error = %T %v, want config.Errors", err, err)
			}
			if len(errs) != len(tc.want) {
				t.Errorf("Parse() returned %d errors, want %d:\n%v", len(errs), len(tc.want), err)
			}
			for i, want := range tc.want {
				if i < len(errs) && !strings.Contains(errs[i].Error(), want) {
					t.Errorf("Parse() error[%d] = %v, want substring %q", i, errs[i], want)
				}
			}
		})
	}
}
