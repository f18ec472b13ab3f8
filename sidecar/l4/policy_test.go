package l4

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/policy"
)

func TestPolicyCheckConn(t *testing.T) {
	tests := []struct {
		name    string
		cfg     policy.Config
		allowed bool
		rule    string
	}{
		{"allowed by CIDR", policy.Config{Access: policy.Access{Default: "deny", Rules: []policy.Rule{
			{Name: "loopback", From: []string{"127.0.0.0/8"}, Action: "allow"}}}}, true, ""},
		{"denied by default", policy.Config{Access: policy.Access{Default: "deny", Rules: []policy.Rule{
			{Name: "ten", From: []string{"10.0.0.0/8"}, Action: "allow"}}}}, false, "default"},
		{"denied identity", policy.Config{Access: policy.Access{Default: "allow", Rules: []policy.Rule{
			{Name: "anon", From: []string{"127.0.0.1"}, Action: "deny"}}}}, false, "anon"},
		{"ip_deny", policy.Config{Filter: policy.Filter{IPDeny: []string{"127.0.0.0/8"}}}, false, "ip_deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			pol, err := policy.Compile(&tt.cfg, policy.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var accepted atomic.Int64
			addr := startServer(t, func(c *net.TCPConn) { accepted.Add(1); echo(c) })
			picker, _ := roundRobin(addr)
			rec := newRecorder()
			p := New(Options{Upstream: "app", Picker: picker, Observer: rec, Policy: pol, Port: 5432})
			s := startSession(t, t.Context(), p)
			if tt.allowed {
				if _, err := s.client.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 4)
				if _, err := io.ReadFull(s.client, buf); err != nil || string(buf) != "ping" {
					t.Fatalf("echo = %q, %v; want ping", buf, err)
				}
				return
			}
			s.client.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := s.client.Read(make([]byte, 1))
			if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
				t.Fatalf("client Read() = %d, %v; want the connection closed", n, err)
			}
			s.waitDone(t, 2*time.Second)
			var re *RefusedError
			if sess := rec.wait(t); !errors.As(sess.Err, &re) || re.Decision.Rule != tt.rule {
				t.Errorf("Session.Err = %v, want a *RefusedError naming rule %q", sess.Err, tt.rule)
			}
			if n := accepted.Load(); n != 0 {
				t.Errorf("upstream accepted %d connections, want 0", n)
			}
		})
	}
}
