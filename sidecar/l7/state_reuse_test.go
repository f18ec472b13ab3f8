package l7

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"github.com/ferrymesh/ferry/sidecar/telemetry/jaegertest"
)

// stateKept names the fields of state that reset keeps (see state.reset); every other
// field must be zero after it.
var stateKept = map[string]bool{"outHdr": true, "xffPrior": true, "xffClient": true, "xffJoined": true}

// TestStateReset fills every field of a state and checks reset zeroes all but the kept
// ones.
func TestStateReset(t *testing.T) {
	st := new(state)
	v := reflect.ValueOf(st).Elem()
	fill(t, v)
	st.reset()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		if stateKept[f.Name] {
			continue
		}
		if !v.Field(i).IsZero() {
			t.Errorf("state.%s = %v after reset, want its zero value", f.Name, v.Field(i))
		}
	}
}

// fill sets every settable field of the struct v to a value other than its zero value
// (fields it cannot set through reflection are set by hand below).
func fill(t *testing.T, v reflect.Value) {
	t.Helper()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		if !f.CanSet() {
			f = reflect.NewAt(f.Type(), f.Addr().UnsafePointer()).Elem()
		}
		switch f.Kind() {
		case reflect.Int, reflect.Int64:
			f.SetInt(7)
		case reflect.Bool:
			f.SetBool(true)
		case reflect.String:
			f.SetString("x")
		case reflect.Array:
			if f.Type().Elem().Kind() == reflect.String {
				f.Index(0).SetString("x")
			}
		case reflect.Pointer:
			f.Set(reflect.New(f.Type().Elem()))
		case reflect.Map:
			f.Set(reflect.MakeMap(f.Type()))
		case reflect.Interface:
			switch {
			case reflect.TypeFor[context.Context]().AssignableTo(f.Type()):
				f.Set(reflect.ValueOf(context.Background()))
			case reflect.TypeFor[*h1response]().AssignableTo(f.Type()):
				f.Set(reflect.ValueOf(new(h1response)))
			case reflect.TypeFor[*noCloseBody]().AssignableTo(f.Type()):
				f.Set(reflect.ValueOf(new(noCloseBody)))
			}
		case reflect.Struct:
			switch p := f.Addr().Interface().(type) {
			case *sync.Mutex:
				p.Lock()
				p.Unlock()
				// An unlocked Mutex that was used is zero again: nothing to check.
			case *noCloseBody:
				p.rc = http.NoBody
				p.closed.Store(true)
			case *doneBody:
				p.ReadCloser, p.grpc, p.peer = http.NoBody, true, "x"
				p.done.Store(true)
			default:
				fill(t, f)
			}
		}
	}
}

// TestHandlerReleaseState checks which states the Handler keeps for later requests: only
// those that nothing can reach once ServeHTTP returns.
func TestHandlerReleaseState(t *testing.T) {
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "t", Upstream: upstreamOf("127.0.0.1:1"),
		Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "t")})
	for _, tc := range []struct {
		name string
		mod  func(st *state, rc *h1reqCtx) context.Context // the request's context
		keep bool
	}{
		{"plain", func(st *state, rc *h1reqCtx) context.Context { return rc }, true},
		{"context escaped", func(st *state, rc *h1reqCtx) context.Context { _ = rc.Done(); return rc }, false},
		{"derived context", func(st *state, rc *h1reqCtx) context.Context {
			_, cancel := context.WithCancel(context.WithValue(rc, testCtxKey{}, 1))
			cancel()
			return rc
		}, false},
		{"body forwarded", func(st *state, rc *h1reqCtx) context.Context { st.body.rc = http.NoBody; return rc }, false},
		{"switching protocols", func(st *state, rc *h1reqCtx) context.Context {
			st.status = http.StatusSwitchingProtocols
			return rc
		}, false},
		{"not H1Server's", func(st *state, rc *h1reqCtx) context.Context { return context.Background() }, false},
		{"forwarded", func(st *state, rc *h1reqCtx) context.Context {
			st.ctx, st.out = rc, *(&http.Request{}).WithContext(st)
			return rc
		}, true},
		{"forwarded with an httptrace", func(st *state, rc *h1reqCtx) context.Context {
			st.ctx = rc
			st.out = *(&http.Request{}).WithContext(httptrace.WithClientTrace(st, &httptrace.ClientTrace{Got1xxResponse: st.got1xx}))
			return rc
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The race detector drops a quarter of sync.Pool's Puts at random: a state
			// that is kept shows in one of several tries.
			kept := false
			for range 20 {
				st := h.newState(nil)
				st.status = http.StatusOK
				rc := &h1reqCtx{parent: context.Background()}
				r := (&http.Request{}).WithContext(tc.mod(st, rc))
				h.releaseState(st, r)
				got, _ := h.states.Get().(*state)
				if got == nil {
					continue
				}
				kept = true
				if got != st {
					t.Fatalf("the pool gave back another state than the one released")
				}
				if got.status != 0 || got.body.rc != nil {
					t.Errorf("a kept state is not reset: status %d, body %v", got.status, got.body.rc)
				}
				break
			}
			if kept != tc.keep {
				t.Errorf("releaseState() kept the state: %v, want %v", kept, tc.keep)
			}
		})
	}
}

// TestProxyStateReuse sends requests of every kind (forwarded, answered locally after a
// failed connect, with a body, with 103 Early Hints) on several connections at once
// through H1Server and the Handler, and checks each response and access-log record is its
// own request's: nothing of an earlier request's state (status, Proxy-Status, endpoint,
// bytes, 1xx) shows in a later one. Run with -race, it also catches a state reused while
// something still used it.
func TestProxyStateReuse(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.URL.Path, b)
	}))
	// A closed port: a request sent there gets Ferry's 503.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	logPath := filepath.Join(t.TempDir(), "access.log")
	al, err := telemetry.OpenAccessLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
	t.Cleanup(tr.CloseIdleConnections)
	metrics := telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")
	routed := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend),
		Transport: tr, RequestTimeout: 5 * time.Second, Metrics: metrics, AccessLog: al})
	failing := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(dead),
		Transport: tr, RequestTimeout: 5 * time.Second, Metrics: metrics, AccessLog: al})
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/dead") {
			failing.ServeHTTP(w, r)
		} else {
			routed.ServeHTTP(w, r)
		}
	}), nil)

	type kind struct {
		raw     string
		status  int
		body    string
		hints   int
		proxySt bool
	}
	kinds := []kind{
		{"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", 200, "/ok ", 0, false},
		{"GET /dead HTTP/1.1\r\nHost: a\r\n\r\n", 503, "", 0, true},
		{"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", 200, "/post hello", 0, false},
		{"GET /hints HTTP/1.1\r\nHost: a\r\n\r\n", 200, "/hints ", 1, false},
	}
	const conns, perConn = 4, 24
	kindOf := func(i, j int) int { return (i + j*(i+1)) % len(kinds) }
	keepAliveClients(t, addr, conns, perConn, func(i, j int) string { return kinds[kindOf(i, j)].raw },
		func(i, j int, resp *http.Response, body []byte, hints int) error {
			k := kinds[kindOf(i, j)]
			ps := resp.Header.Get("Proxy-Status") != ""
			if resp.StatusCode != k.status || hints != k.hints || ps != k.proxySt || k.body != "" && string(body) != k.body {
				return fmt.Errorf("%q: status %d, %d 1xx, Proxy-Status %v, body %q; want %d, %d, %v, %q",
					k.raw, resp.StatusCode, hints, ps, body, k.status, k.hints, k.proxySt, k.body)
			}
			return nil
		})
	al.Close()
	logged, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(logged)), "\n")
	if len(lines) != conns*perConn {
		t.Fatalf("access log has %d records, want %d", len(lines), conns*perConn)
	}
	for _, l := range lines {
		var rec struct {
			Path        string  `json:"path"`
			Status      int     `json:"status"`
			ProxyStatus string  `json:"proxy_status"`
			Endpoint    string  `json:"endpoint"`
			Attempts    int     `json:"attempts"`
			BytesSent   int64   `json:"bytes_sent"`
			Duration    float64 `json:"duration_ms"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("access log record %q: %v", l, err)
		}
		wantEP, wantStatus, wantPS, wantBytes := backend, 200, false, int64(len(rec.Path)+1)
		switch rec.Path {
		case "/dead":
			wantEP, wantStatus, wantPS, wantBytes = dead, 503, true, -1
		case "/post":
			wantBytes = int64(len("/post hello"))
		}
		if rec.Endpoint != wantEP || rec.Status != wantStatus || (rec.ProxyStatus != "") != wantPS || rec.Attempts != 1 ||
			wantBytes >= 0 && rec.BytesSent != wantBytes || rec.Duration < 0 {
			t.Errorf("access log record %s: want endpoint %s, status %d, proxy_status set %v, attempts 1, bytes_sent %d",
				l, wantEP, wantStatus, wantPS, wantBytes)
		}
	}
}

// TestProxyReuseWithTracing checks that tracing (a recording server span, a trace context
// extracted from the request) does not cost the reuse: the span's context only adds
// values to the request's, so the request context does not escape and a connection's
// requests share one context, Request and state, while each gets its own trace context
// upstream. Spans go to a real Jaeger.
func TestProxyReuseWithTracing(t *testing.T) {
	j := jaegertest.Start(t)
	cfg := telemetry.DefaultTracingConfig()
	cfg.OTLPEndpoint = j.OTLPGRPCAddr
	tracing, err := telemetry.NewTracing(context.Background(), cfg, "reuse", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = tracing.Shutdown(ctx)
	})
	var (
		mu      sync.Mutex
		parents []string
	)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents = append(parents, r.Header.Get("Traceparent"))
		mu.Unlock()
	}))
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
	t.Cleanup(tr.CloseIdleConnections)
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend), Transport: tr,
		RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test"), Tracing: tracing})
	var (
		ctxs []context.Context
		reqs []*http.Request
	)
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ctxs, reqs = append(ctxs, r.Context()), append(reqs, r)
		mu.Unlock()
		h.ServeHTTP(w, r)
	}), nil)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for i := range 4 {
		resp := exchange(t, c, br, fmt.Sprintf("GET /%d HTTP/1.1\r\nHost: a\r\nTraceparent: 00-%s-00f067aa0ba902b7-01\r\n\r\n", i, traceID))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200", resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// The first request dials the upstream connection (with a deadline: a context
	// derived from the request's, which escapes); the next ones find it pooled.
	for i := 2; i < len(ctxs); i++ {
		if ctxs[i] != ctxs[1] || reqs[i] != reqs[1] {
			t.Errorf("request %d: same context as request 2: %v, same Request: %v; want both (nothing escaped)",
				i+1, ctxs[i] == ctxs[1], reqs[i] == reqs[1])
		}
	}
	seen := map[string]bool{}
	for i, p := range parents {
		if !strings.Contains(p, traceID) || seen[p] {
			t.Errorf("request %d: upstream Traceparent = %q, want a new span of trace %s", i+1, p, traceID)
		}
		seen[p] = true
	}
}
