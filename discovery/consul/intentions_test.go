package consul

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
	"github.com/ferrymesh/ferry/policy"
)

const (
	frontID  = "spiffe://mesh.local/svc/frontend"
	frontCID = "spiffe://mesh.local/ns/default/dc/dc1/svc/frontend"
	otherID  = "spiffe://mesh.local/svc/other"
)

func l4(src, dst, action string, prec int) *api.Intention {
	return &api.Intention{SourceNS: "default", SourceName: src, DestinationNS: "default", DestinationName: dst,
		SourceType: api.IntentionSourceConsul, Action: api.IntentionAction(action), Precedence: prec}
}

func l7(src, dst string, prec int, perms ...*api.IntentionPermission) *api.Intention {
	ix := l4(src, dst, "", prec)
	ix.Permissions = perms
	return ix
}

func perm(action string, h api.IntentionHTTPPermission) *api.IntentionPermission {
	return &api.IntentionPermission{Action: api.IntentionAction(action), HTTP: &h}
}

// decide compiles rules as source consul with the given default and evaluates r.
func decide(t *testing.T, rules []policy.Rule, dflt string, r *policy.Request) policy.Decision {
	t.Helper()
	p, err := policy.Compile(&policy.Config{Access: policy.Access{Source: policy.SourceConsul, Default: dflt}},
		policy.Options{Rules: &policy.RuleSet{Rules: rules}})
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	if r.Header == nil {
		r.Header = http.Header{}
	}
	return p.Access(r)
}

func TestIntentionRulesPrecedence(t *testing.T) {
	tests := []struct {
		name        string
		ixns        []*api.Intention
		dflt        string
		id, method  string
		path        string
		header      http.Header
		wantRule    string
		wantAllowed bool
	}{
		{"exact deny beats wildcard allow", []*api.Intention{l4("*", "web", "allow", 8), l4("frontend", "web", "deny", 9)},
			"allow", frontID, "GET", "/", nil, "intention:frontend->web", false},
		{"exact allow beats wildcard deny", []*api.Intention{l4("*", "web", "deny", 8), l4("frontend", "web", "allow", 9)},
			"deny", frontID, "GET", "/", nil, "intention:frontend->web", true},
		{"wildcard for another caller", []*api.Intention{l4("*", "web", "deny", 8), l4("frontend", "web", "allow", 9)},
			"allow", otherID, "GET", "/", nil, "intention:*->web", false},
		{"consul identity form", []*api.Intention{l4("frontend", "web", "deny", 9)},
			"allow", frontCID, "GET", "/", nil, "intention:frontend->web", false},
		{"wildcard destination below exact", []*api.Intention{l4("frontend", "*", "deny", 6), l4("frontend", "web", "allow", 9)},
			"deny", frontID, "GET", "/", nil, "intention:frontend->web", true},
		{"no intention: default", []*api.Intention{l4("frontend", "web", "allow", 9)},
			"deny", otherID, "GET", "/", nil, policy.DefaultRule, false},
		{"unauthenticated: default", []*api.Intention{l4("*", "web", "deny", 8)},
			"allow", "", "GET", "/", nil, policy.DefaultRule, true},
		{"l7 first permission wins", []*api.Intention{l7("frontend", "web", 9,
			perm("deny", api.IntentionHTTPPermission{PathPrefix: "/admin"}),
			perm("allow", api.IntentionHTTPPermission{PathPrefix: "/"}))},
			"allow", frontID, "GET", "/admin/x", nil, "intention:frontend->web:permissions[0]", false},
		{"l7 later permission", []*api.Intention{l7("frontend", "web", 9,
			perm("deny", api.IntentionHTTPPermission{PathPrefix: "/admin"}),
			perm("allow", api.IntentionHTTPPermission{PathPrefix: "/"}))},
			"deny", frontID, "GET", "/api", nil, "intention:frontend->web:permissions[1]", true},
		{"l7 prefix is a plain prefix", []*api.Intention{l7("frontend", "web", 9,
			perm("deny", api.IntentionHTTPPermission{PathPrefix: "/adm"}))},
			"allow", frontID, "GET", "/admin", nil, "intention:frontend->web:permissions[0]", false},
		{"l7 exact", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{PathExact: "/a"}))},
			"deny", frontID, "GET", "/a/b", nil, "intention:frontend->web", false},
		{"l7 regex", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{PathRegex: "/v[0-9]+/.*"}))},
			"deny", frontID, "GET", "/v2/x", nil, "intention:frontend->web:permissions[0]", true},
		{"l7 exact with a star is literal", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{PathExact: "/a*"}))},
			"deny", frontID, "GET", "/ab", nil, "intention:frontend->web", false},
		{"l7 methods", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{Methods: []string{"GET", "HEAD"}}))},
			"deny", frontID, "POST", "/", nil, "intention:frontend->web", false},
		{"l7 headers", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{
				{Name: "x-env", Exact: "prod"}, {Name: "x-debug", Present: true, Invert: true}}}))},
			"deny", frontID, "GET", "/", http.Header{"X-Env": {"prod"}}, "intention:frontend->web:permissions[0]", true},
		{"l7 inverted header refuses", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{
				{Name: "x-env", Exact: "prod"}, {Name: "x-debug", Present: true, Invert: true}}}))},
			"deny", frontID, "GET", "/", http.Header{"X-Env": {"prod"}, "X-Debug": {"1"}}, "intention:frontend->web", false},
		{"l7 no permission matches: default, not the wildcard", []*api.Intention{l4("*", "web", "deny", 8), l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{PathExact: "/ok"}))},
			"allow", frontID, "GET", "/other", nil, "intention:frontend->web", true},
		{"jwt permission fails closed", []*api.Intention{l7("frontend", "web", 9,
			&api.IntentionPermission{Action: "allow", JWT: &api.IntentionJWTRequirement{},
				HTTP: &api.IntentionHTTPPermission{PathPrefix: "/"}})},
			"allow", frontID, "GET", "/", nil, "intention:frontend->web:permissions[0]", false},
		{"uncompilable intention denies its source", []*api.Intention{l7("frontend", "web", 9,
			perm("allow", api.IntentionHTTPPermission{PathRegex: "("}))},
			"allow", frontID, "GET", "/", nil, "intention:frontend->web", false},
		{"peer intention ignored", []*api.Intention{{SourceName: "frontend", SourcePeer: "other", DestinationName: "web", Action: "deny", Precedence: 9}},
			"allow", frontID, "GET", "/", nil, policy.DefaultRule, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, _ := IntentionRules(tt.ixns, "mesh.local")
			d := decide(t, rules, tt.dflt, &policy.Request{Method: tt.method, Path: tt.path, SourceID: tt.id, Header: tt.header})
			if d.Rule != tt.wantRule || d.Allowed != tt.wantAllowed {
				t.Errorf("Access() = %s allowed %v, want %s allowed %v; rules %+v", d.Rule, d.Allowed, tt.wantRule, tt.wantAllowed, rules)
			}
		})
	}
}

func TestIntentionRulesTranslation(t *testing.T) {
	ixns := []*api.Intention{
		l4("*", "web", "allow", 8),
		l7("frontend", "web", 9,
			perm("deny", api.IntentionHTTPPermission{PathExact: "/admin", Methods: []string{"POST"}}),
			perm("allow", api.IntentionHTTPPermission{PathPrefix: "/api/", Header: []api.IntentionHTTPHeaderPermission{{Name: "x-v", Regex: "[0-9]+"}}})),
	}
	rules, notes := IntentionRules(ixns, "mesh.local")
	from := []string{"spiffe://mesh.local/ns/default/dc/*/svc/frontend", "spiffe://mesh.local/svc/frontend"}
	want := []policy.Rule{
		{Name: "intention:frontend->web:permissions[0]", From: from, Paths: []string{"/admin"}, Methods: []string{"POST"}, Action: "deny"},
		{Name: "intention:frontend->web:permissions[1]", From: from, Paths: []string{"/api/*"},
			Headers: []policy.HeaderMatch{{Name: "x-v", Regex: "[0-9]+"}}, Action: "allow"},
		{Name: "intention:frontend->web", From: from, Action: "default"},
		{Name: "intention:*->web", From: []string{"spiffe://mesh.local/ns/default/dc/*/svc/*", "spiffe://mesh.local/svc/*"}, Action: "allow"},
	}
	if !reflect.DeepEqual(rules, want) {
		t.Errorf("IntentionRules() =\n%+v\nwant\n%+v", rules, want)
	}
	if len(notes) != 0 {
		t.Errorf("IntentionRules() notes = %q, want none", notes)
	}

	// Empty trust domain: any; a namespace and a partition.
	ix := l4("billing", "web", "allow", 9)
	ix.SourceNS, ix.SourcePartition = "team", "ap1"
	rules, _ = IntentionRules([]*api.Intention{ix}, "")
	if got, want := rules[0].From, []string{"spiffe://*/ap/ap1/ns/team/dc/*/svc/billing"}; !reflect.DeepEqual(got, want) {
		t.Errorf("IntentionRules() from = %q, want %q", got, want)
	}
	if got, want := rules[0].Name, "intention:team/billing->web"; got != want {
		t.Errorf("IntentionRules() name = %q, want %q", got, want)
	}
}

// fakeIntentions answers IntentionMatch from a script, for the error paths.
type fakeIntentions struct {
	mu    sync.Mutex
	calls int
	next  func(call int, q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error)
}

func (f *fakeIntentions) ConfigEntry(string, string, *api.QueryOptions) (api.ConfigEntry, *api.QueryMeta, error) {
	return nil, nil, api.StatusError{Code: 404, Body: "Config entry not found"}
}

func (f *fakeIntentions) IntentionMatch(_ *api.IntentionMatch, q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	return f.next(n, q)
}

func TestIntentionWatcherKeepsLastSetOnErrors(t *testing.T) {
	ixns := map[string][]*api.Intention{"web": {l4("frontend", "web", "deny", 9)}}
	f := &fakeIntentions{next: func(call int, q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error) {
		switch {
		case call == 1:
			return ixns, &api.QueryMeta{LastIndex: 10}, nil
		case call <= 4:
			return nil, nil, errors.New("connection refused")
		case call == 5:
			if q.WaitIndex != 0 {
				return nil, nil, errors.New("want a fresh read after errors")
			}
			return ixns, &api.QueryMeta{LastIndex: 11}, nil // same intentions, new index
		}
		<-q.Context().Done()
		return nil, nil, q.Context().Err()
	}}
	log, _ := testLogger(t)
	w, err := newIntentionWatcher(f, IntentionOptions{Service: "web", TrustDomain: "mesh.local", Logger: log,
		MinQueryInterval: time.Millisecond, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		sets []*policy.RuleSet
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func(s *policy.RuleSet) { mu.Lock(); sets = append(sets, s); mu.Unlock() })
	}()
	consultest.WaitFor(t, 5*time.Second, func() error {
		if st := w.Status(); st.Index != 11 || st.Errors != 3 || st.ConsecutiveErrors != 0 {
			return errors.New("not yet")
		}
		return nil
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(sets) != 1 {
		t.Fatalf("published %d sets, want 1 (errors keep the last set, an unchanged answer is not published)", len(sets))
	}
	if st := w.Status(); !st.Ready || st.Updates != 1 || st.LastError == nil || !st.StaleSince.IsZero() {
		t.Errorf("Status() = %+v, want ready, 1 update, last error kept, not stale", st)
	}
}

func TestIntentionWatcherAgent(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	ce := c.API().ConfigEntries()
	// L7 intentions need an HTTP destination.
	if _, _, err := ce.Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web", Protocol: "http"}, nil); err != nil {
		t.Fatalf("service-defaults: %v", err)
	}
	log, _ := testLogger(t)
	w, err := NewIntentionWatcher(c.API(), IntentionOptions{Service: "web", TrustDomain: "mesh.local", Logger: log,
		MinQueryInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sets := make(chan *policy.RuleSet, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx, func(s *policy.RuleSet) { sets <- s }) }()
	t.Cleanup(func() { cancel(); <-done })

	next := func(what string) *policy.RuleSet {
		t.Helper()
		select {
		case s := <-sets:
			return s
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no rule set published within 10s", what)
			return nil
		}
	}
	names := func(s *policy.RuleSet) string {
		var n []string
		for _, r := range s.Rules {
			n = append(n, r.Name+"="+r.Action)
		}
		return strings.Join(n, " ")
	}
	check := func(what, want string) {
		t.Helper()
		if got := names(next(what)); got != want {
			t.Errorf("%s: rules = %q, want %q", what, got, want)
		}
	}
	check("no intentions", "")

	set := func(sources ...*api.SourceIntention) {
		t.Helper()
		if _, _, err := ce.Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "web", Sources: sources}, nil); err != nil {
			t.Fatalf("service-intentions: %v", err)
		}
	}
	set(&api.SourceIntention{Name: "frontend", Action: "allow"})
	check("create", "intention:frontend->web=allow")

	set(&api.SourceIntention{Name: "*", Action: "allow"}, &api.SourceIntention{Name: "frontend", Action: "deny"})
	check("update", "intention:frontend->web=deny intention:*->web=allow")

	set(&api.SourceIntention{Name: "frontend", Permissions: []*api.IntentionPermission{
		{Action: "deny", HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
		{Action: "allow", HTTP: &api.IntentionHTTPPermission{PathPrefix: "/", Methods: []string{"GET"}}},
	}})
	check("l7", "intention:frontend->web:permissions[0]=deny intention:frontend->web:permissions[1]=allow intention:frontend->web=default")

	// A write that changes nothing the rules depend on publishes nothing.
	if _, _, err := ce.Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "other", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ce.Delete(api.ServiceIntentions, "web", nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	check("delete", "")
	select {
	case s := <-sets:
		t.Errorf("unexpected extra set %q", names(s))
	case <-time.After(300 * time.Millisecond):
	}

	// A JWT required of every request to web: Ferry cannot verify it, so it refuses all.
	jwks := base64.StdEncoding.EncodeToString([]byte(`{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}`))
	if _, _, err := ce.Set(&api.JWTProviderConfigEntry{Kind: api.JWTProvider, Name: "okta",
		JSONWebKeySet: &api.JSONWebKeySet{Local: &api.LocalJWKS{JWKS: jwks}}}, nil); err != nil {
		t.Fatalf("jwt-provider: %v", err)
	}
	if _, _, err := ce.Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "web",
		JWT:     &api.IntentionJWTRequirement{Providers: []*api.IntentionJWTProvider{{Name: "okta"}}},
		Sources: []*api.SourceIntention{{Name: "frontend", Action: "allow"}}}, nil); err != nil {
		t.Fatalf("service-intentions with JWT: %v", err)
	}
	check("jwt", JWTRule+"=deny")
	if st := w.Status(); !st.Ready || st.Updates != 6 || st.Errors != 0 {
		t.Errorf("Status() = %+v, want ready, 6 updates, no errors", st)
	}
}
