package l4

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
)

// TestMaxConnections: a session over the circuit breaker's max_connections is closed at
// once, without dialling, and without counting against the endpoint.
func TestMaxConnections(t *testing.T) {
	checkLeaks(t)
	echoAddr := startServer(t, func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	picker, eps := roundRobin(echoAddr)
	var rejected []string
	b := circuit.New(func(l string) { rejected = append(rejected, l) })
	b.SetLimits(circuit.Limits{MaxConnections: 1})
	rec := newRecorder()
	p := New(Options{Upstream: "db", Picker: picker, ConnectTimeout: time.Second, Observer: rec, Breaker: b})

	first := startSession(t, context.Background(), p)
	_, _ = io.WriteString(first.client, "x")
	if _, err := io.ReadFull(first.client, make([]byte, 1)); err != nil {
		t.Fatalf("first session: %v", err)
	}
	second := startSession(t, context.Background(), p)
	second.waitDone(t, time.Second)
	s := rec.wait(t)
	var oe *circuit.OverflowError
	if !errors.As(s.Err, &oe) || oe.Limit != circuit.MaxConnections {
		t.Errorf("second session Err = %v, want max_connections overflow", s.Err)
	}
	if _, err := second.client.Read(make([]byte, 1)); err == nil {
		t.Error("second session's client still open")
	}
	if len(rejected) != 1 || eps[0].State.Total.Load() != 1 || eps[0].State.Failures.Load() != 0 {
		t.Errorf("rejections %v, endpoint Total %d Failures %d; want one rejection, one call, no failure",
			rejected, eps[0].State.Total.Load(), eps[0].State.Failures.Load())
	}
	first.client.Close()
	first.waitDone(t, testDeadline)
	rec.wait(t)
	if st := b.Stats(); st.Connections != 0 || st.Pending != 0 {
		t.Errorf("Stats() after both sessions = %+v, want none", st)
	}
}

// TestRetryScansForAnUntriedEndpoint: a picker that keeps returning the dead endpoint does
// not keep a session from the live one when the proxy can list the endpoints.
func TestRetryScansForAnUntriedEndpoint(t *testing.T) {
	checkLeaks(t)
	live := startServer(t, func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	dead := balancer.NewEndpoint(discovery.Endpoint{Address: deadAddr(t)}, nil)
	up := balancer.NewEndpoint(discovery.Endpoint{Address: live}, nil)
	stuck := balancer.NewRoundRobin([]*balancer.Endpoint{dead})
	rec := newRecorder()
	p := New(Options{Upstream: "db", Picker: func() balancer.Picker { return stuck }, ConnectAttempts: 2,
		Endpoints: func() []*balancer.Endpoint { return []*balancer.Endpoint{dead, up} }, Observer: rec})
	s := startSession(t, context.Background(), p)
	_, _ = io.WriteString(s.client, "hi")
	buf := make([]byte, 2)
	if _, err := io.ReadFull(s.client, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("echo = %q, %v; want hi from the live endpoint", buf, err)
	}
	if dead.State.Failures.Load() != 1 {
		t.Errorf("dead endpoint Failures = %d, want 1", dead.State.Failures.Load())
	}
}
