package policy

import (
	"bytes"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestFilter(t *testing.T) {
	p := mustCompile(t, &Config{Filter: Filter{
		MaxHeaderCount: 4,
		MaxHeaderBytes: 100,
		MaxURILength:   32,
		MaxBodyBytes:   1000,
		Methods:        []string{"GET", "POST"},
		DenyHeaders:    []HeaderMatch{{Name: "user-agent", Regex: ".*sqlmap.*"}, {Name: "x-debug", Present: true}},
		IPAllow:        []string{"10.0.0.0/8", "::1"},
		IPDeny:         []string{"10.66.0.0/16"},
	}})
	base := func() *Request {
		return &Request{Method: "GET", Path: "/", URI: "/", Header: http.Header{"Accept": {"*/*"}},
			ContentLength: -1, SourceIP: netip.MustParseAddr("10.0.0.1")}
	}
	tests := []struct {
		name   string
		change func(r *Request)
		status int
		rule   string
	}{
		{"ok", func(r *Request) {}, 0, ""},
		{"ok IPv6 loopback", func(r *Request) { r.SourceIP = netip.MustParseAddr("::1") }, 0, ""},
		{"ip deny wins", func(r *Request) { r.SourceIP = netip.MustParseAddr("10.66.0.5") }, 403, "ip_deny"},
		{"not on allow list", func(r *Request) { r.SourceIP = netip.MustParseAddr("172.16.0.1") }, 403, "ip_allow"},
		{"unknown source", func(r *Request) { r.SourceIP = netip.Addr{} }, 403, "ip_allow"},
		{"uri too long", func(r *Request) { r.URI = "/" + strings.Repeat("a", 32) }, 414, "max_uri_length"},
		{"uri at limit", func(r *Request) { r.URI = strings.Repeat("a", 32) }, 0, ""},
		{"too many headers", func(r *Request) {
			r.Header = http.Header{"A": {"1", "2"}, "B": {"1"}, "C": {"1"}, "D": {"1"}}
		}, 431, "max_header_count"},
		{"headers too large", func(r *Request) { r.Header = http.Header{"A": {strings.Repeat("x", 100)}} }, 431, "max_header_bytes"},
		{"method not allowed", func(r *Request) { r.Method = "DELETE" }, 405, "methods"},
		{"denied header", func(r *Request) { r.Header.Set("User-Agent", "sqlmap/1.7") }, 403, "deny_headers[0]"},
		{"denied header presence", func(r *Request) { r.Header.Set("X-Debug", "") }, 403, "deny_headers[1]"},
		{"body too large", func(r *Request) { r.ContentLength = 1001 }, 413, "max_body_bytes"},
		{"body at limit", func(r *Request) { r.ContentLength = 1000 }, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			tc.change(r)
			d := p.Filter(r)
			if tc.status == 0 {
				if !d.Allowed {
					t.Fatalf("Filter() refused with %d (%s), want allowed", d.Reply.Status, d.Rule)
				}
				return
			}
			if d.Allowed || d.Reply.Status != tc.status || d.Rule != tc.rule || d.Kind != KindFilter {
				t.Fatalf("Filter() = allowed %v %d %q, want %d %q", d.Allowed, d.Reply.Status, d.Rule, tc.status, tc.rule)
			}
			if want := `details="filter ` + tc.rule + `"`; !strings.HasSuffix(d.Reply.ProxyStatus, want) {
				t.Errorf("ProxyStatus = %q, want it to end with %s", d.Reply.ProxyStatus, want)
			}
		})
	}
	if d := p.Filter(&Request{Method: "PUT", SourceIP: netip.MustParseAddr("10.0.0.1")}); d.Reply.Allow != "GET, POST" {
		t.Errorf("405 Allow = %q, want %q", d.Reply.Allow, "GET, POST")
	}
	if s := statsByRule(p)["filter/max_body_bytes"]; s.Denied != 1 {
		t.Errorf("max_body_bytes stats = %+v, want 1 denial", s)
	}
}

func TestReadBody(t *testing.T) {
	tests := []struct {
		body    string
		max     int64
		wantErr error
	}{
		{"hello", 5, nil},
		{"hello", 4, ErrBodyTooLarge},
		{"", 0, nil},
		{"x", 0, ErrBodyTooLarge},
	}
	for _, tc := range tests {
		b, err := ReadBody(strings.NewReader(tc.body), tc.max)
		if !errors.Is(err, tc.wantErr) || err == nil && !bytes.Equal(b, []byte(tc.body)) {
			t.Errorf("ReadBody(%q, %d) = %q, %v; want %v", tc.body, tc.max, b, err, tc.wantErr)
		}
	}
	p := mustCompile(t, &Config{Filter: Filter{MaxBodyBytes: 10}})
	if d := p.RefuseBody(); d.Allowed || d.Reply.Status != 413 {
		t.Errorf("RefuseBody() = %+v, want 413", d)
	}
	if p.MaxBodyBytes() != 10 {
		t.Errorf("MaxBodyBytes() = %d, want 10", p.MaxBodyBytes())
	}
}
