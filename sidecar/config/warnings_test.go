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
