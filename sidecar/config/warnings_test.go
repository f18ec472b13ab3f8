package config

import (
	"slices"
	"testing"
)

func TestWarnings(t *testing.T) {
	const base = `service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"plaintext", base, []string{"no mtls block: traffic between sidecars is plaintext"}},
		{"mtls, nothing else", base + "mtls: {source: dev, dir: /tmp/ca}\n", nil},
		{"policy without inbound", base + "mtls: {source: dev, dir: /tmp/ca}\npolicy: {access: {default: deny}}\n",
			[]string{"policy: there is no inbound or ingress listener, so nothing enforces this policy (it applies to requests arriving at this service, not to outbound calls)"}},
		{"sds over a remote TCP address", base + "mtls: {source: sds, sds: {address: 10.1.2.3:8234}}\n",
			[]string{"mtls.sds.address 10.1.2.3:8234 is not a Unix socket or a loopback address: the SDS stream is plaintext, and whoever answers there hands this sidecar its identity; make sure that network is trusted"}},
		{"sds over a Unix socket", base + "mtls: {source: sds, sds: {address: \"unix:///run/spire/agent.sock\"}}\n", nil},
		{"sds over localhost", base + "mtls: {source: sds, sds: {address: \"localhost:8234\"}}\n", nil},
		{"policy with inbound", base + "mtls: {source: dev, dir: /tmp/ca}\npolicy: {access: {default: deny}}\ninbound: {address: 127.0.0.1:21000, target: 127.0.0.1:8080}\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.doc)
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if got := c.Warnings(); !slices.Equal(got, tc.want) {
				t.Errorf("Warnings() = %q, want %q", got, tc.want)
			}
		})
	}
}
