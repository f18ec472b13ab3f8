package policy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

const (
	frontend = "spiffe://mesh.local/svc/frontend"
	batch    = "spiffe://mesh.local/svc/batch"
	other    = "spiffe://other.org/svc/frontend"
)

func mustCompile(t testing.TB, c *Config) *Policy {
	t.Helper()
	p, err := Compile(c, Options{})
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	return p
}

// req builds a Request, normalizing rawPath as the proxy does.
func req(t testing.TB, p *Policy, method, rawPath, id, ip string) *Request {
	t.Helper()
	_, m, d := p.NormalizePath(rawPath)
	if !d.Allowed {
		t.Fatalf("NormalizePath(%q) refused: %s", rawPath, d.Reply.Details)
	}
	r := &Request{Method: method, Path: m, SourceID: id, Header: http.Header{}, DestPort: 21000}
	if ip != "" {
		r.SourceIP = netip.MustParseAddr(ip)
	}
	return r
}

func TestAccess(t *testing.T) {
	cfg := &Config{Access: Access{Rules: []Rule{
		{Name: "frontend-api", From: []string{frontend}, Paths: []string{"/api/*"}, Methods: []string{"GET", "HEAD"}, Action: "allow"},
		{Name: "no-admin", From: []string{"any"}, Paths: []string{"/api/admin", "/api/admin/*"}, Action: "deny"},
		{Name: "any-svc-health", From: []string{"spiffe://mesh.local/svc/*"}, Paths: []string{"/healthz"}, Action: "allow"},
		{Name: "office", From: []string{"192.168.0.0/16"}, Paths: []string{"/debug/*"}, Action: "allow"},
		{Name: "batch-write", From: []string{batch}, Methods: []string{"POST"}, Paths: []string{"/api/jobs"},
			Headers: []HeaderMatch{{Name: "x-batch-token", Present: true}}, Action: "allow"},
		{Name: "no-batch-on-admin-port", From: []string{batch}, Ports: []int{9000}, Action: "deny"},
	}}}
	p := mustCompile(t, cfg)
	tests := []struct {
		name     string
		method   string
		path     string
		id       string
		ip       string
		header   http.Header
		port     uint16
		wantOK   bool
		wantRule string
	}{
		{"allowed GET", "GET", "/api/users", frontend, "10.0.0.1", nil, 0, true, "frontend-api"},
		{"POST not allowed", "POST", "/api/users", frontend, "10.0.0.1", nil, 0, false, "default"},
		{"other identity", "GET", "/api/users", batch, "10.0.0.1", nil, 0, false, "default"},
		{"other trust domain", "GET", "/api/users", other, "10.0.0.1", nil, 0, false, "default"},
		{"unauthenticated", "GET", "/api/users", "", "10.0.0.1", nil, 0, false, "default"},
		{"deny wins over allow", "GET", "/api/admin/users", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"deny exact", "GET", "/api/admin", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"deny via encoding", "GET", "/api/%61dmin", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"deny via dot segments", "GET", "/api/x/../admin", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"deny via double slash", "GET", "/api//admin", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"deny via params", "GET", "/api/admin;x=1", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"deny via tomcat dot-dot", "GET", "/api/x/..;/admin", frontend, "10.0.0.1", nil, 0, false, "no-admin"},
		{"wildcard identity", "GET", "/healthz", batch, "", nil, 0, true, "any-svc-health"},
		{"wildcard identity other domain", "GET", "/healthz", other, "", nil, 0, false, "default"},
		{"CIDR source", "GET", "/debug/pprof", "", "192.168.3.4", nil, 0, true, "office"},
		{"CIDR source mapped", "GET", "/debug/pprof", "", "::ffff:192.168.3.4", nil, 0, true, "office"},
		{"CIDR outside", "GET", "/debug/pprof", "", "192.169.0.1", nil, 0, false, "default"},
		{"header condition met", "POST", "/api/jobs", batch, "", http.Header{"X-Batch-Token": {"t"}}, 0, true, "batch-write"},
		{"header condition unmet", "POST", "/api/jobs", batch, "", nil, 0, false, "default"},
		{"port deny", "GET", "/healthz", batch, "", nil, 9000, false, "no-batch-on-admin-port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := req(t, p, tc.method, tc.path, tc.id, tc.ip)
			if tc.header != nil {
				r.Header = tc.header
			}
			if tc.port != 0 {
				r.DestPort = tc.port
			}
			d := p.Access(r)
			if d.Allowed != tc.wantOK || d.Rule != tc.wantRule || d.Kind != KindAccess {
				t.Fatalf("Access() = allowed %v rule %q kind %v, want allowed %v rule %q", d.Allowed, d.Rule, d.Kind, tc.wantOK, tc.wantRule)
			}
			if !tc.wantOK {
				want := `ferry; error=http_request_denied; details="rule ` + tc.wantRule + `"`
				if d.Reply.Status != 403 || d.Reply.ProxyStatus != want || d.Reply.GRPCCode != 7 {
					t.Errorf("Reply = %d %q grpc %d, want 403 %q grpc 7", d.Reply.Status, d.Reply.ProxyStatus, d.Reply.GRPCCode, want)
				}
				if d.Outcome() != "denied" {
					t.Errorf("Outcome() = %q, want denied", d.Outcome())
				}
			}
		})
	}
}

func TestAccessCaseInsensitive(t *testing.T) {
	p := mustCompile(t, &Config{
		Normalize: Normalize{CaseInsensitive: true},
		Access:    Access{Default: "allow", Rules: []Rule{{Name: "no-admin", Paths: []string{"/Admin", "/admin/*"}, Action: "deny"}}},
	})
	for _, path := range []string{"/admin", "/ADMIN", "/aDmIn/x", "/%41dmin", "/%61DMIN"} {
		if d := p.Access(req(t, p, "GET", path, "", "")); d.Allowed {
			t.Errorf("Access(%s) allowed, want denied by no-admin", path)
		}
	}
	if d := p.Access(req(t, p, "GET", "/administrator", "", "")); !d.Allowed {
		t.Errorf("Access(/administrator) denied by %s, want allowed", d.Rule)
	}
}

func TestAccessDefault(t *testing.T) {
	allowRule := Rule{From: []string{frontend}, Action: "allow"}
	denyRule := Rule{From: []string{batch}, Action: "deny"}
	tests := []struct {
		name   string
		access Access
		want   bool // for an unmatched caller
		kind   Kind
	}{
		{"no access block", Access{}, true, KindNone},
		{"allow rules imply deny", Access{Rules: []Rule{allowRule}}, false, KindAccess},
		{"only deny rules imply allow", Access{Rules: []Rule{denyRule}}, true, KindAccess},
		{"explicit allow", Access{Default: "allow", Rules: []Rule{allowRule}}, true, KindAccess},
		{"explicit deny without rules", Access{Default: "deny"}, false, KindAccess},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mustCompile(t, &Config{Access: tc.access})
			d := p.Access(req(t, p, "GET", "/", "spiffe://mesh.local/svc/nobody", ""))
			if d.Allowed != tc.want || d.Kind != tc.kind {
				t.Errorf("Access() = allowed %v kind %v, want %v %v", d.Allowed, d.Kind, tc.want, tc.kind)
			}
			if tc.kind == KindAccess && d.Rule != DefaultRule {
				t.Errorf("Access().Rule = %q, want %q", d.Rule, DefaultRule)
			}
		})
	}
}

func TestAccessRuleOrder(t *testing.T) {
	p := mustCompile(t, &Config{Access: Access{Rules: []Rule{
		{Name: "a1", Paths: []string{"/x/*"}, Action: "allow"},
		{Name: "d1", Paths: []string{"/x/y/*"}, Action: "deny"},
		{Name: "a2", Paths: []string{"/x/y/*"}, Action: "allow"},
		{Name: "d2", Paths: []string{"/x/*"}, Action: "deny"},
	}}})
	if d := p.Access(req(t, p, "GET", "/x/y/z", "", "")); d.Allowed || d.Rule != "d1" {
		t.Errorf("Access(/x/y/z) = %v %q, want denied by d1 (first matching deny)", d.Allowed, d.Rule)
	}
	if d := p.Access(req(t, p, "GET", "/x/q", "", "")); d.Allowed || d.Rule != "d2" {
		t.Errorf("Access(/x/q) = %v %q, want denied by d2 (deny over earlier allow)", d.Allowed, d.Rule)
	}
}

func TestAccessDryRun(t *testing.T) {
	p := mustCompile(t, &Config{Access: Access{DryRun: true, Rules: []Rule{
		{Name: "fe", From: []string{frontend}, Action: "allow"},
		{Name: "no-admin", Paths: []string{"/admin"}, Action: "deny"},
	}}})
	tests := []struct {
		path, id, rule, outcome string
	}{
		{"/admin", frontend, "no-admin", "dry_run_denied"},
		{"/x", batch, "default", "dry_run_denied"},
		{"/x", frontend, "fe", "allowed"},
	}
	for _, tc := range tests {
		d := p.Access(req(t, p, "GET", tc.path, tc.id, ""))
		if !d.Allowed || d.Rule != tc.rule || d.Outcome() != tc.outcome {
			t.Errorf("Access(%s, %s) = allowed %v rule %q outcome %q, want allowed, %q, %q", tc.path, tc.id, d.Allowed, d.Rule, d.Outcome(), tc.rule, tc.outcome)
		}
		if tc.outcome == "dry_run_denied" && (!d.DryRun || d.Reply.Status != 403 || !strings.Contains(d.Reply.ProxyStatus, `"rule `+tc.rule+`"`)) {
			t.Errorf("Access(%s) dry-run decision = %+v, want DryRun with the 403 it would send", tc.path, d)
		}
	}
	stats := statsByRule(p)
	if s := stats["access/no-admin"]; s.DryRunDenied != 1 || s.Denied != 0 {
		t.Errorf("no-admin stats = %+v, want 1 dry-run denial", s)
	}
	if s := stats["access/default"]; s.DryRunDenied != 1 {
		t.Errorf("default stats = %+v, want 1 dry-run denial", s)
	}
}

func TestCheckConn(t *testing.T) {
	p := mustCompile(t, &Config{
		Filter: Filter{IPDeny: []string{"10.66.0.0/16"}},
		Access: Access{Rules: []Rule{
			{Name: "fe-get", From: []string{frontend}, Methods: []string{"GET"}, Action: "allow"}, // L7 only: never at L4
			{Name: "db-clients", From: []string{"spiffe://mesh.local/svc/*"}, Ports: []int{5432}, Action: "allow"},
			{Name: "no-batch-admin", From: []string{batch}, Paths: []string{"/admin"}, Action: "deny"}, // L7 ignored at L4: denies
			{Name: "lan", From: []string{"192.168.0.0/16"}, Action: "allow"},
		}},
	})
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tests := []struct {
		name   string
		src    netip.Addr
		id     string
		port   uint16
		wantOK bool
		rule   string
		kind   Kind
	}{
		{"allow by identity and port", ip("10.0.0.1"), frontend, 5432, true, "db-clients", KindAccess},
		{"wrong port", ip("10.0.0.1"), frontend, 6379, false, "default", KindAccess},
		{"deny rule with request conditions fails closed", ip("10.0.0.1"), batch, 5432, false, "no-batch-admin", KindAccess},
		{"allow by CIDR", ip("192.168.1.1"), "", 6379, true, "lan", KindAccess},
		{"IP deny list", ip("10.66.1.1"), frontend, 5432, false, "ip_deny", KindFilter},
		{"unauthenticated", ip("10.0.0.1"), "", 5432, false, "default", KindAccess},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := p.CheckConn(tc.src, tc.id, tc.port)
			if d.Allowed != tc.wantOK || d.Rule != tc.rule || d.Kind != tc.kind {
				t.Errorf("CheckConn() = allowed %v rule %q kind %v, want %v %q %v", d.Allowed, d.Rule, d.Kind, tc.wantOK, tc.rule, tc.kind)
			}
		})
	}
}

func statsByRule(p *Policy) map[string]RuleStats {
	m := map[string]RuleStats{}
	for _, s := range p.Stats() {
		m[s.Kind.String()+"/"+s.Rule] = s
	}
	return m
}

func TestStatsSurviveReload(t *testing.T) {
	cfg := &Config{Access: Access{Rules: []Rule{
		{Name: "fe", From: []string{frontend}, Action: "allow"},
		{Name: "gone", From: []string{batch}, Action: "deny"},
	}}}
	p1 := mustCompile(t, cfg)
	p1.Access(req(t, p1, "GET", "/", frontend, ""))
	p1.Access(req(t, p1, "GET", "/", batch, ""))
	p1.Access(req(t, p1, "GET", "/", "", ""))

	cfg2 := &Config{Access: Access{Rules: []Rule{{Name: "fe", From: []string{frontend}, Action: "allow"}}}}
	p2, err := Compile(cfg2, Options{Prev: p1})
	if err != nil {
		t.Fatal(err)
	}
	p2.Access(req(t, p2, "GET", "/", frontend, ""))
	got := statsByRule(p2)
	want := map[string]RuleStats{
		"access/fe":      {Kind: KindAccess, Rule: "fe", Allowed: 2},
		"access/default": {Kind: KindAccess, Rule: "default", Denied: 1},
	}
	if len(got) != len(want) {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("Stats()[%s] = %+v, want %+v", k, got[k], w)
		}
	}
}

func TestNilPolicyAllows(t *testing.T) {
	var p *Policy
	r := &Request{Method: "GET", Path: "/"}
	if c := p.Check(r); c.Refusal() != nil {
		t.Errorf("nil Policy Check() refused: %+v", c.Refusal())
	}
	if !p.CheckConn(netip.Addr{}, "", 0).Allowed || !p.AllowConn(netip.Addr{}).Allowed {
		t.Error("nil Policy refused a connection")
	}
	if _, _, d := p.NormalizePath("/a%2fb"); d.Allowed || d.Reply.Status != 400 {
		t.Errorf("nil Policy NormalizePath(/a%%2fb) = %+v, want 400", d)
	}
	if p.Stats() != nil || p.MaxBodyBytes() != 0 {
		t.Error("nil Policy has stats or a body limit")
	}
}

func TestNormalizePathReplies(t *testing.T) {
	p := mustCompile(t, &Config{})
	tests := []struct {
		path, details string
	}{
		{"/admin%2f", "escaped slash in path"},
		{"/a%zz", "invalid percent-encoding in path"},
		{"/a%00", "invalid character in path"},
		{"admin", "invalid path"},
	}
	for _, tc := range tests {
		_, _, d := p.NormalizePath(tc.path)
		want := `ferry; error=http_request_error; details="` + tc.details + `"`
		if d.Allowed || d.Kind != KindNormalize || d.Reply.Status != 400 || d.Reply.ProxyStatus != want {
			t.Errorf("NormalizePath(%q) = %+v, want 400 %q", tc.path, d, want)
		}
	}
	fwd, m, d := mustCompile(t, &Config{Normalize: Normalize{EscapedSlashes: "unescape"}}).NormalizePath("/x/..%2Fadmin;a")
	if !d.Allowed || fwd != "/admin;a" || m != "/admin" {
		t.Errorf("NormalizePath(unescape) = %q, %q, %+v; want /admin;a, /admin", fwd, m, d)
	}
}
