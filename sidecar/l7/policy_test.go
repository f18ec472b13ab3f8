package l7

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// rawExchange sends head and body as written (so the path is not cleaned by a client)
// and returns the response.
func rawExchange(t *testing.T, addr, head, body string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head+"\r\n"+body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestPolicyEnforced(t *testing.T) {
	p, err := policy.Compile(&policy.Config{
		Filter: policy.Filter{MaxBodyBytes: 16},
		Access: policy.Access{Default: "allow", Rules: []policy.Rule{
			{Name: "no-admin", Paths: []string{"/admin", "/admin/*"}, Action: "deny"},
		}},
		RateLimits: []policy.RateLimit{{Name: "slow", PathPrefix: "/slow", RequestsPerSecond: 0.001, Burst: 1}},
	}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var arrived atomic.Int64
	var lastPath atomic.Value
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		lastPath.Store(r.URL.EscapedPath())
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	logFile := filepath.Join(t.TempDir(), "access.log")
	al, err := telemetry.OpenAccessLog(logFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = al.Close() })
	proxy := startProxy(t, upstreamOf(backend), func(o *Options) {
		o.Direction = telemetry.Inbound
		o.Policy = p
		o.AccessLog = al
	})

	tests := []struct {
		name, head, body string
		status           int
		details          string
		path             string // what the app saw, when forwarded
	}{
		{"plain", "GET /hello HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/hello"},
		{"normalized before forwarding", "GET /a/./b/../c//d HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/a/c/d"},
		{"denied", "GET /admin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"encoded", "GET /%61dmin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"dot dot", "GET /x/../admin HTTP/1.1\r\nHost: x\r\n", "", 403, "rule no-admin", ""},
		{"escaped slash", "GET /admin%2f HTTP/1.1\r\nHost: x\r\n", "", 400, "escaped slash in path", ""},
		{"declared body too large", "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n", strings.Repeat("x", 17), 413, "filter max_body_bytes", ""},
		{"chunked body too large", "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", "11\r\n" + strings.Repeat("x", 17) + "\r\n0\r\n\r\n", 413, "filter max_body_bytes", ""},
		{"chunked body fits", "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", "10\r\n" + strings.Repeat("x", 16) + "\r\n0\r\n\r\n", 200, "", "/up"},
		{"rate limit first", "GET /slow HTTP/1.1\r\nHost: x\r\n", "", 200, "", "/slow"},
		{"rate limit second", "GET /slow HTTP/1.1\r\nHost: x\r\n", "", 429, "rate limit slow", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := arrived.Load()
			resp := rawExchange(t, proxy, tc.head, tc.body)
			ps := resp.Header.Get("Proxy-Status")
			if resp.StatusCode != tc.status {
				t.Fatalf("status = %d (%s), want %d", resp.StatusCode, ps, tc.status)
			}
			if forwarded := arrived.Load() != before; forwarded != (tc.status == 200) {
				t.Fatalf("forwarded = %v, want %v", forwarded, tc.status == 200)
			}
			if tc.status == 200 {
				if got := lastPath.Load(); got != tc.path {
					t.Errorf("app saw path %q, want %q", got, tc.path)
				}
				return
			}
			want := "ferry; error="
			if !strings.HasPrefix(ps, want) || !strings.HasSuffix(ps, "details="+strconv.Quote(tc.details)) {
				t.Errorf("Proxy-Status = %q, want details %q", ps, tc.details)
			}
			if tc.status == 429 && (resp.Header.Get("Retry-After") == "" || resp.Header.Get("RateLimit-Limit") != "1") {
				t.Errorf("429 headers = %v, want Retry-After and RateLimit-Limit 1", resp.Header)
			}
		})
	}

	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var denied, allowed bool
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec struct {
			Status     int    `json:"status"`
			Policy     string `json:"policy"`
			PolicyRule string `json:"policy_rule"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		if rec.Status == 403 && rec.Policy == "denied" && rec.PolicyRule == "no-admin" {
			denied = true
		}
		if rec.Status == 200 && rec.Policy == "allowed" && rec.PolicyRule == "default" {
			allowed = true
		}
	}
	if !denied || !allowed {
		t.Errorf("access log:\n%s\nwant a 403 with policy denied, policy_rule no-admin and a 200 with policy allowed, policy_rule default", data)
	}
}
