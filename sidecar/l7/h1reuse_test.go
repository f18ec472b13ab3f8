package l7

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

type testCtxKey struct{}

// TestH1ReqCtx checks the request context of H1Server against what context.WithCancel
// gives: cancellation seen through Err, Done (made after or before the cancellation),
// values of the parent, children and AfterFunc; and that it is reused only when it did
// not escape.
func TestH1ReqCtx(t *testing.T) {
	parent := context.WithValue(context.Background(), testCtxKey{}, "conn")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, x *h1reqCtx)
	}{
		{"err and value", func(t *testing.T, x *h1reqCtx) {
			if err := x.Err(); err != nil {
				t.Errorf("Err() = %v, want nil", err)
			}
			if v := x.Value(testCtxKey{}); v != "conn" {
				t.Errorf("Value() = %v, want conn", v)
			}
			if _, ok := x.Deadline(); ok {
				t.Errorf("Deadline() ok = true, want false")
			}
			x.cancel()
			x.cancel()
			if err := x.Err(); err != context.Canceled {
				t.Errorf("Err() after cancel = %v, want %v", err, context.Canceled)
			}
			if err := context.Cause(x); err != context.Canceled {
				t.Errorf("Cause() after cancel = %v, want %v", err, context.Canceled)
			}
		}},
		{"done before cancel", func(t *testing.T, x *h1reqCtx) {
			d := x.Done()
			if d != x.Done() {
				t.Errorf("Done() returned two channels")
			}
			select {
			case <-d:
				t.Fatalf("Done() closed before cancel")
			default:
			}
			x.cancel()
			select {
			case <-d:
			case <-time.After(5 * time.Second):
				t.Fatalf("Done() not closed by cancel")
			}
		}},
		{"done after cancel", func(t *testing.T, x *h1reqCtx) {
			x.cancel()
			select {
			case <-x.Done():
			default:
				t.Fatalf("Done() after cancel not closed")
			}
		}},
		{"children", func(t *testing.T, x *h1reqCtx) {
			child, cancel := context.WithCancel(x)
			defer cancel()
			cause, cancelCause := context.WithCancelCause(x)
			defer cancelCause(nil)
			timed, cancelTimed := context.WithTimeout(context.WithValue(x, testCtxKey{}, "v"), time.Hour)
			defer cancelTimed()
			stopped, cancelStopped := context.WithCancel(x)
			cancelStopped() // removes it from x's functions
			if err := child.Err(); err != nil {
				t.Errorf("child.Err() = %v, want nil", err)
			}
			x.cancel()
			for _, c := range []context.Context{child, cause, timed, stopped} {
				select {
				case <-c.Done():
				case <-time.After(5 * time.Second):
					t.Fatalf("%v not cancelled with its parent", c)
				}
				if err := c.Err(); err != context.Canceled {
					t.Errorf("%v.Err() = %v, want %v", c, err, context.Canceled)
				}
			}
		}},
		{"child of cancelled", func(t *testing.T, x *h1reqCtx) {
			x.cancel()
			child, cancel := context.WithCancel(x)
			defer cancel()
			if err := child.Err(); err != context.Canceled {
				t.Errorf("child.Err() = %v, want %v", err, context.Canceled)
			}
		}},
		{"after func", func(t *testing.T, x *h1reqCtx) {
			ran := make(chan struct{})
			context.AfterFunc(x, func() { close(ran) })
			stop := context.AfterFunc(x, func() { t.Errorf("stopped AfterFunc ran") })
			if !stop() {
				t.Errorf("stop() = false, want true")
			}
			x.cancel()
			select {
			case <-ran:
			case <-time.After(5 * time.Second):
				t.Fatalf("AfterFunc did not run")
			}
			if stop() {
				t.Errorf("second stop() = true, want false")
			}
			late := make(chan struct{})
			if context.AfterFunc(x, func() { close(late) })() {
				t.Errorf("stop() of an AfterFunc on a cancelled context = true, want false")
			}
			select {
			case <-late:
			case <-time.After(5 * time.Second):
				t.Fatalf("AfterFunc on a cancelled context did not run")
			}
		}},
		{"reuse", func(t *testing.T, x *h1reqCtx) {
			_ = x.Err()
			_ = x.Value(testCtxKey{})
			x.cancel()
			if !x.reuse() {
				t.Fatalf("reuse() = false after Err and Value only, want true")
			}
			if err := x.Err(); err != nil {
				t.Errorf("Err() after reuse = %v, want nil", err)
			}
			_ = x.Done()
			x.cancel()
			if x.reuse() {
				t.Errorf("reuse() = true after Done, want false")
			}
			if err := x.Err(); err != context.Canceled {
				t.Errorf("Err() of an escaped context = %v, want %v", err, context.Canceled)
			}
		}},
		{"reuse after AfterFunc", func(t *testing.T, x *h1reqCtx) {
			stop := context.AfterFunc(x, func() {})
			stop()
			x.cancel()
			if x.reuse() {
				t.Errorf("reuse() = true after AfterFunc, want false")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, &h1reqCtx{parent: parent})
		})
	}
}

// TestH1ReqCtxNoGoroutine checks that contexts derived from the request context register
// with it rather than start a goroutine each (as they would on a custom context without
// AfterFunc).
func TestH1ReqCtxNoGoroutine(t *testing.T) {
	x := &h1reqCtx{parent: context.Background()}
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for i := range 100 {
		var parent context.Context = x
		if i%2 == 0 {
			parent = context.WithValue(x, testCtxKey{}, i) // found through values too
		}
		_, cancel := context.WithCancel(parent)
		cancels = append(cancels, cancel)
		stop := context.AfterFunc(parent, func() {})
		cancels = append(cancels, func() { stop() })
	}
	if n := runtime.NumGoroutine() - before; n >= 50 {
		t.Errorf("100 WithCancel children and 100 AfterFuncs started %d goroutines, want none", n)
	}
	for _, c := range cancels {
		c()
	}
}

// TestH1ServerRequestContextReuse serves two requests on one connection and checks that
// the first one's context, kept by a goroutine past its handler, stays cancelled while
// the second runs, and that the second one's is live, whether or not the first escaped.
func TestH1ServerRequestContextReuse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		escape func(ctx context.Context) // what request 1 does with its context
		same   bool                      // the second request gets the same context object
	}{
		{"kept", func(ctx context.Context) {}, true},
		{"done", func(ctx context.Context) { _ = ctx.Done() }, false},
		{"child", func(ctx context.Context) {
			_, cancel := context.WithCancel(ctx)
			_ = cancel
		}, false},
		{"after func", func(ctx context.Context) { context.AfterFunc(ctx, func() {}) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu    sync.Mutex
				first context.Context
				done  <-chan struct{}
				fail  []string
			)
			addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx := r.Context()
				mu.Lock()
				defer mu.Unlock()
				switch r.URL.Path {
				case "/1":
					first = ctx
					tc.escape(ctx)
					if !tc.same {
						done = ctx.Done()
					}
				case "/2":
					if err := ctx.Err(); err != nil {
						fail = append(fail, fmt.Sprintf("request 2: Err() = %v, want nil", err))
					}
					if (ctx == first) != tc.same {
						fail = append(fail, fmt.Sprintf("request 2 has request 1's context: %v, want %v", ctx == first, tc.same))
					}
					if !tc.same {
						if err := first.Err(); err != context.Canceled {
							fail = append(fail, fmt.Sprintf("request 1's context while request 2 runs: Err() = %v, want %v", err, context.Canceled))
						}
						select {
						case <-done:
						default:
							fail = append(fail, "request 1's Done() not closed while request 2 runs")
						}
					}
				}
				fmt.Fprint(w, r.URL.Path)
			}), nil)
			c := dial(t, addr)
			br := bufio.NewReader(c)
			for _, p := range []string{"/1", "/2"} {
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", p)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if len(fail) > 0 {
				t.Error(strings.Join(fail, "\n"))
			}
		})
	}
}
