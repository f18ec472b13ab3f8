package route

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/normalize"
)

func ptr[T any](v T) *T { return &v }

func mustCompile(t testing.TB, routes []Route, opts Options) *Table {
	t.Helper()
	tb, err := Compile(routes, opts)
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	return tb
}

func request(method, target string, h http.Header) *policy.Request {
	u, _ := url.Parse(target)
	_, m, _ := normalize.Options{}.Path(u.EscapedPath())
	if h == nil {
		h = http.Header{}
	}
	return &policy.Request{Method: method, Path: m, RawQuery: u.RawQuery, Header: h, Host: "shop.local"}
}

func TestMatch(t *testing.T) {
	tb := mustCompile(t, []Route{
		{Name: "exact", Match: Match{Path: "/healthz"}, Response: &FixedResponse{Status: 200, Body: "ok"}},
		{Name: "regex", Match: Match{Regex: `/users/[0-9]+`, Methods: []string{"GET"}}, Upstream: "users"},
		{Name: "canary-header", Match: Match{Prefix: "/api/", Headers: []policy.HeaderMatch{{Name: "x-canary", Exact: ptr("1")}}}, Upstream: "api-canary"},
		{Name: "query", Match: Match{Prefix: "/api/", Query: []QueryMatch{{Name: "debug", Present: true}, {Name: "v", Exact: ptr("2 beta")}}}, Upstream: "api-debug"},
		{Name: "query-regex", Match: Match{Prefix: "/api/", Query: []QueryMatch{{Name: "id", Regex: "[a-f0-9]{4}"}, {Name: "x", Absent: true}}}, Upstream: "api-id"},
		{Name: "host", Match: Match{Headers: []policy.HeaderMatch{{Name: "host", Exact: ptr("admin.local")}}}, Upstream: "admin"},
		{Name: "api", Match: Match{Prefix: "/api/"}, Upstream: "api"},
		{Name: "posts", Match: Match{Methods: []string{"POST"}}, Upstream: "writes"},
	}, Options{})
	tests := []struct {
		method, target string
		header         http.Header
		want           string
	}{
		{"GET", "/healthz", nil, "exact"},
		{"GET", "/healthz/", nil, ""},
		{"GET", "/users/42", nil, "regex"},
		{"POST", "/users/42", nil, "posts"},
		{"GET", "/users/42/x", nil, ""},
		{"GET", "/api/x", http.Header{"X-Canary": {"1"}}, "canary-header"},
		{"GET", "/api/x", http.Header{"X-Canary": {"0"}}, "api"},
		{"GET", "/api/x?debug&v=2+beta", nil, "query"},
		{"GET", "/api/x?debug=1&v=2%20beta", nil, "query"},
		{"GET", "/api/x?debug=1&v=2", nil, "api"},
		{"GET", "/api/x?v=2+beta", nil, "api"},
		{"GET", "/api/x?id=beef", nil, "query-regex"},
		{"GET", "/api/x?id=beef&x=1", nil, "api"},
		{"GET", "/api/x?id=beefy", nil, "api"},
		{"GET", "/api/x?id=%zz&id=cafe", nil, "query-regex"},
		{"GET", "/api", nil, ""},
		{"GET", "/x/../api/y", nil, "api"},
		{"DELETE", "/other", nil, ""},
		{"PUT", "/other", http.Header{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			got := ""
			if e := tb.Match(request(tc.method, tc.target, tc.header)); e != nil {
				got = e.Name()
			}
			if got != tc.want {
				t.Errorf("Match() = %q, want %q", got, tc.want)
			}
		})
	}
	r := request("GET", "/", nil)
	r.Host = "admin.local"
	if e := tb.Match(r); e == nil || e.Name() != "host" {
		t.Errorf("Match(host admin.local) = %v, want host", e)
	}
	var nilTable *Table
	if nilTable.Match(r) != nil {
		t.Error("nil Table matched")
	}
}

func TestMatchCaseInsensitive(t *testing.T) {
	opts := Options{Normalize: normalize.Options{CaseInsensitive: true}}
	tb := mustCompile(t, []Route{{Name: "admin", Match: Match{Prefix: "/Admin/"}, Upstream: "a", PrefixRewrite: "/"}}, opts)
	fwd, m, _ := opts.Normalize.Path("/ADMIN/Users")
	e := tb.Match(&policy.Request{Method: "GET", Path: m})
	if e == nil {
		t.Fatal("Match(/ADMIN/Users) = nil, want admin")
	}
	if got := e.RewritePath(fwd, m); got != "/Users" {
		t.Errorf("RewritePath = %q, want /Users (case of the rest kept)", got)
	}
}

func TestSplit(t *testing.T) {
	tb := mustCompile(t, []Route{{Split: []WeightedUpstream{{"v1", 90}, {"off", 0}, {"v2", 10}}}}, Options{})
	e := tb.Match(request("GET", "/", nil))
	for _, c := range []struct {
		rnd  uint64
		want string
	}{{0, "v1"}, {89, "v1"}, {90, "v2"}, {99, "v2"}, {100, "v1"}, {^uint64(0), "v1"}} {
		if got := e.Upstream(c.rnd); got != c.want {
			t.Errorf("Upstream(%d) = %q, want %q", c.rnd, got, c.want)
		}
	}
	counts := map[string]int{}
	const n = 100000
	for i := 0; i < n; i++ {
		counts[e.Upstream(rand.Uint64())]++
	}
	if v2 := float64(counts["v2"]) / n; v2 < 0.09 || v2 > 0.11 || counts["off"] != 0 {
		t.Errorf("split = %v, want v2 ≈ 10%% and nothing to off", counts)
	}
	if got := e.Upstreams(); !slices.Equal(got, []string{"v1", "v2"}) {
		t.Errorf("Upstreams() = %v, want [v1 v2]", got)
	}
}

func TestPickAndMatchIndex(t *testing.T) {
	tb := mustCompile(t, []Route{
		{Name: "gone", Match: Match{Path: "/gone"}, Response: &FixedResponse{Status: 410}},
		{Name: "one", Match: Match{Prefix: "/one/"}, Upstream: "a"},
		{Name: "split", Split: []WeightedUpstream{{"v1", 90}, {"off", 0}, {"v2", 10}}},
	}, Options{})
	for _, c := range []struct {
		target string
		want   int
	}{{"/gone", 0}, {"/one/x", 1}, {"/other", 2}} {
		if got := tb.MatchIndex(request("GET", c.target, nil)); got != c.want {
			t.Errorf("MatchIndex(%s) = %d, want %d", c.target, got, c.want)
		}
	}
	if got := (*Table)(nil).MatchIndex(request("GET", "/", nil)); got != -1 {
		t.Errorf("nil Table: MatchIndex() = %d, want -1", got)
	}
	for _, c := range []struct {
		route int
		rnd   uint64
		want  int
	}{{0, 7, -1}, {1, 7, 0}, {2, 0, 0}, {2, 89, 0}, {2, 90, 1}, {2, 99, 1}, {2, 100, 0}} {
		e := tb.Entry(c.route)
		got := e.Pick(c.rnd)
		if got != c.want {
			t.Errorf("%s: Pick(%d) = %d, want %d", e.Name(), c.rnd, got, c.want)
		}
		if got >= 0 && e.Upstreams()[got] != e.Upstream(c.rnd) {
			t.Errorf("%s: Upstreams()[Pick(%d)] = %s, want Upstream(%d) = %s", e.Name(), c.rnd, e.Upstreams()[got], c.rnd, e.Upstream(c.rnd))
		}
	}
}

func TestDefaultUpstream(t *testing.T) {
	routes := []Route{{Name: "local", Match: Match{Prefix: "/api/"}, PrefixRewrite: "/", Timeout: policy.Duration(time.Second)}}
	if errs := Validate(routes, Options{}); len(errs) == 0 {
		t.Errorf("Validate() without DefaultUpstream = no errors, want missing action")
	}
	tb := mustCompile(t, routes, Options{DefaultUpstream: "local-app"})
	e := tb.Match(request("GET", "/api/x", nil))
	if e == nil || e.Action() != Forward || e.Upstream(0) != "local-app" || e.Pick(0) != 0 {
		t.Fatalf("Match() = %+v, want a Forward route to local-app", e)
	}
	if got := e.RewritePath("/api/x", "/api/x"); got != "/x" {
		t.Errorf("RewritePath() = %q, want /x", got)
	}
}

func TestRewritePath(t *testing.T) {
	tests := []struct {
		prefix, rewrite, path, want string
	}{
		{"/api/", "/", "/api/users", "/users"},
		{"/api", "/", "/api/users", "/users"},
		{"/api/", "/v2/", "/api/users", "/v2/users"},
		{"/api/", "/v2/", "/api/a;b/c", "/v2/a;b/c"},
		{"/a/b/", "/", "/a;x/b/c", "/c"},
	}
	for _, tc := range tests {
		t.Run(tc.prefix+"→"+tc.rewrite+" "+tc.path, func(t *testing.T) {
			tb := mustCompile(t, []Route{{Match: Match{Prefix: tc.prefix}, Upstream: "u", PrefixRewrite: tc.rewrite}}, Options{})
			fwd, m, _ := normalize.Options{}.Path(tc.path)
			e := tb.Match(&policy.Request{Path: m})
			if e == nil {
				t.Fatal("no match")
			}
			if got := e.RewritePath(fwd, m); got != tc.want {
				t.Errorf("RewritePath(%q) = %q, want %q", fwd, got, tc.want)
			}
		})
	}
	tb := mustCompile(t, []Route{{Upstream: "u"}}, Options{})
	if got := tb.Match(&policy.Request{Path: "/x"}).RewritePath("/x", "/x"); got != "/x" {
		t.Errorf("RewritePath without rewrite = %q, want /x", got)
	}
}

func TestHeaderOps(t *testing.T) {
	tb := mustCompile(t, []Route{{Upstream: "u",
		RequestHeaders:  HeaderOps{Add: map[string]string{"x-add": "2"}, Set: map[string]string{"x-set": "new"}, Remove: []string{"x-debug"}},
		ResponseHeaders: HeaderOps{Set: map[string]string{"server": "ferry"}, Remove: []string{"x-powered-by"}},
	}}, Options{})
	e := tb.Match(&policy.Request{Path: "/"})
	h := http.Header{"X-Add": {"1"}, "X-Set": {"old", "older"}, "X-Debug": {"1"}, "Keep": {"k"}}
	e.ApplyRequestHeaders(h)
	want := http.Header{"X-Add": {"1", "2"}, "X-Set": {"new"}, "Keep": {"k"}}
	if fmt.Sprint(h) != fmt.Sprint(want) {
		t.Errorf("request headers = %v, want %v", h, want)
	}
	rh := http.Header{"X-Powered-By": {"php"}}
	e.ApplyResponseHeaders(rh)
	if rh.Get("Server") != "ferry" || rh.Get("X-Powered-By") != "" {
		t.Errorf("response headers = %v", rh)
	}
}

func TestRedirect(t *testing.T) {
	tests := []struct {
		name     string
		redirect Redirect
		prefix   string
		host     string
		target   string
		code     int
		want     string
	}{
		{"https upgrade", Redirect{Scheme: "https"}, "", "shop.local", "/a?b=1", 301, "https://shop.local/a?b=1"},
		{"host keeps no port", Redirect{Host: "new.local", Code: 308}, "", "shop.local:8080", "/a", 308, "http://new.local/a"},
		{"port", Redirect{Port: 8443, Scheme: "https"}, "", "shop.local:8080", "/a", 301, "https://shop.local:8443/a"},
		{"ipv6 port", Redirect{Port: 8443}, "", "[::1]:8080", "/a", 301, "http://[::1]:8443/a"},
		{"ipv6 host", Redirect{Host: "[::2]"}, "", "shop.local", "/a", 301, "http://[::2]/a"},
		{"path strip query", Redirect{Path: "/new", StripQuery: true, Code: 302}, "", "shop.local", "/old?x=1", 302, "http://shop.local/new"},
		{"prefix rewrite", Redirect{PrefixRewrite: "/v2/", Code: 307}, "/v1/", "shop.local", "/v1/items?q=1", 307, "http://shop.local/v2/items?q=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.redirect
			tb := mustCompile(t, []Route{{Match: Match{Prefix: tc.prefix}, Redirect: &r}}, Options{})
			req := request("GET", tc.target, nil)
			e := tb.Match(req)
			if e == nil || e.Action() != RedirectAction {
				t.Fatalf("Match() = %v, want a redirect route", e)
			}
			fwd, m, _ := normalize.Options{}.Path(strings.SplitN(tc.target, "?", 2)[0])
			code, loc := e.RedirectLocation("http", tc.host, fwd, m, req.RawQuery)
			if code != tc.code || loc != tc.want {
				t.Errorf("RedirectLocation() = %d %q, want %d %q", code, loc, tc.code, tc.want)
			}
		})
	}
}

func TestFixedResponse(t *testing.T) {
	tb := mustCompile(t, []Route{{Match: Match{Path: "/legacy"}, Response: &FixedResponse{Status: 410, Body: "gone\n", Headers: map[string]string{"cache-control": "no-store"}},
		ResponseHeaders: HeaderOps{Set: map[string]string{"x-route": "legacy"}}}}, Options{})
	e := tb.Match(&policy.Request{Path: "/legacy"})
	if e.Action() != Respond {
		t.Fatalf("Action() = %v, want Respond", e.Action())
	}
	for i := 0; i < 2; i++ { // the compiled header is not shared with the writer
		rec := httptest.NewRecorder()
		e.WriteResponse(rec)
		rec.Header().Set("Cache-Control", "mutated")
		res := rec.Result()
		if res.StatusCode != 410 || rec.Body.String() != "gone\n" || res.Header.Get("X-Route") != "legacy" ||
			res.Header.Get("Content-Type") != "text/plain; charset=utf-8" || res.Header.Get("Content-Length") != "5" {
			t.Errorf("response = %d %q %v", res.StatusCode, rec.Body.String(), res.Header)
		}
	}
	rec := httptest.NewRecorder()
	e.WriteResponse(rec)
	if got := rec.Result().Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", got)
	}
}

func TestTimeoutAndRetries(t *testing.T) {
	tb := mustCompile(t, []Route{{Upstream: "u", Timeout: policy.Duration(5 * time.Second), Retries: &Retries{Attempts: 3, On: []string{"5xx"}, PerTryTimeout: policy.Duration(time.Second)}}}, Options{})
	e := tb.Match(&policy.Request{Path: "/"})
	if e.Timeout() != 5*time.Second || e.Retries() == nil || e.Retries().Attempts != 3 || time.Duration(e.Retries().PerTryTimeout) != time.Second {
		t.Errorf("Timeout() = %v, Retries() = %+v", e.Timeout(), e.Retries())
	}
	if e := mustCompile(t, []Route{{Upstream: "u"}}, Options{}).Match(&policy.Request{Path: "/"}); e.Timeout() != 0 || e.Retries() != nil {
		t.Errorf("defaults: Timeout() = %v, Retries() = %v; want 0, nil", e.Timeout(), e.Retries())
	}
}

func TestValidate(t *testing.T) {
	known := func(s string) bool { return s == "api" || s == "api-v2" }
	retryOn := func(s string) bool { return s == "5xx" || s == "reset" }
	tests := []struct {
		name  string
		route Route
		path  string
		msg   string
	}{
		{"no action", Route{}, "[0]", "missing action"},
		{"two actions", Route{Upstream: "api", Response: &FixedResponse{Status: 200}}, "[0]", "only one"},
		{"unknown upstream", Route{Upstream: "nope"}, "[0].upstream", "unknown upstream"},
		{"split unknown", Route{Split: []WeightedUpstream{{"api", 1}, {"nope", 1}}}, "[0].split[1].upstream", "unknown"},
		{"split zero", Route{Split: []WeightedUpstream{{"api", 0}}}, "[0].split", "every weight is 0"},
		{"split twice", Route{Split: []WeightedUpstream{{"api", 1}, {"api", 1}}}, "[0].split[1].upstream", "twice"},
		{"two paths", Route{Match: Match{Path: "/a", Prefix: "/b"}, Upstream: "api"}, "[0].match", "at most one"},
		{"relative prefix", Route{Match: Match{Prefix: "api/"}, Upstream: "api"}, "[0].match.prefix", "does not start"},
		{"bad regex", Route{Match: Match{Regex: "("}, Upstream: "api"}, "[0].match.regex", "regular expression"},
		{"bad method", Route{Match: Match{Methods: []string{"get"}}, Upstream: "api"}, "[0].match.methods[0]", "upper case"},
		{"bad header", Route{Match: Match{Headers: []policy.HeaderMatch{{Name: "x"}}}, Upstream: "api"}, "[0].match.headers[0]", "exactly one"},
		{"bad query", Route{Match: Match{Query: []QueryMatch{{Exact: ptr("1")}}}, Upstream: "api"}, "[0].match.query[0].name", "missing"},
		{"rewrite without prefix", Route{Upstream: "api", PrefixRewrite: "/"}, "[0].prefix_rewrite", "needs match.prefix"},
		{"rewrite on response", Route{Match: Match{Prefix: "/a"}, Response: &FixedResponse{Status: 200}, PrefixRewrite: "/"}, "[0].prefix_rewrite", "only to routes with upstream"},
		{"bad status", Route{Response: &FixedResponse{Status: 99}}, "[0].response.status", "invalid status"},
		{"bad redirect code", Route{Redirect: &Redirect{Code: 200}}, "[0].redirect.code", "invalid redirect code"},
		{"bad redirect host", Route{Redirect: &Redirect{Host: "a.b:80"}}, "[0].redirect.host", "invalid host"},
		{"hop-by-hop header", Route{Upstream: "api", RequestHeaders: HeaderOps{Set: map[string]string{"connection": "close"}}}, "[0].request_headers.set.connection", "cannot be changed"},
		{"negative timeout", Route{Upstream: "api", Timeout: -1}, "[0].timeout", "negative"},
		{"unknown retry", Route{Upstream: "api", Retries: &Retries{On: []string{"5xx", "timeout"}}}, "[0].retries.on[1]", "unknown retry condition"},
		{"bad name", Route{Name: "a b", Upstream: "api"}, "[0].name", "invalid name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := Validate([]Route{tc.route}, Options{Upstream: known, RetryOn: retryOn})
			if len(errs) != 1 {
				t.Fatalf("Validate() = %v, want one error", errs)
			}
			if got := policy.PathString(errs[0].Path); got != tc.path || !strings.Contains(errs[0].Msg, tc.msg) {
				t.Errorf("Validate() = %q at %q, want %q at %q", errs[0].Msg, got, tc.msg, tc.path)
			}
			if _, err := Compile([]Route{tc.route}, Options{Upstream: known, RetryOn: retryOn}); err == nil || !strings.HasPrefix(err.Error(), "routes"+tc.path+": ") {
				t.Errorf("Compile() error = %v, want it to start with routes%s", err, tc.path)
			}
		})
	}
	if errs := Validate([]Route{{Name: "a", Upstream: "api"}, {Name: "a", Upstream: "api"}}, Options{}); len(errs) != 1 || policy.PathString(errs[0].Path) != "[1].name" {
		t.Errorf("duplicate names: Validate() = %v", errs)
	}
}

func TestDecodeYAML(t *testing.T) {
	const doc = `
- name: canary
  match: {prefix: /api/, headers: [{name: x-canary, exact: "1"}], query: [{name: debug, present: true}]}
  split: [{upstream: api-v2, weight: 90}, {upstream: api-v3, weight: 10}]
  prefix_rewrite: /
  request_headers: {set: {x-route: canary}, add: {x-hop: ferry}, remove: [x-debug]}
  response_headers: {set: {x-served-by: ferry}}
  timeout: 5s
  retries: {attempts: 3, on: [gateway-error], per_try_timeout: 1s}
- {name: old, match: {prefix: /v1/}, redirect: {prefix_rewrite: /v2/, code: 308}}
- {name: gone, match: {path: /legacy, methods: [GET]}, response: {status: 410, body: "gone\n", headers: {cache-control: no-store}}}
- {name: api, match: {regex: "/.*"}, upstream: api}
`
	var routes []Route
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&routes); err != nil {
		t.Fatalf("Decode() error = %v", err)
	}
	if _, err := Compile(routes, Options{}); err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	if routes[0].Timeout != policy.Duration(5*time.Second) || routes[0].Retries.PerTryTimeout != policy.Duration(time.Second) {
		t.Errorf("durations = %v, %v", routes[0].Timeout, routes[0].Retries.PerTryTimeout)
	}
	out, err := yaml.Marshal(routes[0])
	if err != nil || !bytes.Contains(out, []byte("timeout: 5s")) {
		t.Errorf("Marshal() = %s, %v; want timeout: 5s", out, err)
	}

	var bad []Route
	err = yaml.Unmarshal([]byte("- {upstream: a, timeout: 5 seconds}"), &bad)
	if err == nil || !strings.Contains(err.Error(), "line 1") || !strings.Contains(err.Error(), "invalid duration") {
		t.Errorf("Unmarshal(bad duration) error = %v, want one with its line", err)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	tb := mustCompile(t, []Route{
		{Match: Match{Prefix: "/x/", Headers: []policy.HeaderMatch{{Name: "x-a", Present: true}}}, Upstream: "a"},
		{Match: Match{Regex: "/api/v[0-9]+/.*", Methods: []string{"GET"}, Query: []QueryMatch{{Name: "q", Prefix: "a"}}}, Upstream: "b"},
	}, Options{})
	r := &policy.Request{Method: "GET", Path: "/api/v2/users", RawQuery: "x=1&q=abc", Header: http.Header{}}
	if e := tb.Match(r); e == nil {
		t.Fatal("no match")
	}
	if a := testing.AllocsPerRun(1000, func() { tb.Match(r) }); a != 0 {
		t.Errorf("Match allocs = %v, want 0", a)
	}
}

// FuzzQuery compares the query-parameter matcher with url.ParseQuery.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"a=1&b=2", "a&a=x", "a%3D=b", "a=%zz&a=1", "+a=+b", "a=1;b=2", "", "&&=&"} {
		f.Add(s, "a", "1")
	}
	f.Fuzz(func(t *testing.T, raw, name, value string) {
		if name == "" {
			return
		}
		vals, err := url.ParseQuery(raw)
		if err != nil {
			return // ParseQuery drops malformed pairs; the matcher skips them alike, but compare only clean input
		}
		exact, _ := compileQuery(&QueryMatch{Name: name, Exact: &value})
		present, _ := compileQuery(&QueryMatch{Name: name, Present: true})
		absent, _ := compileQuery(&QueryMatch{Name: name, Absent: true})
		_, has := vals[name]
		if got := present.match(raw); got != has {
			t.Fatalf("present(%q in %q) = %v, want %v", name, raw, got, has)
		}
		if got := absent.match(raw); got != !has {
			t.Fatalf("absent(%q in %q) = %v, want %v", name, raw, got, !has)
		}
		if got, want := exact.match(raw), slices.Contains(vals[name], value); got != want {
			t.Fatalf("exact(%q=%q in %q) = %v, want %v", name, value, raw, got, want)
		}
	})
}

func BenchmarkMatch(b *testing.B) {
	var routes []Route
	for i := 0; i < 20; i++ {
		routes = append(routes, Route{Match: Match{Prefix: fmt.Sprintf("/svc%d/", i), Methods: []string{"GET", "POST"}}, Upstream: "u"})
	}
	routes = append(routes, Route{Name: "last", Match: Match{Prefix: "/api/", Headers: []policy.HeaderMatch{{Name: "x-tenant", Prefix: "acme"}}}, Upstream: "api"})
	tb := mustCompile(b, routes, Options{})
	r := &policy.Request{Method: "GET", Path: "/api/users/42", Header: http.Header{"X-Tenant": {"acme-prod"}}}
	b.ReportAllocs()
	for b.Loop() {
		if tb.Match(r) == nil {
			b.Fatal("no match")
		}
	}
}
