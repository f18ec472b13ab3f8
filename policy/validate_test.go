package policy

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		wantPath string
		wantMsg  string
	}{
		{"escaped slashes", Config{Normalize: Normalize{EscapedSlashes: "drop"}}, "normalize.escaped_slashes", "invalid escaped_slashes"},
		{"negative limit", Config{Filter: Filter{MaxBodyBytes: -1}}, "filter.max_body_bytes", "negative"},
		{"bad filter method", Config{Filter: Filter{Methods: []string{"get"}}}, "filter.methods[0]", "upper case"},
		{"duplicate filter method", Config{Filter: Filter{Methods: []string{"GET", "GET"}}}, "filter.methods[1]", "twice"},
		{"bad deny header", Config{Filter: Filter{DenyHeaders: []HeaderMatch{{Name: "x", Regex: "(("}}}}, "filter.deny_headers[0].regex", "regular expression"},
		{"bad ip", Config{Filter: Filter{IPAllow: []string{"10.0.0.0/8", "10.0.0.1/8"}}}, "filter.ip_allow[1]", "host bits"},
		{"bad default", Config{Access: Access{Default: "maybe"}}, "access.default", "allow or deny"},
		{"missing action", Config{Access: Access{Rules: []Rule{{Name: "r"}}}}, "access.rules[0].action", "missing action"},
		{"bad action", Config{Access: Access{Rules: []Rule{{Action: "permit"}}}}, "access.rules[0].action", "invalid action"},
		{"bad name", Config{Access: Access{Rules: []Rule{{Name: "has space", Action: "allow"}}}}, "access.rules[0].name", "invalid name"},
		{"reserved name", Config{Access: Access{Rules: []Rule{{Name: "default", Action: "allow"}}}}, "access.rules[0].name", "reserved"},
		{"duplicate name", Config{Access: Access{Rules: []Rule{{Name: "a", Action: "allow"}, {Name: "a", Action: "deny"}}}}, "access.rules[1].name", "already used"},
		{"bad from", Config{Access: Access{Rules: []Rule{{From: []string{"any", "frontend"}, Action: "allow"}}}}, "access.rules[0].from[1]", "SPIFFE ID"},
		{"bad spiffe wildcard", Config{Access: Access{Rules: []Rule{{From: []string{"spiffe://mesh.local/svc-*"}, Action: "allow"}}}}, "access.rules[0].from[0]", "whole segment"},
		{"bad path", Config{Access: Access{Rules: []Rule{{Paths: []string{"/ok", "api/*"}, Action: "allow"}}}}, "access.rules[0].paths[1]", "does not start with /"},
		{"bad header", Config{Access: Access{Rules: []Rule{{Headers: []HeaderMatch{{Name: "x"}}, Action: "allow"}}}}, "access.rules[0].headers[0]", "exactly one"},
		{"bad port", Config{Access: Access{Rules: []Rule{{Ports: []int{0}, Action: "allow"}}}}, "access.rules[0].ports[0]", "invalid port"},
		{"zero rate", Config{RateLimits: []RateLimit{{}}}, "rate_limits[0].requests_per_second", "positive"},
		{"bad key", Config{RateLimits: []RateLimit{{RequestsPerSecond: 1, Key: "user"}}}, "rate_limits[0].key", "invalid key"},
		{"bad header key", Config{RateLimits: []RateLimit{{RequestsPerSecond: 1, Key: "header:"}}}, "rate_limits[0].key", "invalid key"},
		{"bad prefix", Config{RateLimits: []RateLimit{{RequestsPerSecond: 1, PathPrefix: "/api/*"}}}, "rate_limits[0].path_prefix", "plain prefix"},
		{"negative burst", Config{RateLimits: []RateLimit{{RequestsPerSecond: 1, Burst: -1}}}, "rate_limits[0].burst", "positive"},
		{"duplicate limit", Config{RateLimits: []RateLimit{{Name: "x", RequestsPerSecond: 1}, {Name: "x", RequestsPerSecond: 1}}}, "rate_limits[1].name", "already used"},
		{"conn key", Config{ConnectionRateLimit: &ConnectionRateLimit{ConnectionsPerSecond: 1, Key: "source"}}, "connection_rate_limit.key", "invalid key"},
		{"conn rate", Config{ConnectionRateLimit: &ConnectionRateLimit{}}, "connection_rate_limit.connections_per_second", "positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.cfg.Validate()
			if len(errs) != 1 {
				t.Fatalf("Validate() = %v, want one error", errs)
			}
			if got := PathString(errs[0].Path); got != tc.wantPath || !strings.Contains(errs[0].Msg, tc.wantMsg) {
				t.Errorf("Validate() = %q at %q, want %q at %q", errs[0].Msg, got, tc.wantMsg, tc.wantPath)
			}
			if _, err := Compile(&tc.cfg, Options{}); err == nil || !strings.Contains(err.Error(), tc.wantPath+": ") {
				t.Errorf("Compile() error = %v, want one naming %s", err, tc.wantPath)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := Config{
		Access:     Access{Default: "x", Rules: []Rule{{Action: "x"}, {From: []string{"bogus"}, Action: "allow"}}},
		RateLimits: []RateLimit{{Key: "x"}},
	}
	if errs := cfg.Validate(); len(errs) != 5 {
		t.Errorf("Validate() = %d errors %v, want 5", len(errs), errs)
	}
	var nilCfg *Config
	if _, err := Compile(nilCfg, Options{}); err != nil {
		t.Errorf("Compile(nil) error = %v", err)
	}
}

// TestDecodeYAML decodes the documented block strictly, as the config package does.
func TestDecodeYAML(t *testing.T) {
	const doc = `
normalize: {escaped_slashes: unescape, case_insensitive: true}
filter:
  max_header_count: 100
  max_header_bytes: 65536
  max_uri_length: 8192
  max_body_bytes: 10485760
  methods: [GET, HEAD, POST]
  deny_headers: [{name: user-agent, regex: ".*sqlmap.*"}, {name: x-debug, exact: ""}]
  ip_allow: [10.0.0.0/8]
  ip_deny: [10.66.0.0/16]
access:
  default: deny
  dry_run: false
  rules:
    - {from: [spiffe://mesh.local/svc/frontend], paths: [/api/*], methods: [GET], action: allow}
    - name: no-admin
      from: [any]
      paths: [/admin, /admin/*]
      headers: [{name: x-internal, absent: true}]
      ports: [21000]
      action: deny
rate_limits:
  - {path_prefix: /api/, requests_per_second: 100, burst: 200, key: source}
  - {name: per-ip, requests_per_second: 10.5, key: client_ip, max_keys: 5000}
  - {name: tenants, paths: [/api/**], key: "header:x-tenant", global: true}
connection_rate_limit: {connections_per_second: 500, burst: 1000, key: client_ip}
rate_limit_service: {address: 127.0.0.1:8081, domain: ferry, timeout: 20ms, failure_mode: closed}
`
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader([]byte(doc)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("Decode() error = %v", err)
	}
	if errs := c.Validate(); errs != nil {
		t.Fatalf("Validate() = %v", errs)
	}
	if c.Filter.DenyHeaders[1].Exact == nil || *c.Filter.DenyHeaders[1].Exact != "" {
		t.Error(`deny_headers[1].exact: "" did not decode as an explicit empty value`)
	}
	if c.Access.Rules[1].Name != "no-admin" || c.RateLimits[1].MaxKeys != 5000 || c.ConnectionRateLimit.Burst != 1000 ||
		c.RateLimitService.Timeout != Duration(20*time.Millisecond) || !c.RateLimits[2].Global {
		t.Errorf("decoded %+v", c)
	}

	var bad Config
	dec = yaml.NewDecoder(strings.NewReader("access: {rules: [{action: allow, to: {paths: [/x]}}]}"))
	dec.KnownFields(true)
	if err := dec.Decode(&bad); err == nil {
		t.Error("Decode(unknown key) error = nil, want an error")
	}
}
