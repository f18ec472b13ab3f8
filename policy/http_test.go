package policy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// guard applies p to requests before next, the way the proxy wires it: normalize, check,
// reply locally on a refusal, read bodies of unknown length up to the limit first, and
// forward the normalized path. It is the reference for the sidecar wiring.
func guard(p *Policy, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply := func(d *Decision) {
			h := w.Header()
			h.Set("Proxy-Status", d.Reply.ProxyStatus)
			if d.Reply.Allow != "" {
				h.Set("Allow", d.Reply.Allow)
			}
			if d.Kind == KindRateLimit {
				d.RateLimit.SetHeaders(h)
			}
			w.WriteHeader(d.Reply.Status)
		}
		fwd, match, d := p.NormalizePath(r.URL.EscapedPath())
		if !d.Allowed {
			reply(&d)
			return
		}
		ap, _ := netip.ParseAddrPort(r.RemoteAddr)
		req := Request{Method: r.Method, Path: match, RawQuery: r.URL.RawQuery, URI: r.RequestURI, Host: r.Host,
			Header: r.Header, ContentLength: r.ContentLength, SourceIP: ap.Addr(), SourceID: r.Header.Get("X-Test-Identity")}
		c := p.Check(&req)
		if d := c.Refusal(); d != nil {
			reply(d)
			return
		}
		if max := p.MaxBodyBytes(); max > 0 && r.ContentLength < 0 && r.Body != http.NoBody {
			b, err := ReadBody(r.Body, max)
			if errors.Is(err, ErrBodyTooLarge) {
				d := p.RefuseBody()
				reply(&d)
				return
			}
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		}
		SetURLPath(r.URL, fwd)
		w.Header().Set("X-Access-Rule", c.Access.Rule)
		next.ServeHTTP(w, r)
	})
}

// rawRequest sends a request line and headers as written, without Go's client cleaning the
// path, and returns the status and Proxy-Status.
func rawRequest(t *testing.T, addr, head, body string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, head+"\r\n"+body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Proxy-Status")
}

func TestGuardHTTP(t *testing.T) {
	p := mustCompile(t, &Config{
		Filter: Filter{MaxBodyBytes: 16, Methods: []string{"GET", "POST"}},
		Access: Access{Default: "allow", Rules: []Rule{
			{Name: "no-admin", Paths: []string{"/admin", "/admin/*"}, Action: "deny"},
			{Name: "fe-only", From: []string{"any"}, Paths: []string{"/api/*"}, Methods: []string{"POST"},
				Headers: []HeaderMatch{{Name: "x-test-identity", Exact: ptr(frontend), Invert: true}}, Action: "deny"},
		}},
		RateLimits: []RateLimit{{Name: "slow", PathPrefix: "/slow", RequestsPerSecond: 0.001, Burst: 1}},
	})
	var arrived atomic.Int64
	var lastPath atomic.Value
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		lastPath.Store(r.URL.EscapedPath())
		io.Copy(io.Discard, r.Body)
	})
	srv := httptest.NewServer(guard(p, app))
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	tests := []struct {
		name    string
		head    string
		body    string
		status  int
		details string
		path    string // path the app saw, when forwarded
	}{
		{"plain", "GET /hello HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/hello"},
		{"normalized before forwarding", "GET /a/./b/../c//d HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/a/c/d"},
		{"encodings kept canonical", "GET /%7euser/a%3fb%2a HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/~user/a%3Fb%2A"},
		{"admin", "GET /admin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"encoded", "GET /%61dmin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"double slash", "GET //admin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"dot dot", "GET /x/../admin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"params", "GET /admin;x HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"escaped slash", "GET /admin%2f HTTP/1.1\r\nHost: x\r\n", "", 400, "escaped slash in path", ""},
		{"escaped backslash", "GET /x%5c..%5cadmin HTTP/1.1\r\nHost: x\r\n", "", 400, "escaped slash in path", ""},
		{"absolute form", "GET http://x/%61dmin/y HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"method", "DELETE /hello HTTP/1.1\r\nHost: x\r\n", "", 405, "filter methods", ""},
		{"declared body too large", "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n", strings.Repeat("x", 17), 413, "filter max_body_bytes", ""},
		{"chunked body too large", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", "11\r\n" + strings.Repeat("x", 17) + "\r\n0\r\n\r\n", 413, "filter max_body_bytes", ""},
		{"chunked body fits", "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", "10\r\n" + strings.Repeat("x", 16) + "\r\n0\r\n\r\n", 200, "", "/upload"},
		{"identity allowed", "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Test-Identity: " + frontend + "\r\n", "", 200, "", "/api/x"},
		{"identity denied", "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Test-Identity: " + batch + "\r\n", "", 403, "rule fe-only", ""},
		{"rate limit first", "GET /slow HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/slow"},
		{"rate limit second", "GET /slow HTTP/1.1\r\nHost: x\r\n", "", 429, "rate limit slow", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := arrived.Load()
			status, ps := rawRequest(t, addr, tc.head, tc.body)
			if status != tc.status {
				t.Fatalf("status = %d (%s), want %d", status, ps, tc.status)
			}
			forwarded := arrived.Load() != before
			if forwarded != (tc.status == 200) {
				t.Fatalf("forwarded = %v, want %v", forwarded, tc.status == 200)
			}
			if tc.status == 200 {
				if got := lastPath.Load(); got != tc.path {
					t.Errorf("app saw path %q, want %q", got, tc.path)
				}
				return
			}
			if want := "ferry; error="; !strings.HasPrefix(ps, want) || !strings.HasSuffix(ps, "details="+strconv.Quote(tc.details)) {
				t.Errorf("Proxy-Status = %q, want details %q", ps, tc.details)
			}
		})
	}

	resp, err := http.Get(srv.URL + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("RateLimit-Limit") != "1" || resp.Header.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("429 headers = %v, want Retry-After, RateLimit-Limit 1, X-RateLimit-Remaining 0", resp.Header)
	}
}

func TestSetURLPath(t *testing.T) {
	for _, fwd := range []string{"/a/b", "/a%3Fb/%C3%A9", "/a%2Fb", "/"} {
		u := &url.URL{Path: "/old", RawPath: "/old"}
		SetURLPath(u, fwd)
		if got := u.EscapedPath(); got != fwd {
			t.Errorf("SetURLPath(%q): EscapedPath() = %q (Path %q, RawPath %q)", fwd, got, u.Path, u.RawPath)
		}
	}
}
