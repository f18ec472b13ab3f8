package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestProtocols sends HTTP/1.1 (keep-alive), h2c, gRPC (all four kinds of calls) and
// WebSocket through one outbound HTTP listener, to one backend serving all of them; gRPC
// also through a second listener to grpc-go's own server; and a server-speaks-first
// protocol through a TCP listener.
func TestProtocols(t *testing.T) {
	ferrytest.CheckLeaks(t)
	sharedGRPC := newGRPCService()
	gs := grpc.NewServer()
	grpc_testing.RegisterTestServiceServer(gs, sharedGRPC)
	t.Cleanup(gs.Stop)
	web := startHTTPBackend(t, "web", func(mux *http.ServeMux) {
		mux.Handle("/ws", wsEcho)
		mux.Handle("/grpc.testing.TestService/", gs) // grpc-go's http.Handler mode (HTTP/2 only)
	})
	nativeGRPC := newGRPCService()
	nativeAddr := startGRPCBackend(t, nativeGRPC)
	tcp := startTCPBackend(t)

	dir := t.TempDir()
	admin, webAddr, grpcAddr, tcpAddr := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, dir, "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: web, address: %s, read_header_timeout: 1s}
  - {upstream: grpc, address: %s}
  - {upstream: tcp, address: %s, protocol: tcp}
upstreams:
  - name: web
    endpoints: [%s]
  - name: grpc
    endpoints: [%s]
  - name: tcp
    endpoints: [%s]
`, admin, webAddr, grpcAddr, tcpAddr, web.addr, nativeAddr, tcp.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()

	t.Run("http1_keepalive", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", webAddr, ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		br := bufio.NewReader(c)
		for i := range 5 {
			var req, want string
			if i%2 == 0 {
				req, want = "GET /hello HTTP/1.1\r\nHost: web\r\n\r\n", "web"
			} else {
				want = fmt.Sprintf("request %d on the same connection", i)
				req = fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n%s", len(want), want)
			}
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatalf("request %d: write: %v", i, err)
			}
			resp, body := readRawResponse(t, br)
			if resp.StatusCode != http.StatusOK || body != want {
				t.Fatalf("request %d: got %d %q, want 200 %q", i, resp.StatusCode, body, want)
			}
			if resp.Close {
				t.Fatalf("request %d: ferry closes the keep-alive connection", i)
			}
			if p := resp.Header.Get("X-Seen-Proto"); p != "HTTP/1.1" {
				t.Errorf("request %d: backend saw %q, want HTTP/1.1 (upstream protocol auto)", i, p)
			}
		}
	})

	t.Run("h2c", func(t *testing.T) {
		c := newClient(t, ferrytest.H2CProtocols())
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for i := range 10 {
			wg.Go(func() {
				want := fmt.Sprintf("h2c stream %d", i)
				r, err := tryDo(c, http.MethodPost, "http://"+webAddr+"/echo", nil, want)
				switch {
				case err != nil:
					errs <- err
				case r.status != http.StatusOK || r.body != want:
					errs <- fmt.Errorf("stream %d: got %d %q, want 200 %q", i, r.status, r.body, want)
				case r.proto != "HTTP/2.0":
					errs <- fmt.Errorf("stream %d: response protocol %s, want HTTP/2.0", i, r.proto)
				case r.header.Get("X-Seen-Proto") != "HTTP/2.0":
					errs <- fmt.Errorf("stream %d: backend saw %s, want HTTP/2.0 (upstream protocol auto)", i, r.header.Get("X-Seen-Proto"))
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}

		// The HTTP/2 connection outlives the listener's read_header_timeout (1s): that
		// timeout is for reading request headers, not for the life of a connection.
		time.Sleep(1500 * time.Millisecond)
		reused := false
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+webAddr+"/later", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request after 1.5s idle: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !reused {
			t.Errorf("request after 1.5s idle: status %d, connection reused %v; want 200 on the same connection", resp.StatusCode, reused)
		}
	})

	t.Run("grpc_shared_listener", func(t *testing.T) { testGRPC(t, webAddr, sharedGRPC) })
	t.Run("grpc_native_server", func(t *testing.T) { testGRPC(t, grpcAddr, nativeGRPC) })

	t.Run("websocket", func(t *testing.T) {
		ws, err := websocket.Dial("ws://"+webAddr+"/ws", "", "http://"+webAddr+"/")
		if err != nil {
			t.Fatalf("websocket dial through ferry: %v", err)
		}
		defer ws.Close()
		_ = ws.SetDeadline(time.Now().Add(ioTimeout))
		for _, msg := range []string{"hello", "through ferry", strings.Repeat("big frame ", 10_000)} {
			if _, err := ws.Write([]byte(msg)); err != nil {
				t.Fatalf("write: %v", err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(ws, got); err != nil {
				t.Fatalf("read echo of %d bytes: %v", len(msg), err)
			}
			if string(got) != msg {
				t.Fatalf("echo of %d bytes differs", len(msg))
			}
		}
	})

	t.Run("tcp_server_speaks_first", func(t *testing.T) {
		before := tcp.sessions.Load()
		tcpSession(t, tcpAddr, "HELO client", "second line", strings.Repeat("z", 50_000))
		if n := tcp.sessions.Load() - before; n != 1 {
			t.Errorf("backend saw %d sessions, want 1", n)
		}
	})
}

// testGRPC makes each kind of gRPC call through the ferry listener at addr to svc.
func testGRPC(t *testing.T, addr string, svc *grpcService) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := grpc_testing.NewTestServiceClient(conn)
	withTrailer := func(v string) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		t.Cleanup(cancel)
		return metadata.AppendToOutgoingContext(ctx, mdTrailer, v)
	}

	t.Run("unary", func(t *testing.T) {
		var hdr, tr metadata.MD
		resp, err := client.UnaryCall(withTrailer("unary"), &grpc_testing.SimpleRequest{
			ResponseSize: 1000, Payload: &grpc_testing.Payload{Body: []byte("caller")},
		}, grpc.Header(&hdr), grpc.Trailer(&tr))
		if err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
		if n := len(resp.GetPayload().GetBody()); n != 1000 || resp.GetUsername() != "caller" {
			t.Errorf("UnaryCall = %d bytes, %q; want 1000 bytes, \"caller\"", n, resp.GetUsername())
		}
		if got := tr.Get(mdTrailer); len(got) != 1 || got[0] != "unary" {
			t.Errorf("trailer %s = %v, want [unary]", mdTrailer, got)
		}
		// The caller's deadline (ioTimeout) reaches the handler.
		dl := hdr.Get(hdrDeadline)
		ms, err := strconv.Atoi(strings.Join(dl, ""))
		if err != nil || ms <= 0 || ms > int(ioTimeout/time.Millisecond) {
			t.Errorf("handler's deadline = %v ms, want within (0, %d]: the client's deadline must propagate", dl, ioTimeout/time.Millisecond)
		}
	})

	t.Run("server_streaming", func(t *testing.T) {
		sizes := []int32{1, 10, 100, 1000, 100_000}
		req := &grpc_testing.StreamingOutputCallRequest{}
		for _, s := range sizes {
			req.ResponseParameters = append(req.ResponseParameters, &grpc_testing.ResponseParameters{Size: s})
		}
		stream, err := client.StreamingOutputCall(withTrailer("out"), req)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range sizes {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if got := len(resp.GetPayload().GetBody()); got != int(s) {
				t.Fatalf("message %d has %d bytes, want %d", i, got, s)
			}
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last message: %v, want io.EOF", err)
		}
		if got := stream.Trailer().Get(mdTrailer); len(got) != 1 || got[0] != "out" {
			t.Errorf("trailer = %v, want [out]", got)
		}
	})

	t.Run("client_streaming", func(t *testing.T) {
		stream, err := client.StreamingInputCall(withTrailer("in"))
		if err != nil {
			t.Fatal(err)
		}
		var want int32
		for _, s := range []int32{27182, 8, 1828, 45904} {
			if err := stream.Send(&grpc_testing.StreamingInputCallRequest{Payload: payload(s, 'c')}); err != nil {
				t.Fatalf("send: %v", err)
			}
			want += s
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatalf("CloseAndRecv: %v", err)
		}
		if resp.GetAggregatedPayloadSize() != want {
			t.Errorf("aggregated size = %d, want %d", resp.GetAggregatedPayloadSize(), want)
		}
		if got := stream.Trailer().Get(mdTrailer); len(got) != 1 || got[0] != "in" {
			t.Errorf("trailer = %v, want [in]", got)
		}
	})

	t.Run("bidi_streaming", func(t *testing.T) {
		stream, err := client.FullDuplexCall(withTrailer("bidi"))
		if err != nil {
			t.Fatal(err)
		}
		// Ping-pong: each answer must arrive before the next request is sent, so nothing
		// may be buffered until the end of a stream.
		for i, s := range []int32{31415, 9, 2653, 58979} {
			if err := stream.Send(&grpc_testing.StreamingOutputCallRequest{
				ResponseParameters: []*grpc_testing.ResponseParameters{{Size: s}},
			}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("recv %d: %v", i, err)
			}
			if got := len(resp.GetPayload().GetBody()); got != int(s) {
				t.Fatalf("answer %d has %d bytes, want %d", i, got, s)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend: %v, want io.EOF", err)
		}
		if got := stream.Trailer().Get(mdTrailer); len(got) != 1 || got[0] != "bidi" {
			t.Errorf("trailer = %v, want [bidi]", got)
		}
	})

	t.Run("status_code", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(withTrailer("err"),
			mdFail, strconv.Itoa(int(codes.NotFound)), mdFailMsg, "widget 42 not found")
		var tr metadata.MD
		_, err := client.UnaryCall(ctx, &grpc_testing.SimpleRequest{}, grpc.Trailer(&tr))
		st, _ := status.FromError(err)
		if st.Code() != codes.NotFound || st.Message() != "widget 42 not found" {
			t.Errorf("UnaryCall error = %v, want NotFound \"widget 42 not found\"", err)
		}
		if got := tr.Get(mdTrailer); len(got) != 1 || got[0] != "err" {
			t.Errorf("trailer = %v, want [err]", got)
		}
	})

	t.Run("deadline_exceeded", func(t *testing.T) {
		for len(svc.slowCancelled) > 0 {
			<-svc.slowCancelled
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, mdSleep, "5s")
		start := time.Now()
		_, err := client.UnaryCall(ctx, &grpc_testing.SimpleRequest{})
		took := time.Since(start)
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("UnaryCall to a slow handler with a 200ms deadline: %v, want DeadlineExceeded", err)
		}
		if took > 2*time.Second {
			t.Errorf("the call took %v, want about 200ms", took)
		}
		select {
		case d := <-svc.slowCancelled:
			if d < 0 || d > 2*time.Second {
				t.Errorf("the handler's context ended after %v, want about 200ms (negative: never)", d)
			}
		case <-time.After(ioTimeout):
			t.Errorf("the slow handler never saw its call end")
		}
	})
}

// TestBalancing checks the distribution of requests over backends per policy.
func TestBalancing(t *testing.T) {
	ferrytest.CheckLeaks(t)
	a, b, c := startHTTPBackend(t, "a", nil), startHTTPBackend(t, "b", nil), startHTTPBackend(t, "c", nil)
	admin, rr, weighted, hash := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %[1]s}
outbound:
  - {upstream: rr, address: %[2]s}
  - {upstream: weighted, address: %[3]s}
  - {upstream: hash, address: %[4]s}
upstreams:
  - name: rr
    lb: round_robin
    endpoints: [%[5]s, %[6]s, %[7]s]
  - name: weighted
    lb: round_robin
    endpoints:
      - {address: %[5]s, weight: 1}
      - {address: %[6]s, weight: 3}
  - name: hash
    lb: ring_hash
    hash_on: header:x-user
    endpoints: [%[5]s, %[6]s, %[7]s]
`, admin, rr, weighted, hash, a.addr, b.addr, c.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)

	count := func(t *testing.T, addr string, n int) map[string]int {
		got := map[string]int{}
		for range n {
			r := do(t, client, http.MethodGet, "http://"+addr+"/", nil, "")
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			got[backendOf(r)]++
		}
		return got
	}
	within := func(got, want, tolerance int) bool { return got >= want-tolerance && got <= want+tolerance }

	t.Run("round_robin", func(t *testing.T) {
		got := count(t, rr, 300)
		for _, name := range []string{"a", "b", "c"} {
			if !within(got[name], 100, 3) {
				t.Errorf("round_robin over 300 requests: %v, want 100±3 each", got)
				break
			}
		}
	})
	t.Run("weighted_1_3", func(t *testing.T) {
		got := count(t, weighted, 400)
		if !within(got["a"], 100, 10) || !within(got["b"], 300, 10) || got["a"]+got["b"] != 400 {
			t.Errorf("weights 1:3 over 400 requests: %v, want a≈100 b≈300 (±10)", got)
		}
	})
	t.Run("ring_hash_header", func(t *testing.T) {
		owner := map[string]string{}
		used := map[string]bool{}
		for round := range 5 {
			for u := range 30 {
				user := fmt.Sprintf("user-%d", u)
				r := do(t, client, http.MethodGet, "http://"+hash+"/", http.Header{"X-User": {user}}, "")
				if r.status != http.StatusOK {
					t.Fatalf("status %d: %s", r.status, r.body)
				}
				be := backendOf(r)
				used[be] = true
				if round == 0 {
					owner[user] = be
				} else if owner[user] != be {
					t.Fatalf("%s went to %s, then to %s: ring_hash on x-user must be sticky", user, owner[user], be)
				}
			}
		}
		if len(used) < 2 {
			t.Errorf("30 users all went to %v: ring_hash does not spread keys", used)
		}
	})
}

// TestInbound checks the inbound listener: it forwards to the local application and sets
// X-Forwarded-For and X-Request-Id.
func TestInbound(t *testing.T) {
	ferrytest.CheckLeaks(t)
	app := startHTTPBackend(t, "app", nil)
	admin, in := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
inbound: {address: %s, target: %s, protocol: http}
`, admin, in, app.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

	seen := func(t *testing.T, h http.Header) seenRequest {
		t.Helper()
		r := do(t, client, http.MethodGet, "http://"+in+"/inbound", h, "")
		if r.status != http.StatusOK || r.body != "app" {
			t.Fatalf("GET through the inbound listener = %d %q, want 200 \"app\"", r.status, r.body)
		}
		select {
		case s := <-app.seen:
			return s
		case <-time.After(ioTimeout):
			t.Fatal("the app saw no request")
			return seenRequest{}
		}
	}

	t.Run("generated_request_id", func(t *testing.T) {
		s := seen(t, nil)
		if !uuid.MatchString(s.requestID) {
			t.Errorf("app saw X-Request-Id %q, want a generated UUID", s.requestID)
		}
		if s.forwardedFor != "127.0.0.1" {
			t.Errorf("app saw X-Forwarded-For %q, want 127.0.0.1", s.forwardedFor)
		}
		if s.path != "/inbound" {
			t.Errorf("app saw path %q, want /inbound", s.path)
		}
		if again := seen(t, nil); again.requestID == s.requestID {
			t.Errorf("two requests got the same generated X-Request-Id %q", s.requestID)
		}
	})
	t.Run("given_request_id", func(t *testing.T) {
		s := seen(t, http.Header{"X-Request-Id": {"req-abc-123"}, "X-Forwarded-For": {"203.0.113.7"}})
		if s.requestID != "req-abc-123" {
			t.Errorf("app saw X-Request-Id %q, want the caller's req-abc-123", s.requestID)
		}
		if s.forwardedFor != "203.0.113.7, 127.0.0.1" {
			t.Errorf("app saw X-Forwarded-For %q, want \"203.0.113.7, 127.0.0.1\"", s.forwardedFor)
		}
	})
}

// TestLocalReplies checks the responses Ferry makes itself when the upstream fails.
func TestLocalReplies(t *testing.T) {
	ferrytest.CheckLeaks(t)
	slow := startHTTPBackend(t, "slow", nil)
	admin, down, slowAddr, closed := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: down, address: %s}
  - {upstream: slow, address: %s}
upstreams:
  - name: down
    endpoints: [%s]
  - name: slow
    endpoints: [%s]
    request_timeout: 200ms
`, admin, down, slowAddr, closed, slow.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)

	t.Run("connection_refused", func(t *testing.T) {
		r := do(t, client, http.MethodGet, "http://"+down+"/", nil, "")
		ps := r.header.Get("Proxy-Status")
		if r.status != http.StatusServiceUnavailable || !strings.HasPrefix(ps, "ferry; error=connection_refused") {
			t.Errorf("GET with the only endpoint refusing = %d, Proxy-Status %q; want 503, ferry; error=connection_refused", r.status, ps)
		}
	})
	t.Run("http_response_timeout", func(t *testing.T) {
		start := time.Now()
		r := do(t, client, http.MethodGet, "http://"+slowAddr+"/slow?d=5s", nil, "")
		took := time.Since(start)
		ps := r.header.Get("Proxy-Status")
		if r.status != http.StatusGatewayTimeout || !strings.HasPrefix(ps, "ferry; error=http_response_timeout") {
			t.Errorf("GET to a slow backend = %d, Proxy-Status %q; want 504, ferry; error=http_response_timeout", r.status, ps)
		}
		if took > 2*time.Second {
			t.Errorf("the 504 took %v, want about request_timeout (200ms)", took)
		}
	})
}

// TestBadRequests sends malformed and ambiguous requests on raw connections: Ferry must
// answer 4xx itself, and nothing may reach the backend.
func TestBadRequests(t *testing.T) {
	ferrytest.CheckLeaks(t)
	backend := startHTTPBackend(t, "backend", nil)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: api, address: %s, max_header_bytes: 4096}
upstreams:
  - name: api
    endpoints: [%s]
`, admin, out, backend.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()

	big := strings.Repeat("x", 16<<10)
	cases := []struct {
		name, req string
		want      []int
	}{
		{"malformed_request_line", "THIS IS NOT AN HTTP REQUEST LINE\r\nHost: api\r\n\r\n", []int{400}},
		// Shorter than the 14 bytes of "PRI * HTTP/2.0", which the h2c detection waits for.
		{"short_malformed_request", "GARBAGE\r\n\r\n", []int{400}},
		{"content_length_then_chunked", "POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []int{400}},
		{"chunked_then_content_length", "POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", []int{400}},
		{"two_content_lengths", "POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", []int{400}},
		{"oversized_headers", "GET / HTTP/1.1\r\nHost: api\r\nX-Big: " + big + "\r\n\r\n", []int{400, 431}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A malformed request is refused at once: a short deadline, well below
			// read_header_timeout (10s by default).
			start := time.Now()
			status, body, err := badExchange(out, tc.req, 3*time.Second)
			switch {
			case status == 0:
				t.Errorf("no response after %v: %v", time.Since(start).Round(time.Millisecond), err)
			case !slices.Contains(tc.want, status):
				t.Errorf("status %d (%q), want one of %v", status, body, tc.want)
			case err != nil:
				t.Errorf("got %d, then the response could not be read to its end (%q so far): %v", status, body, err)
			}
		})
	}
	if n := backend.requests.Load(); n != 0 {
		t.Errorf("the backend received %d requests, want 0", n)
	}
	// The same listener still proxies a good request.
	resp, body := rawExchange(t, out, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != "backend" || backend.requests.Load() != 1 {
		t.Errorf("a good request afterwards = %d %q (backend requests %d), want 200 \"backend\" (1)", resp.StatusCode, body, backend.requests.Load())
	}
}

// TestMetrics checks request and byte counters after known traffic.
func TestMetrics(t *testing.T) {
	ferrytest.CheckLeaks(t)
	backend := startHTTPBackend(t, "api", nil)
	tcp := startTCPBackend(t)
	admin, api, db := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: api, address: %s}
  - {upstream: db, address: %s, protocol: tcp}
upstreams:
  - name: api
    endpoints: [%s]
  - name: db
    endpoints: [%s]
`, admin, api, db, backend.addr, tcp.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()
	client := newClient(t, nil)

	const n = 37
	for i := range n {
		if r := do(t, client, http.MethodGet, "http://"+api+"/", nil, ""); r.status != http.StatusOK {
			t.Fatalf("request %d: status %d", i, r.status)
		}
	}
	labels := map[string]string{"direction": "outbound", "upstream": "api", "code": "200"}
	// A request is counted once its response is written: the count may trail the last
	// response by a moment, never exceed the requests sent.
	var got float64
	ferrytest.Eventually(t, 5*time.Second, func() bool {
		got, _ = f.Metric("ferry_requests_total", labels)
		if got > n {
			t.Fatalf("ferry_requests_total%v = %v, more than the %d requests sent", labels, got, n)
		}
		return got == n
	}, func() string { return fmt.Sprintf("ferry_requests_total%v = %v, want %d", labels, got, n) })

	var sent, received int
	for _, msgs := range [][]string{{"one", "two"}, {strings.Repeat("m", 10_000)}} {
		s, r := tcpSession(t, db, msgs...)
		sent += s
		received += r
	}
	in := map[string]string{"direction": "outbound", "upstream": "db", "flow": "received"}
	out := map[string]string{"direction": "outbound", "upstream": "db", "flow": "sent"}
	var gotIn, gotOut float64
	ferrytest.Eventually(t, 5*time.Second, func() bool {
		gotIn, _ = f.Metric("ferry_tcp_bytes_total", in)
		gotOut, _ = f.Metric("ferry_tcp_bytes_total", out)
		return gotIn == float64(sent) && gotOut == float64(received)
	}, func() string {
		return fmt.Sprintf("ferry_tcp_bytes_total received=%v sent=%v, want received=%d (from the client) sent=%d (to the client)",
			gotIn, gotOut, sent, received)
	})
}

// badExchange writes req on a new connection to addr and reads the response to its end
// (until EOF, as these responses close the connection), all within timeout. It returns the
// status (0 if none arrived), the body read, and the first error.
func badExchange(addr, req string, timeout time.Duration) (int, string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, req); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
