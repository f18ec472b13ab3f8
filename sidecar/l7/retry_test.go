package l7

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// firstUpstream always picks its first endpoint, so that the first try of every request
// goes there; it lists all its endpoints, so that retries find the others.
type firstUpstream struct{ eps []*balancer.Endpoint }

func (u firstUpstream) Picker() balancer.Picker                            { return u }
func (u firstUpstream) Endpoints() []*balancer.Endpoint                    { return u.eps }
func (u firstUpstream) Pick(balancer.PickInfo) (*balancer.Endpoint, error) { return u.eps[0], nil }

func firstOf(addrs ...string) firstUpstream {
	var eps []*balancer.Endpoint
	for _, a := range addrs {
		eps = append(eps, balancer.NewEndpoint(discovery.Endpoint{Address: a, Weight: 1}, nil))
	}
	return firstUpstream{eps}
}

// deadAddr is a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// seen is what a test backend saw of one request.
type seen struct {
	method, body, attempt string
}

// recordingBackend answers every request with h and records what it saw.
type recordingBackend struct {
	addr string
	mu   sync.Mutex
	reqs []seen
}

func startRecording(t *testing.T, h func(w http.ResponseWriter, r *http.Request, body string)) *recordingBackend {
	t.Helper()
	rb := &recordingBackend{}
	rb.addr = startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rb.mu.Lock()
		rb.reqs = append(rb.reqs, seen{r.Method, string(b), r.Header.Get("X-Ferry-Attempt")})
		rb.mu.Unlock()
		h(w, r, string(b))
	}))
	return rb
}

func (rb *recordingBackend) seen() []seen {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return append([]seen(nil), rb.reqs...)
}

func status(code int) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, _ *http.Request, _ string) { w.WriteHeader(code) }
}

func ok(w http.ResponseWriter, _ *http.Request, body string) { _, _ = io.WriteString(w, "ok:"+body) }

func retryPolicy(on RetryOn, mod func(*RetryPolicy)) *RetryPolicy {
	p := &RetryPolicy{Retries: 2, On: on, BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond, BufferLimit: 1 << 10}
	if mod != nil {
		mod(p)
	}
	return p
}

// hangupBackend reads a request's headers, then closes the connection without answering.
func hangupBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil || line == "\r\n" {
					break
				}
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func send(t *testing.T, method, url, body string, h2c bool, header http.Header) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client(h2c).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestRetryConditions(t *testing.T) {
	grpcUnavailable := func(w http.ResponseWriter, _ *http.Request, _ string) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.WriteHeader(200)
	}
	bigBody := strings.Repeat("x", 2<<10) // over the 1 KiB buffer limit
	tests := []struct {
		name       string
		bad        func(http.ResponseWriter, *http.Request, string) // nil: a backend that hangs up
		on         RetryOn
		codes      []int
		method     string
		body       string
		header     http.Header
		wantStatus int
		wantRetry  bool
	}{
		{name: "503 on gateway-error", bad: status(503), on: RetryGatewayError, method: "GET", wantStatus: 200, wantRetry: true},
		{name: "500 is not a gateway error", bad: status(500), on: RetryGatewayError, method: "GET", wantStatus: 500},
		{name: "500 on 5xx", bad: status(500), on: Retry5xx, method: "GET", wantStatus: 200, wantRetry: true},
		{name: "409 on retriable-status-codes", bad: status(409), on: RetryStatusCodes, codes: []int{409}, method: "GET", wantStatus: 200, wantRetry: true},
		{name: "409 not listed", bad: status(409), on: RetryStatusCodes, codes: []int{429}, method: "GET", wantStatus: 409},
		{name: "503 without a matching condition", bad: status(503), on: RetryConnectFailure | RetryReset, method: "GET", wantStatus: 503},
		{name: "reset on reset", on: RetryReset, method: "GET", wantStatus: 200, wantRetry: true},
		{name: "reset on 5xx", on: Retry5xx, method: "GET", wantStatus: 200, wantRetry: true},
		{name: "reset not retried on connect-failure", on: RetryConnectFailure, method: "GET", wantStatus: 502},
		{name: "POST with a buffered body", bad: status(503), on: RetryGatewayError, method: "POST", body: "payload", wantStatus: 200, wantRetry: true},
		{name: "POST reset with a buffered body", on: RetryReset, method: "POST", body: "payload", wantStatus: 200, wantRetry: true},
		{name: "POST without a body is not idempotent", bad: status(503), on: RetryGatewayError, method: "POST", wantStatus: 503},
		{name: "PUT without a body is idempotent", bad: status(503), on: RetryGatewayError, method: "PUT", wantStatus: 200, wantRetry: true},
		{name: "body over the buffer limit", bad: status(503), on: RetryGatewayError, method: "PUT", body: bigBody, wantStatus: 503},
		{name: "gRPC unavailable", bad: grpcUnavailable, on: RetryGRPCUnavailable, method: "POST", body: "\x00\x00\x00\x00\x00",
			header: http.Header{"Content-Type": {"application/grpc"}}, wantStatus: 200, wantRetry: true},
		{name: "gRPC unavailable not listed", bad: grpcUnavailable, on: RetryGRPCCancelled | Retry5xx, method: "POST", body: "\x00\x00\x00\x00\x00",
			header: http.Header{"Content-Type": {"application/grpc"}}, wantStatus: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var bad string
			var badRec *recordingBackend
			if tc.bad != nil {
				badRec = startRecording(t, tc.bad)
				bad = badRec.addr
			} else {
				bad = hangupBackend(t)
			}
			good := startRecording(t, ok)
			up := firstOf(bad, good.addr)
			proxy := startProxy(t, up, func(o *Options) { o.Retry = retryPolicy(tc.on, func(p *RetryPolicy) { p.StatusCodes = tc.codes }) })
			resp, body := send(t, tc.method, "http://"+proxy+"/", tc.body, false, tc.header)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status = %d (%s), want %d", resp.StatusCode, body, tc.wantStatus)
			}
			goodSaw := good.seen()
			if retried := len(goodSaw) > 0; retried != tc.wantRetry {
				t.Fatalf("retried = %v, want %v", retried, tc.wantRetry)
			}
			if tc.wantRetry {
				if want := (seen{tc.method, tc.body, "2"}); goodSaw[0] != want {
					t.Errorf("retry seen = %+v, want %+v (same method and body, second attempt)", goodSaw[0], want)
				}
				if tc.header == nil && body != "ok:"+tc.body {
					t.Errorf("body = %q, want the retry's answer", body)
				}
			}
			if badRec != nil {
				if s := badRec.seen(); len(s) != 1 || s[0].attempt != "1" || s[0].body != tc.body {
					t.Errorf("first try seen = %+v, want one try, attempt 1, the full body", s)
				}
			}
		})
	}
}

func TestRetryConnectFailureSendsNothingTwice(t *testing.T) {
	good := startRecording(t, ok)
	dead := deadAddr(t)
	up := firstOf(dead, good.addr)
	// POST with a body larger than the buffer: still retried, because a connect failure
	// sent nothing; the body reaches the second endpoint whole.
	big := strings.Repeat("y", 3<<10)
	proxy := startProxy(t, up, func(o *Options) { o.Retry = retryPolicy(RetryConnectFailure, nil) })
	resp, body := send(t, "POST", "http://"+proxy+"/", big, false, nil)
	if resp.StatusCode != 200 || body != "ok:"+big {
		t.Fatalf("got %d, %d bytes; want 200 and the body echoed", resp.StatusCode, len(body))
	}
	if s := good.seen(); len(s) != 1 || s[0].attempt != "2" {
		t.Errorf("good saw %d requests (attempt %q), want one, the second attempt", len(s), s[0].attempt)
	}
	if f := up.eps[0].State.Failures.Load(); f != 1 {
		t.Errorf("dead endpoint Failures = %d, want 1", f)
	}
}

func TestRetriesRunOutAndNeverRepeatAnEndpoint(t *testing.T) {
	var hits [3]atomic.Int64
	var addrs []string
	for i := range hits {
		addrs = append(addrs, startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			w.Header().Set("X-Attempt-Seen", r.Header.Get("X-Ferry-Attempt"))
			w.WriteHeader(503)
		})))
	}
	up := firstOf(addrs...)
	for _, retries := range []int{1, 2, 5} {
		t.Run(strconv.Itoa(retries), func(t *testing.T) {
			for i := range hits {
				hits[i].Store(0)
			}
			proxy := startProxy(t, up, func(o *Options) {
				o.Retry = retryPolicy(RetryGatewayError, func(p *RetryPolicy) { p.Retries = retries })
			})
			resp, _ := send(t, "GET", "http://"+proxy+"/", "", false, nil)
			tries := min(retries+1, 3) + max(0, retries+1-3) // after 3 distinct endpoints, tried ones again
			if resp.StatusCode != 503 || resp.Header.Get("X-Attempt-Seen") != strconv.Itoa(retries+1) {
				t.Errorf("got %d, last attempt %q; want the last try's 503, attempt %d", resp.StatusCode, resp.Header.Get("X-Attempt-Seen"), retries+1)
			}
			total := hits[0].Load() + hits[1].Load() + hits[2].Load()
			if total != int64(tries) {
				t.Errorf("backends saw %d tries, want %d", total, tries)
			}
			for i := range hits {
				if n := hits[i].Load(); retries >= 2 && n == 0 {
					t.Errorf("endpoint %d never tried with %d retries over 3 endpoints", i, retries)
				}
				if n := hits[i].Load(); retries < 3 && n > 1 {
					t.Errorf("endpoint %d tried %d times while others were untried", i, n)
				}
			}
		})
	}
}

func TestPerTryTimeout(t *testing.T) {
	slow := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	good := startRecording(t, ok)
	t.Run("retried on another endpoint", func(t *testing.T) {
		proxy := startProxy(t, firstOf(slow, good.addr), func(o *Options) {
			o.Retry = retryPolicy(RetryReset, func(p *RetryPolicy) { p.PerTryTimeout = 100 * time.Millisecond })
		})
		start := time.Now()
		resp, _ := send(t, "GET", "http://"+proxy+"/", "", false, nil)
		if resp.StatusCode != 200 || time.Since(start) > 2*time.Second {
			t.Errorf("got %d after %v, want 200 soon after the 100ms per-try timeout", resp.StatusCode, time.Since(start))
		}
	})
	t.Run("last try times out", func(t *testing.T) {
		proxy := startProxy(t, firstOf(slow, slow), func(o *Options) {
			o.Retry = retryPolicy(RetryReset, func(p *RetryPolicy) { p.Retries = 1; p.PerTryTimeout = 100 * time.Millisecond })
		})
		resp, _ := send(t, "GET", "http://"+proxy+"/", "", false, nil)
		if ps := resp.Header.Get("Proxy-Status"); resp.StatusCode != 504 || !strings.Contains(ps, "per_try_timeout") {
			t.Errorf("got %d %q, want 504 naming per_try_timeout", resp.StatusCode, ps)
		}
	})
	t.Run("request_timeout spans the tries", func(t *testing.T) {
		proxy := startProxy(t, firstOf(slow, slow), func(o *Options) {
			o.RequestTimeout = 250 * time.Millisecond
			o.Retry = retryPolicy(RetryReset, func(p *RetryPolicy) { p.Retries = 5; p.PerTryTimeout = 200 * time.Millisecond })
		})
		start := time.Now()
		resp, _ := send(t, "GET", "http://"+proxy+"/", "", false, nil)
		el := time.Since(start)
		// A try given the first try's clock reading would get 200ms again (and time out
		// per try) instead of the 50ms left; none may end before the 250ms.
		if ps := resp.Header.Get("Proxy-Status"); resp.StatusCode != 504 || !strings.Contains(ps, "request_timeout") ||
			el < 250*time.Millisecond || el > 2*time.Second {
			t.Errorf("got %d %q after %v, want 504 naming request_timeout after about 250ms", resp.StatusCode, ps, el)
		}
	})
}

func TestRetryBudget(t *testing.T) {
	bad := startRecording(t, status(503))
	good := startRecording(t, ok)
	for _, tc := range []struct {
		name   string
		limits circuit.Limits
		want   int
	}{
		{"no budget", circuit.Limits{BudgetPercent: 0, MinRetryConcurrency: 0}, 503},
		{"the minimum", circuit.Limits{BudgetPercent: 0, MinRetryConcurrency: 1}, 200},
		{"max_retries", circuit.Limits{BudgetPercent: 100, MinRetryConcurrency: 10, MaxRetries: -1}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rejected []string
			var mu sync.Mutex
			b := circuit.New(func(l string) { mu.Lock(); rejected = append(rejected, l); mu.Unlock() })
			b.SetLimits(tc.limits)
			proxy := startProxy(t, firstOf(bad.addr, good.addr), func(o *Options) {
				o.Retry = retryPolicy(RetryGatewayError, nil)
				o.Breaker = b
			})
			resp, _ := send(t, "GET", "http://"+proxy+"/", "", false, nil)
			if resp.StatusCode != tc.want {
				t.Errorf("status = %d, want %d", resp.StatusCode, tc.want)
			}
			mu.Lock()
			defer mu.Unlock()
			if (tc.want == 503) != (len(rejected) == 1 && rejected[0] == circuit.RetryBudget) {
				t.Errorf("rejections = %v", rejected)
			}
			if s := b.Stats(); s.Requests != 0 || s.Retries != 0 {
				t.Errorf("Stats() after the request = %+v, want all zero", s)
			}
		})
	}
}

func TestCircuitBreakerLimits(t *testing.T) {
	release := make(chan struct{})
	slow := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	for _, tc := range []struct {
		name   string
		limits circuit.Limits
		want   string
	}{
		{"max_requests", circuit.Limits{MaxRequests: 1}, `ferry; error=connection_limit_reached; details="max_requests (1) reached"`},
		{"max_connections", circuit.Limits{MaxConnections: 1}, `ferry; error=connection_limit_reached; details="max_connections (1) reached"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := circuit.New(nil)
			b.SetLimits(tc.limits)
			tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16, Breaker: b})
			t.Cleanup(tr.CloseIdleConnections)
			ep := balancer.NewEndpoint(discovery.Endpoint{Address: slow}, nil)
			proxy := startProxy(t, staticUpstream{balancer.NewRoundRobin([]*balancer.Endpoint{ep})}, func(o *Options) {
				o.Breaker = b
				o.Transport = tr
			})
			first := make(chan int, 1)
			go func() {
				resp, err := client(false).Get("http://" + proxy + "/")
				if err != nil {
					first <- 0
					return
				}
				resp.Body.Close()
				first <- resp.StatusCode
			}()
			deadline := time.Now().Add(5 * time.Second)
			for ep.State.Active.Load() != 1 && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
			}
			start := time.Now()
			resp, _ := send(t, "GET", "http://"+proxy+"/", "", false, nil)
			if ps := resp.Header.Get("Proxy-Status"); resp.StatusCode != 503 || ps != tc.want || time.Since(start) > time.Second {
				t.Errorf("second request: %d %q after %v, want an immediate 503 %q", resp.StatusCode, ps, time.Since(start), tc.want)
			}
			release <- struct{}{}
			if code := <-first; code != 200 {
				t.Errorf("first request = %d, want 200", code)
			}
			if f := ep.State.Failures.Load(); f != 0 {
				t.Errorf("endpoint Failures = %d, want 0: a local limit is not the endpoint's failure", f)
			}
		})
	}
}

func TestGRPCStatusFeedsOutlierDetection(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		_, _ = w.Write([]byte{0, 0, 0, 0, 0})
		w.Header().Set("Grpc-Status", r.URL.Query().Get("s"))
	}))
	tests := []struct {
		grpcStatus string
		wantFail   bool
	}{
		{"0", false}, {"5", false}, {"14", true}, {"13", true}, {"4", true}, {"8", false},
	}
	for _, tc := range tests {
		t.Run(tc.grpcStatus, func(t *testing.T) {
			ep := balancer.NewEndpoint(discovery.Endpoint{Address: backend}, nil)
			proxy := startProxy(t, staticUpstream{balancer.NewRoundRobin([]*balancer.Endpoint{ep})}, nil)
			resp, _ := send(t, "POST", "http://"+proxy+"/svc/M?s="+tc.grpcStatus, "\x00\x00\x00\x00\x00", true,
				http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}})
			if resp.StatusCode != 200 || resp.Trailer.Get("Grpc-Status") != tc.grpcStatus {
				t.Fatalf("got %d grpc-status %q", resp.StatusCode, resp.Trailer.Get("Grpc-Status"))
			}
			deadline := time.Now().Add(2 * time.Second)
			for ep.State.Active.Load() != 0 && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
			}
			if got := ep.State.Failures.Load() == 1; got != tc.wantFail {
				t.Errorf("counted as a failure = %v, want %v", got, tc.wantFail)
			}
		})
	}
}

func TestGRPCToHTTP(t *testing.T) {
	want := map[string]int{"0": 200, "1": 499, "2": 500, "3": 400, "4": 504, "5": 404, "6": 409, "7": 403, "8": 429,
		"9": 400, "10": 409, "11": 400, "12": 501, "13": 500, "14": 503, "15": 500, "16": 401, "99": 500}
	for code, w := range want {
		if got := grpcToHTTP(code); got != w {
			t.Errorf("grpcToHTTP(%s) = %d, want %d", code, got, w)
		}
	}
}

func TestClientGoingAwayIsNotAFailure(t *testing.T) {
	entered := make(chan struct{}, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	}))
	ep := balancer.NewEndpoint(discovery.Endpoint{Address: backend}, nil)
	ep.State.SetTripwire(&balancer.Tripwire{Consecutive5xx: 1, Signal: make(chan struct{}, 1)})
	proxy := startProxy(t, staticUpstream{balancer.NewRoundRobin([]*balancer.Endpoint{ep})}, func(o *Options) {
		o.Retry = retryPolicy(RetryReset|Retry5xx, nil)
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+proxy+"/", nil)
	go func() { <-entered; cancel() }()
	if _, err := client(false).Do(req); err == nil {
		t.Fatal("request succeeded, want it cancelled")
	}
	deadline := time.Now().Add(2 * time.Second)
	for ep.State.Active.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if f, tot := ep.State.Failures.Load(), ep.State.Total.Load(); f != 0 || tot != 1 {
		t.Errorf("Failures, Total = %d, %d; want 0, 1 (no failure, no retry)", f, tot)
	}
}

func TestAttemptHeader(t *testing.T) {
	var got atomic.Value
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(fmt.Sprint(r.Header["X-Ferry-Attempt"]))
	}))
	for _, tc := range []struct {
		direction, sent, want string
	}{
		{telemetry.Outbound, "", "[1]"},
		{telemetry.Outbound, "7", "[1]"},
		{telemetry.Inbound, "2", "[2]"}, // the peer sidecar's count reaches the application
		{telemetry.Inbound, "", "[]"},
	} {
		proxy := startProxy(t, upstreamOf(backend), func(o *Options) { o.Direction = tc.direction })
		h := http.Header{}
		if tc.sent != "" {
			h.Set("X-Ferry-Attempt", tc.sent)
		}
		send(t, "GET", "http://"+proxy+"/", "", false, h)
		if got.Load() != tc.want {
			t.Errorf("%s with %q sent: backend saw X-Ferry-Attempt %v, want %s", tc.direction, tc.sent, got.Load(), tc.want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	p := &RetryPolicy{BackoffBase: 10 * time.Millisecond, BackoffMax: 75 * time.Millisecond}
	for n, ceiling := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 75 * time.Millisecond, 30: 75 * time.Millisecond} {
		var top time.Duration
		for range 2000 {
			d := p.backoff(n)
			if d < 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want within [0, %v]", n, d, ceiling)
			}
			top = max(top, d)
		}
		if top < ceiling*8/10 {
			t.Errorf("backoff(%d) never came near %v (max %v): not full jitter", n, ceiling, top)
		}
	}
}

func TestParseRetryOn(t *testing.T) {
	on, err := ParseRetryOn([]string{"connect-failure", "5xx", "unavailable"})
	if err != nil || on != RetryConnectFailure|Retry5xx|RetryGRPCUnavailable {
		t.Errorf("ParseRetryOn() = %b, %v", on, err)
	}
	if _, err := ParseRetryOn([]string{"sometimes"}); err == nil {
		t.Error("ParseRetryOn(sometimes) error = nil")
	}
	if n := (Retry5xx | RetryGRPCUnavailable).name(); n != "5xx" {
		t.Errorf("name() = %q, want 5xx", n)
	}
	if len(retryNames) != 11 {
		t.Errorf("len(retryNames) = %d", len(retryNames))
	}
}

// TestReplayBody reads a body through two tries.
func TestReplayBody(t *testing.T) {
	t.Run("complete recording is replayed", func(t *testing.T) {
		rb := newReplayBody(strings.NewReader("hello world"), 64, 11)
		a := rb.attempt()
		if b, err := io.ReadAll(a); string(b) != "hello world" || err != nil {
			t.Fatalf("first try read %q, %v", b, err)
		}
		a.abandon()
		if !rb.complete.Load() {
			t.Fatal("not complete after EOF")
		}
		for range 2 {
			if b, err := io.ReadAll(rb.attempt()); string(b) != "hello world" || err != nil {
				t.Fatalf("replay read %q, %v", b, err)
			}
		}
	})
	t.Run("over the limit is not replayable", func(t *testing.T) {
		rb := newReplayBody(strings.NewReader(strings.Repeat("z", 100)), 10, -1)
		_, _ = io.ReadAll(rb.attempt())
		if rb.complete.Load() || rb.untouched() || safeToRepeat("PUT", rb, false) || safeToRepeat("PUT", rb, true) {
			t.Error("a body over the limit, read, counts as replayable")
		}
	})
	t.Run("untouched body may start over", func(t *testing.T) {
		rb := newReplayBody(strings.NewReader("abc"), 0, 3)
		a := rb.attempt()
		a.abandon()
		if !safeToRepeat("POST", rb, true) || safeToRepeat("POST", rb, false) {
			t.Error("safeToRepeat of an untouched body: want true only when nothing was sent")
		}
		if _, err := a.Read(make([]byte, 1)); err != errTryAbandoned {
			t.Errorf("Read after abandon = %v, want errTryAbandoned", err)
		}
		if b, _ := io.ReadAll(rb.attempt()); string(b) != "abc" {
			t.Errorf("second try read %q, want abc", b)
		}
	})
}
