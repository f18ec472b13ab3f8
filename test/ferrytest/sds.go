package ferrytest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// SDSServer is a real SDS server for tests: go-control-plane's xDS server over its
// snapshot cache, serving Envoy's SecretDiscoveryService on a gRPC server, the way a
// control plane or a node agent does. Every node gets the same secrets (each client asks
// for the names it needs); Requests records what the clients sent, ACKs and NACKs
// included. It can be stopped and started again on the same address. Safe for concurrent
// use.
type SDSServer struct {
	// Address is the server's address as mtls.sds.address takes it: unix:///path or
	// 127.0.0.1:port.
	Address string

	network, addr string
	cache         cachev3.SnapshotCache

	mu       sync.Mutex
	grpc     *grpc.Server
	cancel   context.CancelFunc
	done     chan struct{}
	version  int
	requests []*discoveryv3.DiscoveryRequest
	open     int // streams open now
}

// sdsAllNodes gives every node the same snapshot.
type sdsAllNodes struct{}

func (sdsAllNodes) ID(*corev3.Node) string { return "all" }

// StartSDS starts an SDS server on network "unix" (a socket in a new temporary directory,
// short enough for the 108-byte limit on socket paths) or "tcp" (a free loopback port).
// It is stopped when the test ends.
func StartSDS(t testing.TB, network string) *SDSServer {
	t.Helper()
	s := &SDSServer{network: network, cache: cachev3.NewSnapshotCache(false, sdsAllNodes{}, nil)}
	switch network {
	case "unix":
		dir, err := os.MkdirTemp("", "sds")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		s.addr = filepath.Join(dir, "sds.sock")
		s.Address = "unix://" + s.addr
	case "tcp":
		s.addr = FreeAddr(t)
		s.Address = s.addr
	default:
		t.Fatalf("StartSDS: unknown network %q (want unix or tcp)", network)
	}
	t.Cleanup(s.Stop)
	s.Start(t)
	return s
}

// Start (re)starts the server on its address, serving the secrets last set.
func (s *SDSServer) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grpc != nil {
		t.Fatal("SDSServer.Start: already running")
	}
	ln, err := net.Listen(s.network, s.addr)
	if err != nil {
		t.Fatalf("SDSServer.Start: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	xds := serverv3.NewServer(ctx, s.cache, serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.mu.Lock()
			s.open++
			s.mu.Unlock()
			return nil
		},
		StreamClosedFunc: func(int64, *corev3.Node) {
			s.mu.Lock()
			s.open--
			s.mu.Unlock()
		},
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			s.mu.Lock()
			s.requests = append(s.requests, proto.Clone(req).(*discoveryv3.DiscoveryRequest))
			s.mu.Unlock()
			return nil
		},
	})
	g := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(g, xds)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("SDSServer: Serve() error = %v", err)
		}
	}()
	s.grpc, s.cancel, s.done = g, cancel, done
}

// Stop stops the server at once, ending every stream; Start serves again.
func (s *SDSServer) Stop() {
	s.mu.Lock()
	g, cancel, done := s.grpc, s.cancel, s.done
	s.grpc = nil
	s.mu.Unlock()
	if g == nil {
		return
	}
	g.Stop()
	cancel()
	<-done
}

// SetSecrets replaces the secrets served with secrets, as a new snapshot version, and
// returns that version. Clients with an open stream get it at once.
func (s *SDSServer) SetSecrets(t testing.TB, secrets ...*tlsv3.Secret) string {
	t.Helper()
	s.mu.Lock()
	s.version++
	version := fmt.Sprintf("v%d", s.version)
	s.mu.Unlock()
	res := make([]types.Resource, 0, len(secrets))
	for _, sec := range secrets {
		res = append(res, sec)
	}
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{resource.SecretType: res})
	if err != nil {
		t.Fatalf("NewSnapshot() error = %v", err)
	}
	if err := s.cache.SetSnapshot(context.Background(), "all", snap); err != nil {
		t.Fatalf("SetSnapshot() error = %v", err)
	}
	return version
}

// OpenStreams is the number of SDS streams open now.
func (s *SDSServer) OpenStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// Requests returns copies of the requests received so far, oldest first.
func (s *SDSServer) Requests() []*discoveryv3.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// ACKed reports whether a client acknowledged version: a request carrying it as
// version_info, without error_detail, in answer to a response (a nonce).
func (s *SDSServer) ACKed(version string) bool {
	for _, r := range s.Requests() {
		if r.GetVersionInfo() == version && r.GetResponseNonce() != "" && r.GetErrorDetail() == nil {
			return true
		}
	}
	return false
}

// NACKs returns the requests that rejected a response (error_detail set), oldest first.
func (s *SDSServer) NACKs() []*discoveryv3.DiscoveryRequest {
	var out []*discoveryv3.DiscoveryRequest
	for _, r := range s.Requests() {
		if r.GetErrorDetail() != nil {
			out = append(out, r)
		}
	}
	return out
}

// CertSecret is a TLS certificate secret named name holding a certificate chain and its
// private key (PEM) inline.
func CertSecret(name string, chainPEM, keyPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: chainPEM}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
}

// CASecret is a validation context secret named name whose trusted_ca holds caPEM inline,
// as Istio's agent sends ROOTCA.
func CASecret(name string, caPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: caPEM}},
	}}}
}

// SPIFFEValidatorSecret is a validation context secret named name holding a SPIFFE
// validator configuration with a bundle (PEM) per trust domain name, as SPIRE's agent
// sends for its "ALL" bundles secret.
func SPIFFEValidatorSecret(t testing.TB, name string, bundles map[string][]byte) *tlsv3.Secret {
	t.Helper()
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range slices.Sorted(maps.Keys(bundles)) {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        td,
			TrustBundle: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: bundles[td]}},
		})
	}
	typed, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: typed},
	}}}
}

// ReadSecretFiles reads c's certificate, key and bundle (PEM), for CertSecret and
// CASecret.
func (c Certs) ReadSecretFiles(t testing.TB) (chainPEM, keyPEM, caPEM []byte) {
	t.Helper()
	var out [3][]byte
	for i, p := range []string{c.Cert, c.Key, c.CA} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out[0], out[1], out[2]
}
