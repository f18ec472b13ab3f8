package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	p := &c.Policy
	if got := len(p.Access.Rules); got != 2 {
		t.Fatalf("len(policy.access.rules) = %d, want 2", got)
	}
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"policy.access.default", p.Access.Default, "deny"},
		{"policy.access.rules[0].name", p.Access.Rules[0].Name, "frontend-api"},
		{"policy.access.rules[1].from[0]", p.Access.Rules[1].From[0], "any"},
		{"policy.filter.max_body_bytes", p.Filter.MaxBodyBytes, int64(10485760)},
		{"policy.rate_limits[0].burst", p.RateLimits[0].Burst, 200},
		{"policy.connection_rate_limit.burst", p.ConnectionRateLimit.Burst, 1000},
	}
	for _, tc := range checks {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestPolicyErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "semantic problems at their lines",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy:
  normalize: {escaped_slashes: sometimes}
  access:
    default: maybe
    rules:
      - {name: ok, from: [any], action: allow}
      - name: bad
        from: [spiffe://]
        action: permit
  rate_limits:
    - {path_prefix: /api/, requests_per_second: 0}
`,
			want: []string{
				`ferry.yaml:5: policy.normalize.escaped_slashes: `,
				`ferry.yaml:7: policy.access.default: `,
				`ferry.yaml:11: policy.access.rules[1].from[0]: `,
				`ferry.yaml:12: policy.access.rules[1].action: `,
				`ferry.yaml:14: policy.rate_limits[0].requests_per_second: `,
			},
		},
		{
			name: "unknown and mistyped keys",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy:
  acess: {default: deny}
  rate_limits:
    - {requests_per_second: fast}
`,
			want: []string{
				`ferry.yaml:5: policy.acess: unknown key`,
				`ferry.yaml:7: policy.rate_limits[0].requests_per_second: `,
			},
		},
		{
			name: "global rate limits",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy:
  rate_limits:
    - {name: tenants, key: "header:x-tenant", global: true}
    - {name: both, global: true, requests_per_second: 5}
`,
			want: []string{
				`ferry.yaml:6: policy.rate_limits[0].global: needs rate_limit_service`,
				`ferry.yaml:7: policy.rate_limits[1].global: needs rate_limit_service`,
			},
		},
		{
			name: "rate limit service",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy:
  rate_limits:
    - {name: tenants, key: "header:x-tenant", global: true}
  rate_limit_service: {address: nowhere, failure_mode: sometimes}
`,
			want: []string{
				`ferry.yaml:7: policy.rate_limit_service.address: invalid address "nowhere"`,
				`ferry.yaml:7: policy.rate_limit_service.failure_mode: invalid failure_mode "sometimes"`,
			},
		},
		{
			name: "consul source with file rules and without mtls",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy:
  access:
    source: consul
    order: deny_first
    rules:
      - {from: [any], action: allow}
`,
			want: []string{
				`ferry.yaml:6: policy.access.source: source: consul needs mtls`,
				`ferry.yaml:7: policy.access.order: source: consul is evaluated first_match`,
				`ferry.yaml:9: policy.access.rules: rules cannot be combined with source: consul`,
			},
		},
		{
			name: "bad source and order",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
policy:
  access:
    source: xds
    order: random
    rules:
      - {from: [any], path_regex: ["("], action: default}
`,
			want: []string{
				`ferry.yaml:6: policy.access.source: invalid source "xds"`,
				`ferry.yaml:7: policy.access.order: invalid order "random"`,
				`ferry.yaml:9: policy.access.rules[0].path_regex[0]: invalid regular expression`,
				`ferry.yaml:9: policy.access.rules[0].action: action default needs order: first_match`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.doc)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse() error = %v, want config.Errors", err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("Parse() error =\n%v\nwant %d problems:\n%s", err, len(tc.want), strings.Join(tc.want, "\n"))
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tc.want[i]) {
					t.Errorf("error %d = %q, want prefix %q", i, e.Error(), tc.want[i])
				}
			}
		})
	}
}
