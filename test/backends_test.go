package test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// httpBackend is an HTTP server on 127.0.0.1 speaking HTTP/1.1 and h2c (prior knowledge).
// Every response names the backend (X-Backend header, and the body by default) and reports
// what the backend saw of the request (X-Seen-* headers).
//
// Paths:
//
//	/slow?d=DURATION  waits DURATION (or until the request is cancelled), then answers
//	/echo             answers with the request body
//	anything else     answers with the backend's name
//
// A handler given to startHTTPBackend, if any, serves the paths it claims via mux.
type httpBackend struct {
	name     string
	addr     string
	requests atomic.Int64 // requests received, of any kind
	seen     chan seenRequest
}

// seenRequest is what the backend saw of one request.
type seenRequest struct {
	proto, requestID, forwardedFor, path string
}

// startHTTPBackend starts a backend; extra, if not nil, registers more routes on its mux.
// The server is closed at cleanup.
func startHTTPBackend(t *testing.T, name string, extra func(mux *http.ServeMux)) *httpBackend {
	t.Helper()
	b := &httpBackend{name: name, seen: make(chan seenRequest, 4096)}
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "slow done")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, name)
	})
	if extra != nil {
		extra(mux)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.requests.Add(1)
		select {
		case b.seen <- seenRequest{proto: r.Proto, requestID: r.Header.Get("X-Request-Id"),
			forwardedFor: r.Header.Get("X-Forwarded-For"), path: r.URL.Path}:
		default:
		}
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Seen-Proto", r.Proto)
		mux.ServeHTTP(w, r)
	})
	b.addr = serveHTTP(t, h)
	return b
}

// serveHTTP serves h on a new 127.0.0.1 listener with HTTP/1.1 and h2c, and returns its
// address. The server is closed, and its goroutine waited for, at cleanup.
func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: ioTimeout}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// backendOf returns the backend a response came from.
func backendOf(r response) string { return r.header.Get("X-Backend") }

// wsEcho is a WebSocket handler that echoes every frame back.
var wsEcho = websocket.Handler(func(ws *websocket.Conn) {
	_ = ws.SetDeadline(time.Now().Add(ioTimeout))
	_, _ = io.Copy(ws, ws)
})

// Metadata keys steering the gRPC test service.
const (
	mdSleep     = "x-sleep"       // UnaryCall waits this long (a Go duration) or until cancelled
	mdFail      = "x-fail"        // UnaryCall fails with this code number and mdFailMsg
	mdFailMsg   = "x-fail-msg"    //
	mdTrailer   = "x-trailer"     // echoed as a trailer by every call
	hdrDeadline = "x-deadline-ms" // response header: the handler's remaining deadline, or "none"
)

// grpcService implements grpc-go's interop TestService: all four kinds of calls, plus
// metadata knobs (see mdSleep and friends) to return errors, be slow, and report the
// deadline the handler sees.
type grpcService struct {
	grpc_testing.UnimplementedTestServiceServer

	// slowCancelled receives, for each slow UnaryCall, how long after it started the
	// handler saw its context end (or a negative duration if it never did).
	slowCancelled chan time.Duration
}

func newGRPCService() *grpcService {
	return &grpcService{slowCancelled: make(chan time.Duration, 16)}
}

func echoTrailer(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(mdTrailer); len(v) > 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(mdTrailer, v[0]))
	}
}

func payload(size int32, fill byte) *grpc_testing.Payload {
	return &grpc_testing.Payload{Body: []byte(strings.Repeat(string(fill), int(size)))}
}

func (s *grpcService) UnaryCall(ctx context.Context, req *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	dl := "none"
	if d, ok := ctx.Deadline(); ok {
		dl = strconv.FormatInt(time.Until(d).Milliseconds(), 10)
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(hdrDeadline, dl))
	echoTrailer(ctx)
	if v := md.Get(mdSleep); len(v) > 0 {
		d, err := time.ParseDuration(v[0])
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		start := time.Now()
		select {
		case <-time.After(d):
			s.slowCancelled <- -1
		case <-ctx.Done():
			s.slowCancelled <- time.Since(start)
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if v := md.Get(mdFail); len(v) > 0 {
		code, err := strconv.Atoi(v[0])
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		msg := ""
		if m := md.Get(mdFailMsg); len(m) > 0 {
			msg = m[0]
		}
		return nil, status.Error(codes.Code(code), msg)
	}
	return &grpc_testing.SimpleResponse{Payload: payload(req.GetResponseSize(), 'u'), Username: string(req.GetPayload().GetBody())}, nil
}

func (s *grpcService) StreamingOutputCall(req *grpc_testing.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[grpc_testing.StreamingOutputCallResponse]) error {
	echoTrailer(stream.Context())
	for i, p := range req.GetResponseParameters() {
		if err := stream.Send(&grpc_testing.StreamingOutputCallResponse{Payload: payload(p.GetSize(), byte('a'+i%26))}); err != nil {
			return err
		}
	}
	return nil
}

func (s *grpcService) StreamingInputCall(stream grpc.ClientStreamingServer[grpc_testing.StreamingInputCallRequest, grpc_testing.StreamingInputCallResponse]) error {
	echoTrailer(stream.Context())
	var sum int32
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&grpc_testing.StreamingInputCallResponse{AggregatedPayloadSize: sum})
		}
		if err != nil {
			return err
		}
		sum += int32(len(req.GetPayload().GetBody()))
	}
}

func (s *grpcService) FullDuplexCall(stream grpc.BidiStreamingServer[grpc_testing.StreamingOutputCallRequest, grpc_testing.StreamingOutputCallResponse]) error {
	echoTrailer(stream.Context())
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range req.GetResponseParameters() {
			if err := stream.Send(&grpc_testing.StreamingOutputCallResponse{Payload: payload(p.GetSize(), 'd')}); err != nil {
				return err
			}
		}
	}
}

// startGRPCBackend serves svc with grpc-go's own server on a new 127.0.0.1 listener and
// returns its address. The server is stopped at cleanup.
func startGRPCBackend(t *testing.T, svc *grpcService) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	grpc_testing.RegisterTestServiceServer(s, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ln)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return ln.Addr().String()
}

// tcpBackend is a line-based TCP server that speaks first: on connect it writes
// tcpGreeting, then echoes each line it reads; when the client half-closes, it writes
// tcpFarewell and closes.
type tcpBackend struct {
	addr     string
	sessions atomic.Int64
}

const (
	tcpGreeting = "220 ferry-e2e ready\r\n"
	tcpFarewell = "221 bye\r\n"
)

func startTCPBackend(t *testing.T) *tcpBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &tcpBackend{addr: ln.Addr().String()}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.sessions.Add(1)
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					_ = c.Close()
				}()
				_ = c.SetDeadline(time.Now().Add(ioTimeout))
				if _, err := io.WriteString(c, tcpGreeting); err != nil {
					return
				}
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if line != "" {
						if _, werr := io.WriteString(c, line); werr != nil {
							return
						}
					}
					if errors.Is(err, io.EOF) {
						_, _ = io.WriteString(c, tcpFarewell)
						return
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return b
}

// tcpSession runs one session through addr the way a client of tcpBackend does: it reads
// the greeting before writing anything, sends each line and reads its echo, half-closes,
// and reads the farewell and the EOF. It returns the bytes sent and received.
func tcpSession(t *testing.T, addr string, msgs ...string) (sent, received int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || greeting != tcpGreeting {
		t.Fatalf("greeting = %q, %v; want %q (the server speaks first)", greeting, err, tcpGreeting)
	}
	received += len(greeting)
	for _, m := range msgs {
		line := m + "\n"
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatalf("write: %v", err)
		}
		sent += len(line)
		got, err := br.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("echo = %q, %v; want %q", got, err, line)
		}
		received += len(got)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading after half-close: %v", err)
	}
	if string(rest) != tcpFarewell {
		t.Fatalf("after half-close got %q, want %q then EOF", rest, tcpFarewell)
	}
	received += len(rest)
	return sent, received
}
