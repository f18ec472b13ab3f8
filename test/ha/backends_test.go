package ha

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// backend is an HTTP server on 127.0.0.1 that fails on command. Every path but /healthz is
// a request (counted in hits); /healthz is the health check (recorded in checks).
type backend struct {
	name string
	addr string

	status       atomic.Int64 // status of requests; 0 means 200
	errorPercent atomic.Int64 // that share of requests answer 500, spread evenly
	delay        atomic.Int64 // nanoseconds to wait before answering a request
	health       atomic.Int64 // status of /healthz; 0 means 200
	hits         atomic.Int64 // requests received, checks aside

	mu     sync.Mutex
	checks []check
}

// check is one health check a backend received.
type check struct {
	at     time.Time
	passed bool
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(b.serve)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		code := int(b.health.Load())
		b.mu.Lock()
		b.checks = append(b.checks, check{at: time.Now(), passed: code == 0})
		b.mu.Unlock()
		if code != 0 {
			w.WriteHeader(code)
		}
		return
	}
	n := b.hits.Add(1) - 1
	_, _ = io.Copy(io.Discard, r.Body)
	if d := time.Duration(b.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case b.status.Load() != 0:
		w.WriteHeader(int(b.status.Load()))
	case n*b.errorPercent.Load()%100 < b.errorPercent.Load():
		w.WriteHeader(http.StatusInternalServerError)
	}
	_, _ = io.WriteString(w, b.name)
}

// checksUpTo counts the checks received after from and no later than to that passed (or
// failed).
func (b *backend) checksUpTo(from, to time.Time, passed bool) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, c := range b.checks {
		if c.passed == passed && c.at.After(from) && !c.at.After(to) {
			n++
		}
	}
	return n
}

// procBackend is a backend running as its own process (testdata/backend), to be killed.
type procBackend struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProcBackend(t *testing.T, name string) *procBackend {
	t.Helper()
	p := &procBackend{addr: ferrytest.FreeAddr(t), done: make(chan struct{})}
	p.cmd = exec.Command(backendBin, p.addr, name)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	deadline := time.Now().Add(ioTimeout)
	for {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend process %s not listening on %s: %v", name, p.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill stops the process with SIGKILL and waits for it.
func (p *procBackend) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// echoServer is a TCP server that echoes, on a fixed address it can leave and come back
// to; it records the time of every connection it accepts.
type echoServer struct {
	addr string
	mu   sync.Mutex
	ln   net.Listener
	wg   sync.WaitGroup
	at   []time.Time
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	e := &echoServer{addr: ferrytest.FreeAddr(t)}
	e.up(t)
	t.Cleanup(e.down)
	return e
}

// up starts listening on the server's address.
func (e *echoServer) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.ln = ln
	e.mu.Unlock()
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.at = append(e.at, time.Now())
			e.mu.Unlock()
			e.wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(ioTimeout))
				_, _ = io.Copy(c, c)
			})
		}
	})
}

// down stops listening (connection attempts are refused) and waits for its sessions.
func (e *echoServer) down() {
	e.mu.Lock()
	ln := e.ln
	e.ln = nil
	e.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	e.wg.Wait()
}

// acceptedSince counts the connections accepted after from.
func (e *echoServer) acceptedSince(from time.Time) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, a := range e.at {
		if a.After(from) {
			n++
		}
	}
	return n
}

// grpcHealth is a gRPC server with the grpc.health.v1 service, recording every Check.
type grpcHealth struct {
	healthpb.HealthServer
	status *grpchealth.Server
	addr   string
	mu     sync.Mutex
	checks []check
}

func startGRPCHealth(t *testing.T) *grpcHealth {
	t.Helper()
	g := &grpcHealth{status: grpchealth.NewServer()}
	g.HealthServer = g.status
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.addr = ln.Addr().String()
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, g)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return g
}

// Check records the call and answers from the health server.
func (g *grpcHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	resp, err := g.HealthServer.Check(ctx, req)
	g.mu.Lock()
	g.checks = append(g.checks, check{at: time.Now(), passed: err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING})
	g.mu.Unlock()
	return resp, err
}

func (g *grpcHealth) checksUpTo(from, to time.Time, passed bool) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.checks {
		if c.passed == passed && c.at.After(from) && !c.at.After(to) {
			n++
		}
	}
	return n
}
