package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestFirstMatchOrder(t *testing.T) {
	const (
		front = "spiffe://mesh.local/svc/frontend"
		other = "spiffe://mesh.local/svc/other"
	)
	// In precedence order, as intentions arrive: an exact source first, the wildcard last.
	rules := []Rule{
		{Name: "admin", From: []string{front}, Paths: []string{"/admin"}, Action: "deny"},
		{Name: "api", From: []string{front}, PathRegex: []string{"/api/v[0-9]+/.*"}, Methods: []string{"GET"}, Action: "allow"},
		{Name: "hdr", From: []string{front}, Headers: []HeaderMatch{{Name: "x-role", Prefix: "ops-"}}, Action: "allow"},
		{Name: "front-rest", From: []string{front}, Action: "default"},
		{Name: "all", From: []string{"spiffe://mesh.local/svc/*"}, Action: "allow"},
	}
	tests := []struct {
		name, id, method, path string
		header                 http.Header
		dflt                   string
		wantRule               string
		wantAllowed            bool
	}{
		{"first match denies", front, "GET", "/admin", nil, "deny", "admin", false},
		{"deny wins before later allow", front, "GET", "/admin", http.Header{"X-Role": {"ops-1"}}, "deny", "admin", false},
		{"regex and method", front, "GET", "/api/v2/users", nil, "deny", "api", true},
		{"regex not matching", front, "GET", "/api/vX/users", nil, "deny", "front-rest", false},
		{"method not matching", front, "POST", "/api/v2/users", nil, "deny", "front-rest", false},
		{"header", front, "POST", "/x", http.Header{"X-Role": {"ops-2"}}, "deny", "hdr", true},
		{"terminal default deny", front, "GET", "/other", nil, "deny", "front-rest", false},
		{"terminal default allow", front, "GET", "/other", nil, "allow", "front-rest", true},
		{"terminal rule stops the wildcard", front, "GET", "/other", nil, "deny", "front-rest", false},
		{"wildcard for others", other, "GET", "/admin", nil, "deny", "all", true},
		{"nobody matches", "", "GET", "/", nil, "deny", DefaultRule, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, &Config{Access: Access{Order: OrderFirstMatch, Default: tt.dflt, Rules: rules}})
			h := tt.header
			if h == nil {
				h = http.Header{}
			}
			d := p.Access(&Request{Method: tt.method, Path: tt.path, SourceID: tt.id, Header: h})
			if d.Rule != tt.wantRule || d.Allowed != tt.wantAllowed {
				t.Errorf("Access() = %s allowed %v, want %s allowed %v", d.Rule, d.Allowed, tt.wantRule, tt.wantAllowed)
			}
			if !d.Allowed && (d.Reply.Status != http.StatusForbidden || !strings.Contains(d.Reply.Details, "rule "+tt.wantRule)) {
				t.Errorf("Access().Reply = %+v, want 403 naming rule %s", d.Reply, tt.wantRule)
			}
		})
	}
}

func TestFirstMatchConn(t *testing.T) {
	const front = "spiffe://mesh.local/svc/frontend"
	tests := []struct {
		name        string
		rules       []Rule
		id          string
		wantRule    string
		wantAllowed bool
	}{
		{"l4 allow", []Rule{{Name: "a", From: []string{front}, Action: "allow"}}, front, "a", true},
		{"l4 deny", []Rule{{Name: "d", From: []string{front}, Action: "deny"}}, front, "d", false},
		{"l7 allow fails closed", []Rule{{Name: "p", From: []string{front}, Paths: []string{"/x"}, Action: "allow"},
			{Name: "rest", From: []string{front}, Action: "default"}}, front, "p", false},
		{"l7 rule of another caller is skipped", []Rule{{Name: "p", From: []string{"spiffe://mesh.local/svc/b"}, Methods: []string{"GET"}, Action: "allow"},
			{Name: "w", From: []string{"spiffe://mesh.local/svc/*"}, Action: "allow"}}, front, "w", true},
		{"no rule", []Rule{{Name: "d", From: []string{"spiffe://mesh.local/svc/b"}, Action: "deny"}}, front, DefaultRule, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, &Config{Access: Access{Order: OrderFirstMatch, Default: "allow", Rules: tt.rules}})
			d := p.CheckConn(netip.MustParseAddr("10.0.0.1"), tt.id, 21000)
			if d.Rule != tt.wantRule || d.Allowed != tt.wantAllowed {
				t.Errorf("CheckConn() = %s allowed %v, want %s allowed %v", d.Rule, d.Allowed, tt.wantRule, tt.wantAllowed)
			}
		})
	}
}

func TestConsulSource(t *testing.T) {
	const front = "spiffe://mesh.local/svc/frontend"
	r := &Request{Method: "GET", Path: "/", SourceID: front, Header: http.Header{}}

	// Before the first rule set: everything refused, as PendingRule.
	p := mustCompile(t, &Config{Access: Access{Source: SourceConsul}})
	if d := p.Access(r); d.Allowed || d.Rule != PendingRule {
		t.Errorf("Access() before any rule set = %s allowed %v, want %s refused", d.Rule, d.Allowed, PendingRule)
	}
	if d := p.CheckConn(netip.Addr{}, front, 1); d.Allowed || d.Rule != PendingRule {
		t.Errorf("CheckConn() before any rule set = %s allowed %v, want %s refused", d.Rule, d.Allowed, PendingRule)
	}

	// An empty set: Consul's default without ACLs, allow.
	p, err := Compile(&Config{Access: Access{Source: SourceConsul}}, Options{Rules: &RuleSet{}})
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	if d := p.Access(r); !d.Allowed || d.Rule != DefaultRule {
		t.Errorf("Access() with no intentions = %s allowed %v, want %s allowed", d.Rule, d.Allowed, DefaultRule)
	}

	// A set, first match, counters kept across sets by name.
	set := &RuleSet{Rules: []Rule{{Name: "intention:frontend->web", From: []string{front}, Action: "deny"}}}
	p2, err := Compile(&Config{Access: Access{Source: SourceConsul}}, Options{Rules: set, Prev: p})
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	for range 2 {
		if d := p2.Access(r); d.Allowed || d.Rule != "intention:frontend->web" {
			t.Errorf("Access() = %s allowed %v, want intention:frontend->web refused", d.Rule, d.Allowed)
		}
	}
	p3, err := Compile(&Config{Access: Access{Source: SourceConsul}}, Options{Rules: set, Prev: p2})
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	p3.Access(r)
	for _, st := range p3.Stats() {
		if st.Rule == "intention:frontend->web" && st.Denied != 3 {
			t.Errorf("Stats() denied = %d, want 3 (counters carried over)", st.Denied)
		}
	}
}

func TestAccessSourceValidation(t *testing.T) {
	tests := []struct {
		name   string
		access Access
		want   string
	}{
		{"rules with consul", Access{Source: "consul", Rules: []Rule{{Action: "allow"}}}, "access.rules: rules cannot be combined with source: consul"},
		{"bad source", Access{Source: "xds"}, `access.source: invalid source "xds"`},
		{"bad order", Access{Order: "random"}, `access.order: invalid order "random"`},
		{"consul deny_first", Access{Source: "consul", Order: "deny_first"}, "access.order: source: consul is evaluated first_match"},
		{"default action needs first_match", Access{Rules: []Rule{{Action: "default"}}}, "access.rules[0].action: action default needs order: first_match"},
		{"bad regex", Access{Rules: []Rule{{PathRegex: []string{"("}, Action: "allow"}}}, "access.rules[0].path_regex[0]: invalid regular expression"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Access: tt.access}
			var got []string
			for _, fe := range c.Validate() {
				got = append(got, fe.Error())
			}
			if !strings.Contains(strings.Join(got, "\n"), tt.want) {
				t.Errorf("Validate() = %q, want an error containing %q", got, tt.want)
			}
		})
	}
}

func TestFirstMatchDoesNotAllocate(t *testing.T) {
	c := hundredRules()
	c.Access.Order = OrderFirstMatch
	p := mustCompile(t, c)
	for _, path := range []string{"/api/last/x", "/nothing"} {
		r := benchRequest(path)
		if a := testing.AllocsPerRun(1000, func() { p.Access(r) }); a != 0 {
			t.Errorf("Access(%s) allocs = %v, want 0", path, a)
		}
	}
}

func BenchmarkAccessFirstMatch100Rules(b *testing.B) {
	c := hundredRules()
	c.Access.Order = OrderFirstMatch
	p := mustCompile(b, c)
	r := benchRequest("/api/last/x")
	b.ReportAllocs()
	for b.Loop() {
		p.Access(r)
	}
}

// intentionRules are 100 rules shaped as translated Consul intentions: one per source
// service, matching both SPIFFE ID forms, every tenth an L7 intention (two permissions and
// its terminal rule), and a final wildcard deny.
func intentionRules() []Rule {
	var rules []Rule
	for i := 0; i < 99; i++ {
		src := fmt.Sprintf("client-%d", i)
		from := []string{"spiffe://mesh.local/ns/default/dc/*/svc/" + src, "spiffe://mesh.local/svc/" + src}
		name := "intention:" + src + "->web"
		if i%10 == 0 {
			rules = append(rules,
				Rule{Name: name + ":permissions[0]", From: from, Paths: []string{"/admin*"}, Action: "deny"},
				Rule{Name: name + ":permissions[1]", From: from, Paths: []string{"/api/*"}, Methods: []string{"GET"}, Action: "allow"},
				Rule{Name: name, From: from, Action: "default"})
			continue
		}
		rules = append(rules, Rule{Name: name, From: from, Action: "allow"})
	}
	rules = append(rules, Rule{Name: "intention:*->web", From: []string{"spiffe://mesh.local/ns/default/dc/*/svc/*",
		"spiffe://mesh.local/svc/*"}, Action: "deny"})
	return rules
}

func BenchmarkAccessIntentions(b *testing.B) {
	p, err := Compile(&Config{Access: Access{Source: SourceConsul}}, Options{Rules: &RuleSet{Rules: intentionRules()}})
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct{ name, id, path, rule string }{
		{"l4-last", "spiffe://mesh.local/svc/client-98", "/", "intention:client-98->web"},
		{"l7-permission", "spiffe://mesh.local/ns/default/dc/dc1/svc/client-90", "/api/x", "intention:client-90->web:permissions[1]"},
		{"wildcard", "spiffe://mesh.local/svc/stranger", "/", "intention:*->web"},
	}
	for _, tc := range cases {
		r := benchRequest(tc.path)
		r.SourceID = tc.id
		if d := p.Access(r); d.Rule != tc.rule {
			b.Fatalf("Access(%s) = %s, want %s", tc.name, d.Rule, tc.rule)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Access(r)
			}
		})
	}
}
