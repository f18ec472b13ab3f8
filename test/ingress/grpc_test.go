package ingress

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestIngressGRPC: a gRPC client outside the mesh, speaking TLS with ALPN h2, reaches a
// gRPC application (over h2c) through the ingress listener.
func TestIngressGRPC(t *testing.T) {
	ferrytest.CheckLeaks(t)
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("api.v1.Api", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	t.Cleanup(gs.Stop)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: gs, ReadHeaderTimeout: ioTimeout}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	ca := newCA(t)
	cert := ca.issue("grpc", "grpc.example")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, certificates: [%s], target: %s}
`, admin, addr, cert.entry(), ln.Addr()))

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.pool, ServerName: "grpc.example"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "api.v1.Api"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC Check() = %v, %v, want SERVING", resp, err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); err == nil {
		t.Errorf("gRPC Check(nope) error = nil, want NotFound from the application")
	}
}
