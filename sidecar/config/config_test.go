package config

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/ferrymesh/ferry/policy"
)

// parse parses a test document: a raw string whose leading newline is dropped, so that
// its first line is line 1.
func parse(t *testing.T, doc string) (*Config, error) {
	t.Helper()
	return Parse("ferry.yaml", []byte(strings.TrimPrefix(doc, "\n")))
}

func TestParseMinimalDefaults(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "minimal.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	data, err := os.ReadFile(filepath.Join("testdata", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := &Config{
		Service: "web",
		Admin:   Admin{Address: "127.0.0.1:9901"},
		Outbound: []Outbound{{
			Listener: Listener{
				Address:           "127.0.0.1:9191",
				Protocol:          "http",
				IdleTimeout:       Duration(5 * time.Minute),
				ReadHeaderTimeout: Duration(10 * time.Second),
				MaxHeaderBytes:    65536,
			},
			Upstream: "api",
		}},
		Upstreams: []Upstream{{
			Name:                    "api",
			Endpoints:               []Endpoint{{Address: "127.0.0.1:8081", Weight: 1}},
			LB:                      "round_robin",
			Protocol:                "auto",
			ConnectTimeout:          Duration(time.Second),
			RequestTimeout:          Duration(15 * time.Second),
			IdleTimeout:             Duration(90 * time.Second),
			MaxIdleConnsPerEndpoint: 1024,
			CircuitBreaker:          CircuitBreaker{MaxConnections: 1024, MaxPending: 1024, MaxRequests: 1024},
			HealthyPanicThreshold:   50,
			TLS:                     "none",
		}},
		DrainTimeout: Duration(30 * time.Second),
		Telemetry:    Telemetry{AccessLogFormat: AccessLogJSON},
		Policy: policy.Config{
			Filter:     policy.Filter{Methods: []string{}, DenyHeaders: []policy.HeaderMatch{}, IPAllow: []string{}, IPDeny: []string{}},
			Access:     policy.Access{Rules: []policy.Rule{}},
			RateLimits: []policy.RateLimit{},
		},
		File:    filepath.Join("testdata", "minimal.yaml"),
		Version: hex.EncodeToString(sum[:])[:12],
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load() =\n%+v\nwant\n%+v", c, want)
	}
	if len(c.Version) != 12 {
		t.Errorf("Version = %q, want 12 hex digits", c.Version)
	}
}

func TestParseFull(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	in := c.Inbound
	if in == nil {
		t.Fatal("Inbound = nil, want the inbound listener")
	}
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"admin.address", c.Admin.Address, "127.0.0.1:9902"},
		{"inbound.target", in.Target, "127.0.0.1:8080"},
		{"inbound.idle_timeout", in.IdleTimeout, Duration(2 * time.Minute)},
		{"inbound.read_header_timeout", in.ReadHeaderTimeout, Duration(5 * time.Second)},
		{"inbound.max_header_bytes", in.MaxHeaderBytes, 32768},
		{"inbound.connect_timeout", in.ConnectTimeout, Duration(500 * time.Millisecond)},
		{"inbound.request_timeout", in.RequestTimeout, Duration(30 * time.Second)},
		{"outbound[1].protocol", c.Outbound[1].Protocol, "tcp"},
		{"outbound[1].idle_timeout", c.Outbound[1].IdleTimeout, Duration(2 * time.Hour)},
		{"outbound[2].address", c.Outbound[2].Address, "[::1]:16379"},
		{"outbound[2].idle_timeout (tcp default)", c.Outbound[2].IdleTimeout, Duration(time.Hour)},
		{"upstreams[0].lb", c.Upstreams[0].LB, "least_request"},
		{"upstreams[0].protocol", c.Upstreams[0].Protocol, "http2"},
		{"upstreams[0].connect_timeout", c.Upstreams[0].ConnectTimeout, Duration(250 * time.Millisecond)},
		{"upstreams[0].request_timeout (explicit 0s)", c.Upstreams[0].RequestTimeout, Duration(0)},
		{"upstreams[0].idle_timeout", c.Upstreams[0].IdleTimeout, Duration(time.Minute)},
		{"upstreams[0].max_idle_connections_per_endpoint", c.Upstreams[0].MaxIdleConnsPerEndpoint, 64},
		{"upstreams[0].endpoints", c.Upstreams[0].Endpoints, []Endpoint{{"127.0.0.1:8081", 1}, {"127.0.0.1:8082", 1}}},
		{"upstreams[1].endpoints", c.Upstreams[1].Endpoints, []Endpoint{{"db-1.internal:5432", 3}, {"db-2.internal:5432", 1}}},
		{"upstreams[1].request_timeout (default)", c.Upstreams[1].RequestTimeout, Duration(15 * time.Second)},
		{"upstreams[1].hash_on", c.Upstreams[1].HashOn, "source_ip"},
		{"upstreams[2].hash_on", c.Upstreams[2].HashOn, "header:x-user"},
		{"upstreams[0].healthy_panic_threshold", c.Upstreams[0].HealthyPanicThreshold, 30},
		{"upstreams[0].retries", c.Upstreams[0].Retries, &Retries{Attempts: 3, On: []string{"connect-failure", "5xx", "retriable-status-codes", "unavailable"},
			RetriableStatusCodes: []int{409}, PerTryTimeout: Duration(500 * time.Millisecond),
			Backoff: Backoff{Duration(10 * time.Millisecond), Duration(time.Second)}, BudgetPercent: 25.5, MinRetryConcurrency: 5, BufferLimit: 1024}},
		{"upstreams[0].circuit_breaker", c.Upstreams[0].CircuitBreaker, CircuitBreaker{100, 50, 200, 10}},
		{"upstreams[0].outlier_detection", c.Upstreams[0].OutlierDetection, &OutlierDetection{Interval: Duration(5 * time.Second),
			BaseEjectionTime: Duration(10 * time.Second), MaxEjectionTime: Duration(time.Minute), MaxEjectionPercent: 50,
			Consecutive5xx: 7, ConsecutiveGatewayFailure: 3, SuccessRate: &SuccessRate{3, 20, 1.5, 90},
			FailurePercentage: &FailurePercentage{40, 2, 10, 80}}},
		{"upstreams[0].health_check", c.Upstreams[0].HealthCheck, &HealthCheck{HTTP: "/healthz", ExpectedStatuses: []StatusRange{{200, 200}, {300, 399}},
			Interval: Duration(2 * time.Second), IntervalJitter: Duration(100 * time.Millisecond), Timeout: Duration(300 * time.Millisecond),
			UnhealthyThreshold: 4, HealthyThreshold: 1}},
		{"upstreams[1].health_check.tcp", c.Upstreams[1].HealthCheck.TCP, true},
		{"upstreams[2].health_check.grpc", *c.Upstreams[2].HealthCheck.GRPC, "cache.v1.Cache"},
		{"drain_timeout", c.DrainTimeout, Duration(10 * time.Second)},
		{"telemetry.access_log", c.Telemetry.AccessLog, "stdout"},
		{"mtls", c.MTLS, &MTLS{Mode: "permissive", TrustDomain: "example.org", Source: "files",
			CertFile: "/etc/ferry/web.pem", KeyFile: "/etc/ferry/web-key.pem", CAFile: "/etc/ferry/bundle.pem"}},
		{"upstreams[0].identity", c.Upstreams[0].Identity, "spiffe://example.org/ns/default/dc/dc1/svc/api"},
		{"upstreams[0].tls (default with mtls)", c.Upstreams[0].TLS, "mesh"},
		{"upstreams[1].tls", c.Upstreams[1].TLS, "none"},
		{"upstreams[1].identity (none without mesh)", c.Upstreams[1].Identity, ""},
		{"upstreams[2].tls", c.Upstreams[2].TLS, "simple"},
		{"upstreams[2].tls_ca_file", c.Upstreams[2].TLSCAFile, "/etc/ferry/cache-ca.pem"},
		{"upstreams[2].tls_server_name", c.Upstreams[2].TLSServerName, "cache.internal"},
	}
	for _, tc := range checks {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "DESIGN minimal file",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191, protocol: http}
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081, 127.0.0.1:8082]
    lb: least_request
`,
			check: func(t *testing.T, c *Config) {
				if got := len(c.Upstreams[0].Endpoints); got != 2 {
					t.Errorf("len(Endpoints) = %d, want 2", got)
				}
			},
		},
		{
			name: "explicit zero request_timeout stays zero, absent one is defaulted",
			doc: `
service: web
inbound: {address: 0.0.0.0:21000, target: 127.0.0.1:8080, request_timeout: 0s}
outbound:
  - {upstream: a, address: 127.0.0.1:9191}
upstreams:
  - {name: a, endpoints: [127.0.0.1:8081], request_timeout: 0s}
  - {name: b, endpoints: [127.0.0.1:8082]}
  - {name: c, endpoints: [127.0.0.1:8083], request_timeout: ~}
`,
			check: func(t *testing.T, c *Config) {
				for _, tc := range []struct {
					name string
					want Duration
				}{{"a", 0}, {"b", Duration(15 * time.Second)}, {"c", Duration(15 * time.Second)}} {
					if got := c.Upstream(tc.name).RequestTimeout; got != tc.want {
						t.Errorf("Upstream(%q).RequestTimeout = %v, want %v", tc.name, got, tc.want)
					}
				}
				if got := c.Inbound.RequestTimeout; got != 0 {
					t.Errorf("Inbound.RequestTimeout = %v, want 0s", got)
				}
				if got := c.Inbound.ConnectTimeout; got != Duration(time.Second) {
					t.Errorf("Inbound.ConnectTimeout = %v, want 1s", got)
				}
			},
		},
		{
			name: "tcp listener idle default and drain_timeout 0s",
			doc: `
service: db-client
outbound:
  - {upstream: db, address: 127.0.0.1:15432, protocol: tcp}
upstreams:
  - {name: db, endpoints: [{address: "db.internal:5432"}]}
drain_timeout: 0s
`,
			check: func(t *testing.T, c *Config) {
				if got := c.Outbound[0].IdleTimeout; got != Duration(time.Hour) {
					t.Errorf("Outbound[0].IdleTimeout = %v, want 1h", got)
				}
				if got := c.DrainTimeout; got != 0 {
					t.Errorf("DrainTimeout = %v, want 0s", got)
				}
				if got := c.Upstreams[0].Endpoints[0].Weight; got != 1 {
					t.Errorf("Weight = %d, want 1", got)
				}
			},
		},
		{
			name: "listen address with empty host and IPv6 endpoints",
			doc: `
service: web
outbound:
  - {upstream: api, address: ":9191"}
upstreams:
  - name: api
    endpoints: ["[fe80::1%eth0]:8081", "[2001:db8::1]:8081", api.svc.cluster.local.:80]
    lb: ring_hash
    hash_on: cookie:session
`,
			check: func(t *testing.T, c *Config) {
				if got := c.Outbound[0].Address; got != ":9191" {
					t.Errorf("Outbound[0].Address = %q, want :9191", got)
				}
			},
		},
		{
			name: "merge keys carry explicit zeros",
			doc: `
service: web
outbound:
  - {upstream: b, address: 127.0.0.1:9191}
upstreams:
  - &a {name: a, endpoints: [127.0.0.1:8081], request_timeout: 0s, lb: random}
  - <<: *a
    name: b
`,
			check: func(t *testing.T, c *Config) {
				b := c.Upstream("b")
				if b.RequestTimeout != 0 || b.LB != "random" || len(b.Endpoints) != 1 {
					t.Errorf("Upstream(b) = %+v, want request_timeout 0s, lb random, 1 endpoint from the merge", b)
				}
			},
		},
		{
			name: "leading document marker and trailing empty document",
			doc: `
---
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
---
# nothing here
`,
		},
		{
			name: "mtls defaults: strict, mesh.local, files; upstream identity derived",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls: {cert_file: web.pem, key_file: web-key.pem, ca_file: ca.pem}
`,
			check: func(t *testing.T, c *Config) {
				want := &MTLS{Mode: "strict", TrustDomain: "mesh.local", Source: "files", CertFile: "web.pem", KeyFile: "web-key.pem", CAFile: "ca.pem"}
				if !reflect.DeepEqual(c.MTLS, want) {
					t.Errorf("MTLS = %+v, want %+v", c.MTLS, want)
				}
				if u := c.Upstreams[0]; u.TLS != "mesh" || u.Identity != "spiffe://mesh.local/svc/api" {
					t.Errorf("Upstreams[0] tls, identity = %q, %q, want mesh, spiffe://mesh.local/svc/api", u.TLS, u.Identity)
				}
			},
		},
		{
			name: "mtls dev source in another trust domain; tls none and simple opt out",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}, {upstream: db, address: 127.0.0.1:9192, protocol: tcp}, {upstream: ext, address: 127.0.0.1:9193}]
upstreams:
  - {name: api, endpoints: [127.0.0.1:8081]}
  - {name: db, endpoints: [127.0.0.1:5432], tls: none}
  - {name: ext, endpoints: [example.com:443], tls: simple}
mtls: {source: dev, dir: /tmp/ca, trust_domain: example.org, mode: disabled}
`,
			check: func(t *testing.T, c *Config) {
				got := []string{c.Upstreams[0].TLS, c.Upstreams[0].Identity, c.Upstreams[1].TLS, c.Upstreams[1].Identity, c.Upstreams[2].TLS}
				want := []string{"mesh", "spiffe://example.org/svc/api", "none", "", "simple"}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("upstream tls, identity = %q, want %q", got, want)
				}
			},
		},
		{
			name: "no mtls block: upstreams default to tls none",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			check: func(t *testing.T, c *Config) {
				if u := c.Upstreams[0]; c.MTLS != nil || u.TLS != "none" || u.Identity != "" {
					t.Errorf("MTLS, tls, identity = %+v, %q, %q, want nil, none, empty", c.MTLS, u.TLS, u.Identity)
				}
			},
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
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func TestParseAnchorsFixture(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "anchors.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	canary := c.Upstream("api-canary")
	if canary == nil {
		t.Fatal(`Upstream("api-canary") = nil`)
	}
	if canary.LB != "random" || canary.RequestTimeout != 0 {
		t.Errorf("api-canary lb, request_timeout = %s, %v, want random, 0s (merged)", canary.LB, canary.RequestTimeout)
	}
	if want := []Endpoint{{"127.0.0.1:8091", 5}}; !reflect.DeepEqual(canary.Endpoints, want) {
		t.Errorf("api-canary endpoints = %v, want %v", canary.Endpoints, want)
	}
}

// TestParseErrors checks each kind of problem: the errors must be exactly want, in order,
// each given as a substring of its line (all of them start with "ferry.yaml:LINE: ").
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "mtls problems",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - {name: api, endpoints: [127.0.0.1:8081], identity: "http://x", tls_ca_file: ca.pem}
  - {name: db, endpoints: [127.0.0.1:5432], tls: none, identity: spiffe://mesh.local/svc/db}
  - {name: ext, endpoints: [127.0.0.1:443], tls: bogus}
mtls:
  mode: lenient
  trust_domain: "spiffe://mesh.local"
  source: dev
  cert_file: web.pem
`,
			want: []string{
				`ferry.yaml:4: upstreams[0].identity: invalid SPIFFE ID "http://x"`,
				`ferry.yaml:4: upstreams[0].tls_ca_file: tls_ca_file applies to tls simple only`,
				`ferry.yaml:5: upstreams[1].identity: identity applies to tls mesh only (tls is none)`,
				`ferry.yaml:6: upstreams[2].tls: unknown tls "bogus" (want mesh, none or simple)`,
				`ferry.yaml:8: mtls.mode: unknown mode "lenient" (want strict, permissive or disabled)`,
				`ferry.yaml:8: mtls.dir: missing dir`,
				`ferry.yaml:9: mtls.trust_domain: invalid trust domain "spiffe://mesh.local": want a name such as mesh.local, not a URI`,
				`ferry.yaml:11: mtls.cert_file: cert_file applies to source files only`,
			},
		},
		{
			name: "tls mesh without an mtls block",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081], tls: mesh}]
`,
			want: []string{
				`ferry.yaml:3: upstreams[0].tls: tls mesh needs an mtls block (or use tls: none or simple)`,
			},
		},
		{
			name: "mtls sds source needs sds.address",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls: {source: sds}
`,
			want: []string{
				`ferry.yaml:4: mtls.sds.address: missing sds.address (source sds needs the SDS server: unix:///path or host:port)`,
			},
		},
		{
			name: "mtls sds block without its address",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls:
  source: sds
  sds:
    cert_name: web
`,
			want: []string{
				`ferry.yaml:7: mtls.sds.address: missing sds.address`,
			},
		},
		{
			name: "mtls sds malformed addresses and names",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls:
  source: sds
  cert_file: web.pem
  sds:
    address: unix:run/spire/agent.sock
    cert_name: same
    validation_name: same
`,
			want: []string{
				`ferry.yaml:6: mtls.cert_file: cert_file applies to source files only (source sds takes the certificate from the SDS server)`,
				`ferry.yaml:8: mtls.sds.address: invalid SDS address "unix:run/spire/agent.sock" (want unix:///absolute/path)`,
				`ferry.yaml:10: mtls.sds.validation_name: validation_name is the same as cert_name ("same")`,
			},
		},
		{
			name: "mtls sds address without a port",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls: {source: sds, sds: {address: 127.0.0.1}}
`,
			want: []string{
				`ferry.yaml:4: mtls.sds.address: invalid SDS address "127.0.0.1" (want unix:///path or host:port)`,
			},
		},
		{
			name: "mtls sds block with another source, unknown sds key",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls:
  source: dev
  dir: /tmp/ca
  sds: {address: "unix:///run/spire/agent.sock", cert: web}
`,
			want: []string{
				`ferry.yaml:7: mtls.sds.cert: unknown key`,
				`ferry.yaml:7: mtls.sds: sds applies to source sds only (source is dev)`,
			},
		},
		{
			name: "mtls files source needs its three files",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
mtls:
  cert_file: web.pem
`,
			want: []string{
				`ferry.yaml:5: mtls.key_file: missing key_file`,
				`ferry.yaml:5: mtls.ca_file: missing ca_file`,
			},
		},
		{
			name: "empty file",
			doc:  ``,
			want: []string{"ferry.yaml:1: empty config"},
		},
		{
			name: "only comments",
			doc: `
# nothing yet
`,
			want: []string{"ferry.yaml:1: empty config"},
		},
		{
			name: "multiple documents",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
---
service: other
`,
			want: []string{"ferry.yaml:5: multiple YAML documents"},
		},
		{
			name: "syntax error",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191
upstreams: []
`,
			want: []string{"ferry.yaml:3: invalid YAML: did not find expected ',' or '}'"},
		},
		{
			// The list opened on line 1 is still open at the end of the input, line 2.
			name: "syntax error at the end of the input",
			doc: `
service: [web
`,
			want: []string{"ferry.yaml:2: invalid YAML: did not find expected ',' or ']'"},
		},
		{
			name: "scanner error",
			doc: `
service: web
outbound: a: b
`,
			want: []string{"ferry.yaml:2: invalid YAML: mapping values are not allowed in this context"},
		},
		{
			name: "block mapping error",
			doc: `
service: web
outbound:
  - upstream: api
 address: 127.0.0.1:9191
`,
			want: []string{"ferry.yaml:4: invalid YAML: did not find expected key"},
		},
		{
			name: "control character",
			doc:  "service: web\noutbound: []\nupstreams: [\x01]\n",
			want: []string{"ferry.yaml:3: invalid YAML: control characters are not allowed"},
		},
		{
			name: "root is not a mapping",
			doc: `
- service: web
`,
			want: []string{"ferry.yaml:1: want a mapping, got a list"},
		},
		{
			name: "unknown keys of later work",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191, tls: none}
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    lb: random
    locality: {zone: a}
drain_timeout: 5s
# (upstreams[].tls, mtls and policy are known keys now.)
policy:
  access: {default: allow}
telemetry:
  tracing: {otlp_endpoint: 127.0.0.1:4317}
`,
			want: []string{
				`ferry.yaml:3: outbound[0].tls: unknown key (known keys: address, protocol, idle_timeout, read_header_timeout, max_header_bytes, upstream, routes)`,
				`ferry.yaml:8: upstreams[0].locality: unknown key (known keys: name, endpoints,`,
			},
		},
		{
			name: "wrong types",
			doc: `
service: web
admin: 127.0.0.1:9901
outbound:
  - {upstream: api, address: 127.0.0.1:9191, max_header_bytes: lots}
upstreams:
  name: api
`,
			want: []string{
				`ferry.yaml:2: admin: want a mapping, got "127.0.0.1:9901"`,
				`ferry.yaml:4: outbound[0].max_header_bytes: want an integer, got "lots"`,
				`ferry.yaml:6: upstreams: want a list, got a mapping`,
			},
		},
		{
			name: "bad durations",
			doc: `
service: web
outbound:
  - upstream: api
    address: 127.0.0.1:9191
    idle_timeout: 5 minutes
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    connect_timeout: 10
    request_timeout: [1s]
drain_timeout: -3s
`,
			want: []string{
				`ferry.yaml:5: outbound[0].idle_timeout: invalid duration "5 minutes" (want a Go duration such as 1s, 250ms or 1m30s)`,
				`ferry.yaml:9: upstreams[0].connect_timeout: invalid duration "10"`,
				`ferry.yaml:10: upstreams[0].request_timeout: want a duration such as 1s or 250ms, got a list`,
				`ferry.yaml:11: drain_timeout: must not be negative, got -3s`,
			},
		},
		{
			name: "zero and negative timeouts",
			doc: `
service: web
inbound: {address: 0.0.0.0:21000, target: 127.0.0.1:8080, connect_timeout: 0s, request_timeout: -1s}
outbound:
  - {upstream: api, address: 127.0.0.1:9191, read_header_timeout: 0s, max_header_bytes: 0}
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    idle_timeout: -90s
    max_idle_connections_per_endpoint: 0
`,
			want: []string{
				`ferry.yaml:2: inbound.connect_timeout: must be positive, got 0s`,
				`ferry.yaml:2: inbound.request_timeout: must not be negative, got -1s`,
				`ferry.yaml:4: outbound[0].read_header_timeout: must be positive, got 0s`,
				`ferry.yaml:4: outbound[0].max_header_bytes: must be positive, got 0`,
				`ferry.yaml:8: upstreams[0].idle_timeout: must be positive, got -1m30s`,
				`ferry.yaml:9: upstreams[0].max_idle_connections_per_endpoint: must be at least 1, got 0`,
			},
		},
		{
			name: "bad addresses",
			doc: `
service: web
admin: {address: localhost}
inbound:
  address: 0.0.0.0:99999
  target: 127.0.0.1:http
outbound:
  - {upstream: api, address: "bad host:9191"}
  - {upstream: api, address: "1.2.3.400:9192"}
upstreams:
  - name: api
    endpoints: [":8081", "127.0.0.1:0", {address: "::1:80"}]
`,
			want: []string{
				`ferry.yaml:2: admin.address: invalid address "localhost": missing port in address (want host:port)`,
				`ferry.yaml:4: inbound.address: invalid address "0.0.0.0:99999": port must be a number from 1 to 65535`,
				`ferry.yaml:5: inbound.target: invalid target "127.0.0.1:http": port must be a number from 1 to 65535`,
				`ferry.yaml:7: outbound[0].address: invalid address "bad host:9191": invalid host "bad host"`,
				`ferry.yaml:8: outbound[1].address: invalid address "1.2.3.400:9192": invalid host "1.2.3.400"`,
				`ferry.yaml:11: upstreams[0].endpoints[0]: invalid endpoint address ":8081": missing host`,
				`ferry.yaml:11: upstreams[0].endpoints[1]: invalid endpoint address "127.0.0.1:0": port must be a number from 1 to 65535`,
				`ferry.yaml:11: upstreams[0].endpoints[2]: invalid endpoint address "::1:80": too many colons in address (want host:port)`,
			},
		},
		{
			name: "inbound target_protocol",
			doc: `
service: web
inbound: {address: 127.0.0.1:21000, target: 127.0.0.1:8080, target_protocol: http3}
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{
				`ferry.yaml:2: inbound.target_protocol: unknown protocol "http3" (want auto, http1 or http2)`,
			},
		},
		{
			name: "inbound target_protocol on tcp",
			doc: `
service: db
inbound: {address: 127.0.0.1:21000, target: 127.0.0.1:5432, protocol: tcp, target_protocol: http1}
outbound: []
upstreams: []
`,
			want: []string{
				`ferry.yaml:2: inbound.target_protocol: target_protocol applies to http listeners only`,
			},
		},
		{
			name: "missing service, names and targets",
			doc: `
inbound:
  address: 0.0.0.0:21000
outbound:
  - {upstream: api}
  - {address: 127.0.0.1:9192}
upstreams:
  - endpoints: [127.0.0.1:8081]
`,
			want: []string{
				`ferry.yaml:1: service: missing service name`,
				`ferry.yaml:2: inbound.target: missing target (want host:port)`,
				`ferry.yaml:4: outbound[0].address: missing address (want host:port)`,
				`ferry.yaml:4: outbound[0].upstream: unknown upstream "api" (no upstreams are defined)`,
				`ferry.yaml:5: outbound[1].upstream: missing upstream`,
				`ferry.yaml:7: upstreams[0].name: missing name`,
			},
		},
		{
			name: "invalid names",
			doc: `
service: "web app"
outbound:
  - {upstream: api/v1, address: 127.0.0.1:9191}
upstreams:
  - {name: api/v1, endpoints: [127.0.0.1:8081]}
`,
			want: []string{
				`ferry.yaml:1: service: invalid name "web app" (want letters, digits`,
				`ferry.yaml:5: upstreams[0].name: invalid name "api/v1"`,
			},
		},
		{
			name: "outbound naming a missing upstream",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
  - {upstream: apx, address: 127.0.0.1:9192}
upstreams:
  - {name: api, endpoints: [127.0.0.1:8081]}
`,
			want: []string{`ferry.yaml:4: outbound[1].upstream: unknown upstream "apx" (have api)`},
		},
		{
			name: "listeners sharing an address",
			doc: `
service: web
inbound:
  address: 127.0.0.1:9191
  target: 127.0.0.1:8080
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
  - {upstream: api, address: 127.0.0.1:9901}
  - {upstream: api, address: 0.0.0.0:9300}
  - {upstream: api, address: "127.0.0.1:9300"}
  - {upstream: api, address: "127.0.0.1:09191"}
upstreams:
  - {name: api, endpoints: [127.0.0.1:8081]}
`,
			want: []string{
				`ferry.yaml:6: outbound[0].address: address 127.0.0.1:9191 already used by inbound.address, line 3`,
				`ferry.yaml:7: outbound[1].address: address 127.0.0.1:9901 already used by admin.address (the default)`,
				`ferry.yaml:9: outbound[3].address: address 127.0.0.1:9300 overlaps outbound[2].address (0.0.0.0:9300, line 8)`,
				`ferry.yaml:10: outbound[4].address: address 127.0.0.1:09191 overlaps inbound.address (127.0.0.1:9191, line 3)`,
			},
		},
		{
			name: "duplicate upstream names and endpoints",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081, 127.0.0.1:8081]
  - name: api
    endpoints: [127.0.0.1:8082]
`,
			want: []string{
				`ferry.yaml:6: upstreams[0].endpoints[1]: duplicate endpoint 127.0.0.1:8081 (first at upstreams[0].endpoints[0])`,
				`ferry.yaml:7: upstreams[1].name: duplicate upstream name "api" (first at upstreams[0], line 5)`,
			},
		},
		{
			name: "upstreams without endpoints",
			doc: `
service: web
outbound:
  - {upstream: a, address: 127.0.0.1:9191}
upstreams:
  - name: a
  - name: b
    endpoints: []
`,
			want: []string{
				`ferry.yaml:5: upstreams[0].endpoints: upstream "a" has no endpoints`,
				`ferry.yaml:7: upstreams[1].endpoints: upstream "b" has no endpoints`,
			},
		},
		{
			name: "bad lb policy",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
  - {upstream: db, address: 127.0.0.1:9192}
upstreams:
  - name: api
    endpoints:
      - 127.0.0.1:8081
      - 127.0.0.1:8082
    lb: least_request
  - name: db
    endpoints:
      - 127.0.0.1:5432
    lb: fastest
`,
			want: []string{`ferry.yaml:14: upstreams[1].lb: unknown policy "fastest" (want round_robin, least_request, random, ring_hash, maglev)`},
		},
		{
			name: "hash_on",
			doc: `
service: web
outbound:
  - {upstream: a, address: 127.0.0.1:9191}
upstreams:
  - {name: a, endpoints: [127.0.0.1:8081], lb: ring_hash, hash_on: "header:"}
  - {name: b, endpoints: [127.0.0.1:8082], lb: maglev, hash_on: query:id}
  - {name: c, endpoints: [127.0.0.1:8083], hash_on: source_ip}
  - {name: d, endpoints: [127.0.0.1:8084], lb: least_request, hash_on: "cookie:sid"}
  - {name: e, endpoints: [127.0.0.1:8085], lb: maglev, hash_on: "header:x user"}
  - {name: f, endpoints: [127.0.0.1:8086], lb: sticky, hash_on: source_ip}
`,
			want: []string{
				`ferry.yaml:5: upstreams[0].hash_on: invalid hash_on "header:" (want header:NAME, cookie:NAME or source_ip)`,
				`ferry.yaml:6: upstreams[1].hash_on: invalid hash_on "query:id"`,
				`ferry.yaml:7: upstreams[2].hash_on: hash_on needs lb ring_hash or maglev (lb is round_robin)`,
				`ferry.yaml:8: upstreams[3].hash_on: hash_on needs lb ring_hash or maglev (lb is least_request)`,
				`ferry.yaml:9: upstreams[4].hash_on: invalid hash_on "header:x user"`,
				`ferry.yaml:10: upstreams[5].lb: unknown policy "sticky"`,
			},
		},
		{
			name: "bad protocols",
			doc: `
service: web
inbound: {address: 0.0.0.0:21000, target: 127.0.0.1:8080, protocol: grpc}
outbound:
  - {upstream: api, address: 127.0.0.1:9191, protocol: udp}
upstreams:
  - {name: api, endpoints: [127.0.0.1:8081], protocol: h3}
`,
			want: []string{
				`ferry.yaml:2: inbound.protocol: unknown protocol "grpc" (want http or tcp)`,
				`ferry.yaml:4: outbound[0].protocol: unknown protocol "udp" (want http or tcp)`,
				`ferry.yaml:6: upstreams[0].protocol: unknown protocol "h3" (want auto, http1 or http2)`,
			},
		},
		{
			name: "weights",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - name: api
    endpoints:
      - {address: 127.0.0.1:8081, weight: 0}
      - {address: 127.0.0.1:8082, weight: 1000001}
      - {address: 127.0.0.1:8083, weight: -1}
      - {address: 127.0.0.1:8084, weight: heavy}
      - {address: 127.0.0.1:8085, weight: 1000000}
`,
			want: []string{
				`ferry.yaml:7: upstreams[0].endpoints[0].weight: weight must be from 1 to 1000000, got 0`,
				`ferry.yaml:8: upstreams[0].endpoints[1].weight: weight must be from 1 to 1000000, got 1000001`,
				`ferry.yaml:9: upstreams[0].endpoints[2].weight: want an integer from 1 to 1000000, got -1`,
				`ferry.yaml:10: upstreams[0].endpoints[3].weight: want an integer from 1 to 1000000, got "heavy"`,
			},
		},
		{
			name: "bad endpoint forms",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - name: api
    endpoints:
      - {address: 127.0.0.1:8081, zone: a}
      - [127.0.0.1, 8082]
      - 127.0.0.1:8083
      - {addr: 127.0.0.1:8084}
`,
			want: []string{
				`ferry.yaml:7: upstreams[0].endpoints[0].zone: unknown key (known keys: address, weight)`,
				`ferry.yaml:8: upstreams[0].endpoints[1]: want "host:port" or a mapping {address, weight}, got a list`,
				`ferry.yaml:10: upstreams[0].endpoints[3].addr: unknown key (known keys: address, weight)`,
				`ferry.yaml:10: upstreams[0].endpoints[3]: missing endpoint address (want host:port)`,
			},
		},
		{
			name: "duplicate keys",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191, address: 127.0.0.1:9192}
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    lb: random
    lb: maglev
`,
			want: []string{
				`ferry.yaml:3: outbound[0].address: duplicate key (first at line 3)`,
				`ferry.yaml:8: upstreams[0].lb: duplicate key (first at line 7)`,
			},
		},
		{
			// A decoding problem elsewhere in upstreams does not hide an unknown upstream,
			// and an endpoint with an unknown key still has its other problems reported.
			name: "decoding problems do not hide other problems",
			doc: `
service: web
outbound:
  - {upstream: nope, address: 127.0.0.1:9191}
upstreams:
  - name: api
    endpoints: [{address: "x", weight: 0, zone: b}, 127.0.0.1:8081, 127.0.0.1:8081]
    retries: 3
`,
			want: []string{
				`ferry.yaml:3: outbound[0].upstream: unknown upstream "nope" (have api)`,
				`ferry.yaml:6: upstreams[0].endpoints[0].zone: unknown key`,
				`ferry.yaml:6: upstreams[0].endpoints[0]: invalid endpoint address "x": missing port in address`,
				`ferry.yaml:6: upstreams[0].endpoints[0].weight: weight must be from 1 to 1000000, got 0`,
				`ferry.yaml:6: upstreams[0].endpoints[2]: duplicate endpoint 127.0.0.1:8081 (first at upstreams[0].endpoints[1])`,
				`ferry.yaml:7: upstreams[0].retries: want a mapping, got 3`,
			},
		},
		{
			name: "list given as a mapping on one line",
			doc: `
service: web
outbound: {api: {address: 127.0.0.1:9191}}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`,
			want: []string{`ferry.yaml:2: outbound: want a list, got a mapping`},
		},
		{
			name: "endpoint mappings with merges, anchors and bad values",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - name: api
    endpoints:
      - &heavy {address: 127.0.0.1:8081, weight: 7}
      - {<<: *heavy, address: 127.0.0.1:8082}
      - {<<: [*heavy, {zone: b}], address: 127.0.0.1:8083}
      - {<<: 5, address: 127.0.0.1:8084}
      - {address: [127.0.0.1:8085], weight: {w: 1}}
      - {address: 127.0.0.1:8086, address: 127.0.0.1:8087}
`,
			want: []string{
				`ferry.yaml:9: upstreams[0].endpoints[2].zone: unknown key (known keys: address, weight)`,
				`ferry.yaml:10: upstreams[0].endpoints[3]: merge (<<) needs a mapping or a list of mappings, got 5`,
				`ferry.yaml:11: upstreams[0].endpoints[4].address: want a string, got a list`,
				`ferry.yaml:11: upstreams[0].endpoints[4].weight: want an integer from 1 to 1000000, got a mapping`,
				`ferry.yaml:12: upstreams[0].endpoints[5].address: duplicate key (first at line 12)`,
			},
		},
		{
			name: "every endpoint failed to decode",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - {name: api, endpoints: [{address: 127.0.0.1, zone: a}]}
`,
			want: []string{
				`ferry.yaml:5: upstreams[0].endpoints[0].zone: unknown key`,
				`ferry.yaml:5: upstreams[0].endpoints[0]: invalid endpoint address "127.0.0.1": missing port in address`,
			},
		},
		{
			// A name that failed to decode must not make outbounds naming it "unknown".
			name: "upstream name of the wrong type",
			doc: `
service: web
outbound:
  - {upstream: api, address: 127.0.0.1:9191}
upstreams:
  - name: {first: api}
    endpoints: [127.0.0.1:8081]
`,
			want: []string{`ferry.yaml:5: upstreams[0].name: want a string, got a mapping`},
		},
		{
			// Items that fail to decode are left out of the slice by yaml.v3; later items
			// must still be reported with their own index and line.
			name: "problems after a list item that failed to decode",
			doc: `
service: web
outbound:
  - 9191
  - {upstream: apx, address: 127.0.0.1:9192}
upstreams:
  - just-a-name
  - name: api
    endpoints: [127.0.0.1:8081, bad]
    lb: fastest
`,
			want: []string{
				`ferry.yaml:3: outbound[0]: want a mapping, got 9191`,
				`ferry.yaml:6: upstreams[0]: want a mapping, got "just-a-name"`,
				`ferry.yaml:8: upstreams[1].endpoints[1]: invalid endpoint address "bad": missing port in address`,
				`ferry.yaml:9: upstreams[1].lb: unknown policy "fastest"`,
			},
		},
		{
			name: "retries",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    retries:
      attempts: 0
      on: [connect-failure, timeout, 5xx]
      retriable_status_codes: [409, 700]
      per_try_timeout: -1s
      backoff: {base: 100ms, max: 50ms}
      budget_percent: 120
      min_retry_concurrency: -1
      buffer_limit: -5
  - name: b
    endpoints: [127.0.0.1:8082]
    retries: {on: [retriable-status-codes], unknown: 1}
  - name: c
    endpoints: [127.0.0.1:8083]
    retries: {on: []}
`,
			want: []string{
				`ferry.yaml:7: upstreams[0].retries.attempts: must be from 1 to 10, got 0`,
				`ferry.yaml:8: upstreams[0].retries.on[1]: unknown retry condition "timeout" (want connect-failure, refused-stream, reset, gateway-error, 5xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)`,
				`ferry.yaml:9: upstreams[0].retries.retriable_status_codes: codes are listed but on does not have retriable-status-codes`,
				`ferry.yaml:9: upstreams[0].retries.retriable_status_codes[1]: must be an HTTP status from 100 to 599, got 700`,
				`ferry.yaml:10: upstreams[0].retries.per_try_timeout: must not be negative, got -1s`,
				`ferry.yaml:11: upstreams[0].retries.backoff.max: must be at least backoff.base (100ms), got 50ms`,
				`ferry.yaml:12: upstreams[0].retries.budget_percent: must be from 0 to 100, got 120`,
				`ferry.yaml:13: upstreams[0].retries.min_retry_concurrency: must not be negative, got -1`,
				`ferry.yaml:14: upstreams[0].retries.buffer_limit: must not be negative, got -5`,
				`ferry.yaml:17: upstreams[1].retries.unknown: unknown key (known keys: attempts, on, retriable_status_codes, per_try_timeout, backoff, budget_percent, min_retry_concurrency, buffer_limit)`,
				`ferry.yaml:17: upstreams[1].retries.retriable_status_codes: on has retriable-status-codes but no codes are listed`,
				`ferry.yaml:20: upstreams[2].retries.on: must list at least one condition`,
			},
		},
		{
			name: "circuit breaker, outlier detection and panic threshold",
			doc: `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081]
    healthy_panic_threshold: 101
    circuit_breaker: {max_connections: -1, max_pending: -2, max_requests: lots, max_retries: -4}
    outlier_detection:
      interval: 0s
      base_ejection_time: -1s
      max_ejection_percent: 150
      consecutive_5xx: -1
      success_rate: {stdev_factor: 1900, enforcing: 200}
      failure_percentage: {threshold: 101, minimum_hosts: -1, request_volume: many}
`,
			want: []string{
				`ferry.yaml:6: upstreams[0].healthy_panic_threshold: must be a percentage from 0 to 100, got 101`,
				`ferry.yaml:7: upstreams[0].circuit_breaker.max_requests: want an integer, got "lots"`,
				`ferry.yaml:7: upstreams[0].circuit_breaker.max_connections: must not be negative, got -1`,
				`ferry.yaml:7: upstreams[0].circuit_breaker.max_pending: must not be negative, got -2`,
				`ferry.yaml:7: upstreams[0].circuit_breaker.max_retries: must not be negative, got -4`,
				`ferry.yaml:9: upstreams[0].outlier_detection.interval: must be positive, got 0s`,
				`ferry.yaml:10: upstreams[0].outlier_detection.base_ejection_time: must be positive, got -1s`,
				`ferry.yaml:11: upstreams[0].outlier_detection.max_ejection_percent: must be a percentage from 0 to 100, got 150`,
				`ferry.yaml:12: upstreams[0].outlier_detection.consecutive_5xx: must not be negative, got -1`,
				`ferry.yaml:13: upstreams[0].outlier_detection.success_rate.stdev_factor: 1900 standard deviations can never be reached: write the factor itself (1.9), not Envoy's thousandths (1900)`,
				`ferry.yaml:13: upstreams[0].outlier_detection.success_rate.enforcing: must be a percentage from 0 to 100, got 200`,
				`ferry.yaml:14: upstreams[0].outlier_detection.failure_percentage.request_volume: want an integer, got "many"`,
				`ferry.yaml:14: upstreams[0].outlier_detection.failure_percentage.threshold: must be a percentage from 0 to 100, got 101`,
				`ferry.yaml:14: upstreams[0].outlier_detection.failure_percentage.minimum_hosts: must not be negative, got -1`,
			},
		},
		{
			name: "health checks",
			doc: `
service: web
outbound: [{upstream: a, address: 127.0.0.1:9191}]
upstreams:
  - name: a
    endpoints: [127.0.0.1:8081]
    health_check: {interval: 1s}
  - name: b
    endpoints: [127.0.0.1:8082]
    health_check: {http: /healthz, tcp: true, timeout: 0s, unhealthy_threshold: 0, healthy_threshold: -1}
  - name: c
    endpoints: [127.0.0.1:8083]
    health_check: {http: healthz, expected_statuses: [200, "500-400", 99, "2xx", [1]]}
  - name: d
    endpoints: [127.0.0.1:8084]
    health_check: {grpc: "", expected_statuses: [200], interval_jitter: -1s, interval: 0s}
  - name: e
    endpoints: [127.0.0.1:8085]
    health_check: {http: /, expected_statuses: []}
`,
			want: []string{
				`ferry.yaml:6: upstreams[0].health_check: want one of http: PATH, tcp: true or grpc: SERVICE`,
				`ferry.yaml:9: upstreams[1].health_check.tcp: want only one of http, tcp and grpc, got http and tcp`,
				`ferry.yaml:9: upstreams[1].health_check.timeout: must be positive, got 0s`,
				`ferry.yaml:9: upstreams[1].health_check.unhealthy_threshold: must be at least 1, got 0`,
				`ferry.yaml:9: upstreams[1].health_check.healthy_threshold: must be at least 1, got -1`,
				`ferry.yaml:12: upstreams[2].health_check.expected_statuses[3]: invalid status "2xx" (want a code such as 200 or a range such as "200-299")`,
				`ferry.yaml:12: upstreams[2].health_check.expected_statuses[4]: want a status code such as 200 or a range such as "200-299", got a list`,
				`ferry.yaml:12: upstreams[2].health_check.http: invalid path "healthz" (want an absolute path such as /healthz)`,
				`ferry.yaml:12: upstreams[2].health_check.expected_statuses[1]: invalid status range 500-400 (want codes from 100 to 599, low to high)`,
				`ferry.yaml:12: upstreams[2].health_check.expected_statuses[2]: invalid status range 99 (want codes from 100 to 599, low to high)`,
				`ferry.yaml:15: upstreams[3].health_check.expected_statuses: applies to http checks only`,
				`ferry.yaml:15: upstreams[3].health_check.interval: must be positive, got 0s`,
				`ferry.yaml:15: upstreams[3].health_check.interval_jitter: must not be negative, got -1s`,
				`ferry.yaml:18: upstreams[4].health_check.expected_statuses: must list at least one status`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.doc)
			if err == nil {
				t.Fatalf("Parse() = %+v, want errors %q", c, tc.want)
			}
			if c != nil {
				t.Errorf("Parse() config = %+v, want nil with an error", c)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse() error = %T %v, want config.Errors", err, err)
			}
			if len(errs) != len(tc.want) {
				t.Errorf("Parse() returned %d errors, want %d:\n%v", len(errs), len(tc.want), err)
			}
			for i, want := range tc.want {
				if i >= len(errs) {
					break
				}
				if got := errs[i].Error(); !strings.Contains(got, want) {
					t.Errorf("Parse() error[%d] = %v, want substring %q", i, got, want)
				}
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "three_errors.yaml"))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load() error = %v, want config.Errors", err)
	}
	want := []Error{
		{File: "testdata/three_errors.yaml", Line: 7, Path: "upstreams[0].retries.attempts"},
		{File: "testdata/three_errors.yaml", Line: 8, Path: "upstreams[0].connect_timeout"},
		{File: "testdata/three_errors.yaml", Line: 9, Path: "upstreams[0].lb"},
	}
	if len(errs) != len(want) {
		t.Fatalf("Load() error = %v, want %d problems", err, len(want))
	}
	for i, w := range want {
		e := errs[i]
		if e.File != filepath.FromSlash(w.File) || e.Line != w.Line || e.Path != w.Path || e.Msg == "" {
			t.Errorf("Load() error[%d] = %v, want %s:%d: %s: ...", i, e, w.File, w.Line, w.Path)
		}
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != 3 {
		t.Errorf("Error() has %d lines, want 3:\n%v", got, err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load() error = %v, want one wrapping fs.ErrNotExist", err)
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("Load() error = %v, want config.Errors with one problem", err)
	}
	if !strings.Contains(err.Error(), "nope.yaml: cannot read config:") {
		t.Errorf("Load() error = %v, want substring %q", err, "nope.yaml: cannot read config:")
	}
}

func TestParseUTF16(t *testing.T) {
	const doc = "service: web\noutbound: [{upstream: api, address: 127.0.0.1:9191}]\nupstreams: [{name: api, lb: fast, endpoints: [127.0.0.1:8081]}]\n"
	for _, tc := range []struct {
		name  string
		order binary.AppendByteOrder
		bom   []byte
	}{
		{"big endian", binary.BigEndian, []byte{0xfe, 0xff}},
		{"little endian", binary.LittleEndian, []byte{0xff, 0xfe}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.bom
			for _, u := range utf16.Encode([]rune(doc)) {
				data = tc.order.AppendUint16(data, u)
			}
			_, err := Parse("ferry.yaml", data)
			want := `ferry.yaml:3: upstreams[0].lb: unknown policy "fast"`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Parse() error = %v, want substring %q", err, want)
			}
			if _, err := Parse("ferry.yaml", data[:len(data)-1]); err == nil || !strings.Contains(err.Error(), "ferry.yaml:1: invalid UTF-16") {
				t.Errorf("Parse() of odd-length UTF-16 error = %v, want substring %q", err, "ferry.yaml:1: invalid UTF-16")
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	data := make([]byte, MaxFileSize+1)
	_, err := Parse("big.yaml", data)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Parse() error = %v, want substring %q", err, "larger than")
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "ferry.yaml", Line: 14, Path: "upstreams[1].lb", Msg: "bad"}, "ferry.yaml:14: upstreams[1].lb: bad"},
		{Error{File: "ferry.yaml", Line: 1, Msg: "empty"}, "ferry.yaml:1: empty"},
		{Error{File: "ferry.yaml", Path: "service", Msg: "missing"}, "ferry.yaml: service: missing"},
		{Error{Path: "service", Msg: "missing"}, "service: missing"},
		{Error{Line: 3, Msg: "x"}, "line 3: x"},
	}
	for _, tc := range tests {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	es := Errors{&tests[0].e, &tests[1].e}
	if got, want := es.Error(), tests[0].want+"\n"+tests[1].want; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

func TestPathString(t *testing.T) {
	tests := []struct {
		p    path
		want string
	}{
		{nil, ""},
		{path{"service"}, "service"},
		{path{"upstreams", 1, "lb"}, "upstreams[1].lb"},
		{path{"upstreams", 0, "endpoints", 2}, "upstreams[0].endpoints[2]"},
		{path{"a b"}, `"a b"`},
	}
	for _, tc := range tests {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("path%v.String() = %q, want %q", []any(tc.p), got, tc.want)
		}
	}
}

func TestValidateProgrammatic(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
	c.Upstreams[0].LB = "fastest"
	c.Upstreams[1].Endpoints[0].Weight = 0
	err = c.Validate()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("Validate() = %v, want 2 problems", err)
	}
	for i, want := range []string{
		"full.yaml: upstreams[0].lb: unknown policy",
		"full.yaml: upstreams[1].endpoints[0].weight: weight must be from 1",
	} {
		if got := errs[i].Error(); !strings.Contains(got, want) {
			t.Errorf("Validate() error[%d] = %v, want substring %q", i, got, want)
		}
		if errs[i].Line != 0 {
			t.Errorf("Validate() error[%d].Line = %d, want 0 (no file)", i, errs[i].Line)
		}
	}
}

func TestUpstreamLookup(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	for _, name := range []string{"api", "db", "cache"} {
		if u := c.Upstream(name); u == nil || u.Name != name {
			t.Errorf("Upstream(%q) = %v, want the upstream named %q", name, u, name)
		}
	}
	if u := c.Upstream("nope"); u != nil {
		t.Errorf("Upstream(%q) = %v, want nil", "nope", u)
	}
	if c.Upstream("api") != &c.Upstreams[0] {
		t.Errorf("Upstream(%q) does not point into Upstreams", "api")
	}
}

func TestDurationMarshal(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "minimal.yaml"))
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("json.Marshal() error = %v", err)
	}
	for _, want := range []string{`"connect_timeout":"1s"`, `"idle_timeout":"5m0s"`, `"drain_timeout":"30s"`, `"version":"` + c.Version + `"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("json.Marshal() = %s, want substring %q", b, want)
		}
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"1m30s"`), &d); err != nil || d != Duration(90*time.Second) {
		t.Errorf("json.Unmarshal(1m30s) = %v, %v, want 1m30s, nil", d, err)
	}
	if err := json.Unmarshal([]byte(`1000`), &d); err == nil {
		t.Errorf("json.Unmarshal(1000) error = nil, want an error")
	}
	y, err := Duration(1500 * time.Millisecond).MarshalYAML()
	if err != nil || y != "1.5s" {
		t.Errorf("MarshalYAML() = %v, %v, want 1.5s, nil", y, err)
	}
}

func TestHostsOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"localhost", "LOCALHOST", true},
		{"localhost", "127.0.0.1", false},
		{"", "127.0.0.1", true},
		{"::", "127.0.0.1", true},
		{"0.0.0.0", "10.0.0.1", true},
		{"0.0.0.0", "db.internal", true},
		{"0.0.0.0", "::1", false},
		{"::ffff:127.0.0.1", "127.0.0.1", true},
		{"::1", "0:0:0:0:0:0:0:1", true},
		{"::1", "::2", false},
	}
	for _, tc := range tests {
		if got := hostsOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("hostsOverlap(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := hostsOverlap(tc.b, tc.a); got != tc.want {
			t.Errorf("hostsOverlap(%q, %q) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}

func TestCountLines(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 1},
		{"a", 1},
		{"a\n", 2},
		{"a\r\nb", 2},
		{"a\rb\nc", 3},
		{"a\u0085b\u2028c\u2029d", 4},
	}
	for _, tc := range tests {
		if got := countLines([]byte(tc.in)); got != tc.want {
			t.Errorf("countLines(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
