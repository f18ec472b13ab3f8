package l7

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// hookedAborts counts the upstream round trips registered with s's connections (hookAbort)
// rather than with a context.AfterFunc.
func hookedAborts(s *H1Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		c.reqMu.Lock()
		n += len(c.aborts)
		c.reqMu.Unlock()
	}
	return n
}

type testValueKey struct{}

// TestH1ServerHandlerCancellation checks that an upstream round trip of Ferry's HTTP/1.1
// pool is aborted whichever way the downstream request's context is cancelled, both when
// it registers with the downstream connection (the context is the request's, or only adds
// values to it) and when it cannot (a context with a cancellation of its own).
func TestH1ServerHandlerCancellation(t *testing.T) {
	for _, tc := range []struct {
		name string
		// wrap derives the context the Handler runs with; nil keeps the request's.
		wrap func(ctx context.Context) (context.Context, context.CancelFunc)
		// end cancels the request once the upstream has it: close the client connection
		// or shut the server down.
		end        string
		wantHooked int
	}{
		{name: "client gone", end: "client", wantHooked: 1},
		{name: "shutdown cut", end: "shutdown", wantHooked: 1},
		{name: "value context, client gone", end: "client", wantHooked: 1,
			wrap: func(ctx context.Context) (context.Context, context.CancelFunc) {
				return context.WithValue(ctx, testValueKey{}, 1), func() {}
			}},
		{name: "own cancellation", end: "derived", wantHooked: 0,
			wrap: func(ctx context.Context) (context.Context, context.CancelFunc) {
				return context.WithCancel(ctx)
			}},
		{name: "own cancellation, client gone", end: "client", wantHooked: 0,
			wrap: func(ctx context.Context) (context.Context, context.CancelFunc) {
				return context.WithCancel(ctx)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			cancelled := make(chan struct{}, 1)
			backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				select {
				case <-r.Context().Done():
					cancelled <- struct{}{}
				case <-time.After(5 * time.Second):
				}
			}))
			tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
			t.Cleanup(tr.CloseIdleConnections)
			// A request timeout arms the upstream connection's timer too: cancellation must
			// abort the round trip with it armed.
			h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend), Transport: tr,
				RequestTimeout: 10 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")})
			cancelDerived := make(chan context.CancelFunc, 1)
			var handler http.Handler = h
			if tc.wrap != nil {
				handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ctx, cancel := tc.wrap(r.Context())
					defer cancel()
					cancelDerived <- cancel
					defer func() {
						if err := recover(); err != nil && err != http.ErrAbortHandler {
							panic(err)
						}
					}()
					h.ServeHTTP(w, r.WithContext(ctx))
				})
			}
			addr, s := startH1(t, ServerOptions{}, handler, nil)
			c := dial(t, addr)
			_, _ = io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: api\r\n\r\n")
			<-arrived
			if got := hookedAborts(s); got != tc.wantHooked {
				t.Errorf("round trips registered with the downstream connection = %d, want %d", got, tc.wantHooked)
			}
			switch tc.end {
			case "client":
				_ = c.Close()
			case "shutdown":
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Shutdown() = %v, want %v", err, context.DeadlineExceeded)
				}
			case "derived":
				(<-cancelDerived)()
			}
			select {
			case <-cancelled:
			case <-time.After(3 * time.Second):
				t.Error("the upstream request was not cancelled")
			}
		})
	}
}
