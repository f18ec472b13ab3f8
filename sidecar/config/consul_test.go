package config

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFullConsul(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	u := c.Upstream("orders")
	if u == nil {
		t.Fatal(`Upstream("orders") = nil`)
	}
	if want := (&ConsulUpstream{Service: "orders-v2", Tags: []string{"primary", "v2"}, Datacenter: "dc2",
		Namespace: "team-a", PassingOnly: false, Connect: true}); !reflect.DeepEqual(u.Consul, want) {
		t.Errorf("upstreams[orders].consul = %+v, want %+v", u.Consul, want)
	}
	want := &ConsulDiscovery{Address: "https://consul.internal:8501", Scheme: "https", Datacenter: "dc1",
		TokenFile: "/etc/ferry/consul-token", CAFile: "/etc/ferry/consul-ca.pem", CertFile: "/etc/ferry/consul-client.pem",
		KeyFile: "/etc/ferry/consul-client-key.pem", TLSServerName: "consul.internal", Register: true, ServiceID: "web-1",
		ServiceTags: []string{"v1"}, CheckInterval: Duration(5 * time.Second), DeregisterDelay: Duration(2 * time.Second),
		ConfigKey: "ferry/web"}
	if c.Discovery == nil || !reflect.DeepEqual(c.Discovery.Consul, want) {
		t.Errorf("discovery.consul = %+v, want %+v", c.Discovery, want)
	}
}

func TestParseConsulDefaults(t *testing.T) {
	c, err := parse(t, `
service: web
inbound: {address: 127.0.0.1:21000, target: 127.0.0.1:8080}
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    consul: {}
discovery:
  consul: {register: true, check_interval: 1s, deregister_delay: 0s}
`)
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"consul.service (the upstream's name)", c.Upstreams[0].Consul.Service, "api"},
		{"consul.tags", c.Upstreams[0].Consul.Tags, []string{}},
		{"consul.passing_only", c.Upstreams[0].Consul.PassingOnly, true},
		{"consul.connect", c.Upstreams[0].Consul.Connect, false},
		{"upstreams[0].endpoints", len(c.Upstreams[0].Endpoints), 0},
		{"discovery.consul.address (environment or 127.0.0.1:8500)", c.Discovery.Consul.Address, ""},
		{"discovery.consul.check_interval", c.Discovery.Consul.CheckInterval, Duration(time.Second)},
		{"discovery.consul.deregister_delay (explicit 0s)", c.Discovery.Consul.DeregisterDelay, Duration(0)},
		{"discovery.consul.service_tags", c.Discovery.Consul.ServiceTags, []string{}},
	}
	for _, tc := range checks {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %#v, want %#v", tc.name, tc.got, tc.want)
		}
	}

	c, err = parse(t, `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, consul: {service: api-v1}}]
discovery: {consul: {}}
`)
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	if d := c.Discovery.Consul; d.CheckInterval.D() != DefaultConsulCheckInterval || d.DeregisterDelay.D() != DefaultConsulDeregisterDelay || d.Register {
		t.Errorf("discovery.consul = %+v, want the defaults", d)
	}
}

func TestParseConsulErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "endpoints and consul",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    consul: {service: api}
`,
			want: []string{`ferry.yaml:5: upstreams[0].endpoints: upstream "api" has both endpoints and consul (want exactly one)`},
		},
		{
			name: "bad consul upstream",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    consul:
      service: api
      bogus: 1
`,
			want: []string{
				`ferry.yaml:7: upstreams[0].consul.bogus: unknown key`,
			},
		},
		{
			name: "bad consul upstream values",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    consul:
      service: "bad name"
      tags: ["", ok]
      datacenter: "dc/1"
      namespace: "-x"
`,
			want: []string{
				`ferry.yaml:6: upstreams[0].consul.service: invalid service name "bad name"`,
				`ferry.yaml:7: upstreams[0].consul.tags[0]: invalid tag ""`,
				`ferry.yaml:8: upstreams[0].consul.datacenter: invalid datacenter "dc/1"`,
				`ferry.yaml:9: upstreams[0].consul.namespace: invalid namespace "-x"`,
			},
		},
		{
			name: "bad discovery.consul",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, consul: {}}]
discovery:
  consul:
    address: "127.0.0.1"
    scheme: ftp
    token: secret
    token_file: /t
    cert_file: /c.pem
    register: true
    check_interval: 100ms
    deregister_delay: -1s
`,
			want: []string{
				`ferry.yaml:6: discovery.consul.address: invalid address "127.0.0.1"`,
				`ferry.yaml:7: discovery.consul.scheme: unknown scheme "ftp" (want http or https)`,
				`ferry.yaml:9: discovery.consul.token_file: token and token_file are mutually exclusive`,
				`ferry.yaml:10: discovery.consul.cert_file: cert_file and key_file must be given together`,
				`ferry.yaml:11: discovery.consul.register: register needs an inbound block`,
				`ferry.yaml:12: discovery.consul.check_interval: must be at least 1s, got 100ms`,
				`ferry.yaml:13: discovery.consul.deregister_delay: must not be negative, got -1s`,
			},
		},
		{
			name: "config_key must be a KV key",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, consul: {}}]
discovery:
  consul: {config_key: /ferry/web}
`,
			want: []string{`ferry.yaml:5: discovery.consul.config_key: invalid KV key "/ferry/web"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.doc)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse() = %+v, %v, want config.Errors %q", c, err, tc.want)
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

func TestConsulAddressProblem(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:8500", true}, {"http://consul:8500", true}, {"https://consul.internal:8501/", true},
		{"unix:///run/consul.sock", true}, {"unix://", false}, {"consul", false}, {"http://:8500", false},
		{"127.0.0.1:0", false},
	} {
		if got := consulAddressProblem(tc.addr) == ""; got != tc.ok {
			t.Errorf("consulAddressProblem(%q) = %q, want ok %v", tc.addr, consulAddressProblem(tc.addr), tc.ok)
		}
	}
}
