package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// BenchmarkProxy measures the whole proxy path (client → Handler → backend and back, over
// loopback HTTP/1.1 with keep-alive) without and with resilience configured: a retry policy
// with a budget, the circuit breaker, and outlier detection's tripwire on the endpoints.
// None of it triggers (the backend always answers 200), so the difference is the cost of
// resilience on the happy path. The policy cases add an inbound policy of 20 access rules
// and a rate limit that never triggers, for the cost of enforcement against plain. The
// routed case adds a table of 10 prefix routes, the last of which takes the requests (so
// every route is tried), with a request header set, for the cost of routing.
func BenchmarkProxy(b *testing.B) {
	backend := startBenchBackend(b)
	for _, bc := range []struct {
		name      string
		resilient bool
		body      string
		policy    bool
		routed    bool
	}{
		{"GET/plain", false, "", false, false},
		{"GET/resilient", true, "", false, false},
		{"GET/policy", false, "", true, false},
		{"GET/routed", false, "", false, true},
		{"POST/plain", false, strings.Repeat("p", 512), false, false},
		{"POST/resilient", true, strings.Repeat("p", 512), false, false},
		{"POST/policy", false, strings.Repeat("p", 512), true, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			o, tr := benchOptions(b, backend, bc.resilient, bc.policy)
			if bc.routed {
				o.Routes = benchRoutes(b, Target{Name: "bench", Upstream: o.Upstream, Transport: tr, RequestTimeout: o.RequestTimeout})
			}
			defer tr.CloseIdleConnections()
			srv := NewServer(ServerOptions{ReadHeaderTimeout: time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}, NewHandler(o))
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(guardListener{ln}) }()
			defer srv.Close()
			url := "http://" + ln.Addr().String() + "/"
			ct := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
			defer ct.CloseIdleConnections()
			c := &http.Client{Transport: ct}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var body io.Reader
					method := http.MethodGet
					if bc.body != "" {
						body, method = strings.NewReader(bc.body), http.MethodPost
					}
					req, _ := http.NewRequest(method, url, body)
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			// Wall time suffers from whatever else runs on the machine; the process's CPU
			// time per request (client, proxy and backend together) much less so.
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N)/1000, "cpu-µs/op")
		})
	}
}

// benchPolicy is 20 access rules, none of which matches the benchmark's requests but the
// last (an allow rule for every path), and a rate limit on every request that never
// triggers.
func benchPolicy(b *testing.B) *policy.Policy {
	b.Helper()
	c := &policy.Config{RateLimits: []policy.RateLimit{{Name: "all", PathPrefix: "/", RequestsPerSecond: 1e9, Burst: 1e9}}}
	for i := range 19 {
		c.Access.Rules = append(c.Access.Rules, policy.Rule{Name: "deny-" + strconv.Itoa(i),
			From: []string{"spiffe://mesh.local/svc/batch-" + strconv.Itoa(i)}, Paths: []string{"/admin-" + strconv.Itoa(i) + "/*"},
			Methods: []string{"DELETE"}, Action: "deny"})
	}
	c.Access.Rules = append(c.Access.Rules, policy.Rule{Name: "all", Paths: []string{"/**", "/"}, Action: "allow"})
	p, err := policy.Compile(c, policy.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startBenchBackend(b *testing.B) string {
	b.Helper()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "hello, world\n")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// benchRoutes is a route table of 10 prefix routes forwarding to t, the last taking every
// path, with a request header set.
func benchRoutes(b *testing.B, t Target) *Routing {
	var routes []route.Route
	for i := range 9 {
		routes = append(routes, route.Route{Name: fmt.Sprintf("r%d", i), Match: route.Match{Prefix: fmt.Sprintf("/api/v%d/", i)}, Upstream: "bench"})
	}
	routes = append(routes, route.Route{Name: "all", Match: route.Match{Prefix: "/"}, Upstream: "bench",
		RequestHeaders: route.HeaderOps{Set: map[string]string{"x-route": "all"}}})
	table, err := route.Compile(routes, route.Options{})
	if err != nil {
		b.Fatal(err)
	}
	m := telemetry.NewMetrics()
	return &Routing{Table: table, Target: func(*route.Entry, string) Target { return t },
		Metrics: func(up, name string) *telemetry.HTTPMetrics { return m.HTTPRoute(telemetry.Outbound, up, name) }}
}

// BenchmarkH1Pool measures one upstream HTTP/1.1 round trip (request written, response
// read to its end, connection back in the pool) through Ferry's Transport, against
// net/http's Transport configured as Ferry used it before, over loopback to a net/http
// backend. The backend's work is in the numbers too: compare the two, not the absolutes.
func BenchmarkH1Pool(b *testing.B) {
	backend := startBenchBackend(b)
	ferry := NewTransport(TransportOptions{Protocol: ProtocolHTTP1, ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 256})
	defer ferry.CloseIdleConnections()
	var p http.Protocols
	p.SetHTTP1(true)
	std := &http.Transport{Protocols: &p, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute, DisableCompression: true}
	defer std.CloseIdleConnections()
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		body string
	}{
		{"GET/ferry", ferry, ""},
		{"GET/net-http", std, ""},
		{"POST/ferry", ferry, strings.Repeat("p", 512)},
		{"POST/net-http", std, strings.Repeat("p", 512)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var body io.Reader
					method := http.MethodGet
					if tc.body != "" {
						body, method = strings.NewReader(tc.body), http.MethodPost
					}
					req, _ := http.NewRequest(method, "http://"+backend+"/", body)
					req.Header["User-Agent"] = []string{""}
					resp, err := tc.rt.RoundTrip(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkProxyAllocs measures what the proxy alone allocates per request: its client
// writes a fixed GET (or POST) on a raw TCP connection and reads the fixed-size response into a
// fixed buffer, its backend answers every request head with a fixed 200 with a
// Content-Length, so neither allocates per request and allocs/op and B/op are the
// proxy's (H1Server, Handler and the upstream round trip). Each parallel client has its own
// connection to the proxy.
func BenchmarkProxyAllocs(b *testing.B) {
	backend := startRawBackend(b)
	get := []byte("GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: raw\r\nAccept: */*\r\nX-Request-Id: 0123456789abcdef\r\n\r\n")
	// A 512-byte body, which the raw backend skips (it answers every request head).
	post := []byte("POST /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: raw\r\nContent-Type: text/plain\r\n" +
		"X-Request-Id: 0123456789abcdef\r\nContent-Length: 512\r\n\r\n" + strings.Repeat("p", 512))
	for _, bc := range []struct {
		name      string
		req       []byte
		resilient bool
		policy    bool
	}{
		{"GET/plain", get, false, false},
		{"GET/resilient", get, true, false},
		{"GET/policy", get, false, true},
		{"POST/plain", post, false, false},
		{"POST/resilient", post, true, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			o, tr := benchOptions(b, backend, bc.resilient, bc.policy)
			defer tr.CloseIdleConnections()
			// The sidecar's HTTP/1.x server, as its listeners run it.
			srv := NewH1Server(ServerOptions{ReadHeaderTimeout: time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}, NewHandler(o), nil)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					if !srv.ServeConn(GuardConn(c), nil) {
						_ = c.Close()
					}
				}
			}()
			defer func() {
				_ = ln.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			}()
			req := bc.req
			// The response's length, learnt once (it does not change: the Date header is
			// of fixed width).
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			respLen := rawResponseLen(b, c, req)
			c.Close()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				buf := make([]byte, respLen)
				for pb.Next() {
					if _, err := c.Write(req); err != nil {
						b.Error(err)
						return
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						b.Error(err)
						return
					}
					if string(buf[:12]) != "HTTP/1.1 200" || string(buf[len(buf)-len(rawBody):]) != rawBody {
						b.Errorf("response %q, want a 200 ending in %q", buf, rawBody)
						return
					}
				}
			})
		})
	}
}

const rawBody = "hello, world\n"

// rawResponseLen sends req on c and returns the length of the response (head and
// Content-Length body).
func rawResponseLen(b *testing.B, c net.Conn, req []byte) int {
	b.Helper()
	if _, err := c.Write(req); err != nil {
		b.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if head, _, ok := strings.Cut(string(got), "\r\n\r\n"); ok && len(got) >= len(head)+4+len(rawBody) {
			if len(got) != len(head)+4+len(rawBody) || !strings.Contains(head, "Content-Length: 13\r\n") {
				b.Fatalf("response %q, want a head with Content-Length: 13 and %q", got, rawBody)
			}
			return len(got)
		}
		if err != nil {
			b.Fatalf("response %q: %v", got, err)
		}
	}
}

// startRawBackend serves a fixed 200 response (rawBody) for every request head on a
// connection, with raw reads and writes: it allocates nothing per request. Requests must
// have no body.
func startRawBackend(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n" + rawBody)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 16<<10)
				// matched is how much of "\r\n\r\n" the bytes read so far end with.
				matched := 0
				const end = "\r\n\r\n"
				for {
					n, err := c.Read(buf)
					for _, ch := range buf[:n] {
						switch {
						case ch == end[matched]:
							matched++
						case ch == '\r':
							matched = 1
						default:
							matched = 0
						}
						if matched == len(end) {
							matched = 0
							if _, err := c.Write(resp); err != nil {
								return
							}
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	b.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().String()
}

// benchOptions is the Handler configuration of the proxy benchmarks: round robin over three
// endpoints of backend, a 5 s request timeout; resilient adds a circuit breaker, retries
// and outlier tripwires (none of which fires on the happy path), policy the inbound policy
// of benchPolicy. It returns the options and their transport.
func benchOptions(b *testing.B, backend string, resilient, policy bool) (Options, *Transport) {
	var eps []*balancer.Endpoint
	for range 3 {
		eps = append(eps, balancer.NewEndpoint(discovery.Endpoint{Address: backend, Weight: 1}, nil))
	}
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 256})
	o := Options{Direction: telemetry.Outbound, Name: "bench", Upstream: staticUpstream{balancer.NewRoundRobin(eps)},
		Transport: tr, RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "bench")}
	if resilient {
		br := circuit.New(nil)
		br.SetLimits(circuit.Limits{MaxConnections: 1024, MaxPending: 1024, MaxRequests: 1024, BudgetPercent: 20, MinRetryConcurrency: 3})
		tr = NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 256, Breaker: br})
		o.Transport, o.Breaker = tr, br
		o.Retry = &RetryPolicy{Retries: 2, On: RetryConnectFailure | RetryReset | RetryGatewayError,
			PerTryTimeout: 2 * time.Second, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond, BufferLimit: 64 << 10}
		sig := make(chan struct{}, 1)
		for _, e := range eps {
			e.State.SetTripwire(&balancer.Tripwire{Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, Signal: sig})
		}
	}
	if policy {
		o.Direction, o.Policy = telemetry.Inbound, benchPolicy(b)
	}
	return o, tr
}

// BenchmarkUpstreamHeader measures building the upstream request's header from a typical
// downstream one: into a new map (a state used once) and into the map a reused state keeps.
func BenchmarkUpstreamHeader(b *testing.B) {
	in := http.Header{"Accept": {"*/*"}, "User-Agent": {"bench"}, "X-Request-Id": {"0123456789abcdef"},
		"Accept-Encoding": {"gzip"}, "X-Forwarded-For": {"192.0.2.1"}}
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var f reqFields
			upstreamHeader(nil, in, &f)
		}
	})
	b.Run("kept", func(b *testing.B) {
		b.ReportAllocs()
		out := make(http.Header)
		for b.Loop() {
			var f reqFields
			upstreamHeader(out, in, &f)
			clear(out)
		}
	})
}

// BenchmarkH1DeadlineArm measures arming and disarming the response-header deadline of
// back-to-back round trips on one upstream connection with the same timeout (the pool's
// share of a request with request_timeout).
func BenchmarkH1DeadlineArm(b *testing.B) {
	client, server := net.Pipe()
	defer server.Close()
	c := newH1Conn(&h1Host{p: newH1Pool(nil, 0, 0), addr: "pipe"}, client)
	defer c.close()
	cause := errors.New("timeout")
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		if !c.arm(now, now.Add(5*time.Second), cause) || !c.disarm() {
			b.Fatal("arm or disarm failed")
		}
	}
}
