package l7

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

var errTestDeadline = errors.New("test deadline")

// pipeConn returns an h1Conn over one end of a pipe, and the other end.
func pipeConn(t *testing.T) (*h1Conn, net.Conn) {
	t.Helper()
	client, server := net.Pipe()
	h := &h1Host{p: newH1Pool(nil, 0, 0), addr: "pipe"}
	c := newH1Conn(h, client)
	t.Cleanup(func() { c.close(); _ = server.Close() })
	return c, server
}

// TestH1DeadlineTimerKeptAcrossRequests checks the deadline of a round trip armed on a
// connection whose timer is still set for earlier round trips (armed, then disarmed after
// hold): the earlier ones are not aborted, the connection is not aborted while idle, and
// the last one is aborted at its own deadline, neither before nor much after.
func TestH1DeadlineTimerKeptAcrossRequests(t *testing.T) {
	const ms = time.Millisecond
	type try struct{ deadline, hold time.Duration }
	for _, tc := range []struct {
		name     string
		before   []try
		idle     time.Duration // after the earlier round trips
		deadline time.Duration // of the round trip that times out
	}{
		{"first", nil, 0, 150 * ms},
		{"after a shorter one", []try{{40 * ms, 0}}, 0, 200 * ms},
		{"after a longer one", []try{{2 * time.Second, 0}}, 0, 150 * ms},
		{"after the timer fired while idle", []try{{30 * ms, 0}}, 80 * ms, 150 * ms},
		// The timer set for the first fires during the second, which goes on.
		{"after one that outlived an earlier deadline", []try{{100 * ms, 50 * ms}, {100 * ms, 90 * ms}}, 0, 150 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, server := pipeConn(t)
			for i, b := range tc.before {
				if !c.arm(time.Time{}, time.Now().Add(b.deadline), errTestDeadline) {
					t.Fatalf("arm(+%v) = false for round trip %d, want true", b.deadline, i)
				}
				time.Sleep(b.hold)
				if !c.disarm() {
					t.Fatalf("disarm() = false after %v of round trip %d with a deadline of %v, want true", b.hold, i, b.deadline)
				}
			}
			time.Sleep(tc.idle)
			// Not aborted: a read gets what the other end writes.
			go func() { _, _ = server.Write([]byte("x")) }()
			var buf [1]byte
			if _, err := c.conn.Read(buf[:]); err != nil {
				t.Fatalf("read after the earlier round trips: %v, want the byte written", err)
			}
			start := time.Now()
			if !c.arm(start, start.Add(tc.deadline), errTestDeadline) {
				t.Fatalf("arm(+%v) = false, want true", tc.deadline)
			}
			_, err := c.conn.Read(buf[:]) // nothing comes: blocked until aborted
			elapsed := time.Since(start)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read = %v, want the abort's %v", err, os.ErrDeadlineExceeded)
			}
			if elapsed < tc.deadline || elapsed > tc.deadline+150*ms {
				t.Errorf("aborted after %v, want %v (at most 150ms late)", elapsed, tc.deadline)
			}
			if c.disarm() {
				t.Errorf("disarm() = true after the deadline passed, want false")
			}
			if !c.timedOut.Load() {
				t.Errorf("timedOut = false after the deadline passed, want true")
			}
		})
	}
}

// TestH1DeadlineTimerNotResetPerRequest checks that back-to-back round trips with the same
// timeout leave the timer as the first set it, and that a shorter deadline sets it again.
func TestH1DeadlineTimerNotResetPerRequest(t *testing.T) {
	c, _ := pipeConn(t)
	first := time.Now().Add(time.Minute)
	if !c.arm(time.Time{}, first, errTestDeadline) || !c.disarm() {
		t.Fatal("first round trip: arm or disarm failed")
	}
	set := c.fireAt.Load()
	if set != c.offset(first) {
		t.Fatalf("fireAt = %d after the first round trip, want %d", set, c.offset(first))
	}
	for i := range 10 {
		if !c.arm(time.Time{}, time.Now().Add(time.Minute), errTestDeadline) || !c.disarm() {
			t.Fatalf("round trip %d: arm or disarm failed", i)
		}
		if got := c.fireAt.Load(); got != set {
			t.Fatalf("round trip %d: fireAt = %d, want %d (the timer left as it was)", i, got, set)
		}
	}
	sooner := time.Now().Add(time.Second)
	if !c.arm(time.Time{}, sooner, errTestDeadline) || !c.disarm() {
		t.Fatal("round trip with a shorter timeout: arm or disarm failed")
	}
	if got := c.fireAt.Load(); got != c.offset(sooner) {
		t.Errorf("fireAt = %d after a shorter deadline, want %d", got, c.offset(sooner))
	}
	if c.arm(time.Time{}, time.Now().Add(-time.Millisecond), errTestDeadline) {
		t.Errorf("arm(a deadline passed) = true, want false")
	}
}
