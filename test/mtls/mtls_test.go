package mtls

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferrymesh/ferry/mtls"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestRequestThroughBoth: a request through the client-side and the server-side sidecars
// reaches the app over mTLS, and the app sees the caller's SPIFFE ID in
// X-Forwarded-Client-Cert, never the one the caller forged.
func TestRequestThroughBoth(t *testing.T) {
	p := ferrytest.NewPKI(t)
	m := startMesh(t, p, meshOptions{})
	c := newClient(t)
	forged := http.Header{mtls.XFCCHeader: {"By=spiffe://mesh.local/svc/api;URI=spiffe://mesh.local/svc/admin"}}
	code, body, ps := get(c, "http://"+m.outbound+"/hello", forged)
	if code != http.StatusOK {
		t.Fatalf("GET through both sidecars = %d %q (Proxy-Status %q), want 200", code, body, ps)
	}
	xfcc, proto := m.app.seen()
	if len(xfcc) != 1 {
		t.Fatalf("app saw X-Forwarded-Client-Cert %q, want exactly one value (Ferry's)", xfcc)
	}
	elems, err := mtls.ParseXFCC(xfcc[0])
	if err != nil || len(elems) != 1 {
		t.Fatalf("ParseXFCC(%q) = %v, %v, want one element", xfcc[0], elems, err)
	}
	if got, want := elems[0].URI, "spiffe://mesh.local/svc/web"; got != want {
		t.Errorf("app saw caller URI %q, want %q", got, want)
	}
	if got, want := elems[0].By, "spiffe://mesh.local/svc/api"; got != want {
		t.Errorf("app saw By %q, want %q", got, want)
	}
	if elems[0].Hash != m.webCerts.SHA256 {
		t.Errorf("app saw Hash %q, want the web certificate's %q", elems[0].Hash, m.webCerts.SHA256)
	}
	if strings.Contains(xfcc[0], "svc/admin") {
		t.Errorf("forged X-Forwarded-Client-Cert reached the app: %q", xfcc[0])
	}
	if proto != "HTTP/1.1" {
		t.Errorf("app saw %s, want HTTP/1.1", proto)
	}

	// The server-side access log names the peer.
	eventually(t, "peer_identity in the server's access log", func() bool {
		return strings.Contains(m.server.Output(), `"peer_identity":"spiffe://mesh.local/svc/web"`) ||
			strings.Contains(m.server.Output(), `peer_identity=spiffe://mesh.local/svc/web`)
	})

	// /certs on both sides.
	for _, tc := range []struct {
		f      *ferry
		id     string
		serial string
	}{{m.server, "spiffe://mesh.local/svc/api", m.apiCerts.Serial}, {m.client, "spiffe://mesh.local/svc/web", m.webCerts.Serial}} {
		cs := tc.f.certs()
		if !cs.Enabled || !cs.Valid || cs.SPIFFEID != tc.id {
			t.Errorf("/certs = enabled %v, valid %v, spiffe_id %q, want true, true, %q", cs.Enabled, cs.Valid, cs.SPIFFEID, tc.id)
		}
		if len(cs.Certificates) < 2 || cs.Certificates[0].Role != "leaf" || cs.Certificates[0].Serial != tc.serial ||
			cs.Certificates[0].Source != "files" || cs.Certificates[0].SecondsToExpiry <= 0 || cs.Certificates[0].NotAfter == "" ||
			cs.Certificates[0].Subject == "" {
			t.Errorf("/certs certificates = %+v, want the leaf (serial %s, source files, seconds_to_expiry > 0) and the CA", cs.Certificates, tc.serial)
		}
	}
	if metrics := m.client.get("/metrics"); !strings.Contains(metrics, `ferry_mtls_certificate_expiry_seconds{role="leaf"`) &&
		!strings.Contains(metrics, "ferry_mtls_certificate_expiry_seconds{") {
		t.Errorf("/metrics has no ferry_mtls_certificate_expiry_seconds:\n%s", metrics)
	}
}

// TestH2AndGRPCOverMTLS: an h2 caller is proxied as h2 over the mTLS hop (ALPN h2) and
// to the app; gRPC works end to end.
func TestH2AndGRPCOverMTLS(t *testing.T) {
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("api.v1.Api", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	t.Cleanup(gs.Stop)
	p := ferrytest.NewPKI(t)
	m := startMesh(t, p, meshOptions{grpc: gs})

	code, body, ps := get(newH2CClient(t), "http://"+m.outbound+"/h2", nil)
	if code != http.StatusOK || !strings.Contains(body, "proto=HTTP/2.0") || !strings.Contains(body, "URI=spiffe://mesh.local/svc/web") {
		t.Fatalf("h2 GET = %d %q (Proxy-Status %q), want 200 with proto=HTTP/2.0 and the caller's URI", code, body, ps)
	}

	conn, err := grpc.NewClient(m.outbound, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
	if xfcc, _ := m.app.seen(); len(xfcc) != 1 || !strings.Contains(xfcc[0], "URI=spiffe://mesh.local/svc/web") {
		t.Errorf("gRPC call: app saw X-Forwarded-Client-Cert %q, want the caller's", xfcc)
	}
}

// TestTCPOverMTLS: a TCP upstream is reached over mTLS and bytes flow both ways; a
// plaintext client of the server-side TCP listener gets nothing through.
func TestTCPOverMTLS(t *testing.T) {
	p := ferrytest.NewPKI(t)
	echo := ferrytest.StartEcho(t)
	apiCerts := p.Issue("db")
	webCerts := p.Issue("web")
	inbound, outbound := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	sa, ca := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	server := startFerry(t, sa, fmt.Sprintf("service: db\nadmin: {address: %s}\ninbound: {address: %s, target: %s, protocol: tcp}\n"+
		"telemetry: {access_log: stdout}\n%s", sa, inbound, echo, apiCerts.MTLSBlock()))
	startFerry(t, ca, fmt.Sprintf("service: web\nadmin: {address: %s}\noutbound: [{upstream: db, address: %s, protocol: tcp}]\n"+
		"upstreams: [{name: db, endpoints: [%s]}]\n%s", ca, outbound, inbound, webCerts.MTLSBlock()))

	c, err := net.DialTimeout("tcp", outbound, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	msg := "hello over mtls\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != msg {
		t.Fatalf("echo through both sidecars = %q, %v, want %q", line, err, msg)
	}
	_ = c.Close()
	eventually(t, "the server's TCP access log to name the peer", func() bool {
		return strings.Contains(server.Output(), `"peer_identity":"spiffe://mesh.local/svc/web"`)
	})

	// Plaintext straight to the mTLS TCP listener: the handshake fails, nothing echoes.
	pc, err := net.DialTimeout("tcp", inbound, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(ioTimeout))
	_, _ = io.WriteString(pc, "plaintext!!!\n")
	b, _ := io.ReadAll(pc)
	if strings.Contains(string(b), "plaintext!!!") {
		t.Errorf("plaintext bytes were echoed through the mTLS TCP listener: %q", b)
	}
}

// TestRefusedCallers: a plaintext client, a client with a certificate from another CA and
// a client with an expired certificate are refused by the server-side sidecar; a
// server-side sidecar that is not who the client expects is refused by the client-side
// sidecar with Proxy-Status tls_certificate_error. None of them reaches the app.
func TestRefusedCallers(t *testing.T) {
	p := ferrytest.NewPKI(t)
	m := startMesh(t, p, meshOptions{})
	before := m.app.count.Load()

	t.Run("plaintext client", func(t *testing.T) {
		code, body, ps := get(newClient(t), "http://"+m.inbound+"/", http.Header{mtls.XFCCHeader: {"URI=spiffe://mesh.local/svc/web"}})
		if code != http.StatusBadRequest || !strings.Contains(ps, "error=tls_protocol_error") {
			t.Errorf("plaintext GET to the mTLS listener = %d %q, Proxy-Status %q, want 400 with error=tls_protocol_error", code, body, ps)
		}
	})

	other := ferrytest.NewPKI(t)
	expired := p.IssueAt(t.TempDir(), "web", time.Now().Add(-3*time.Hour), time.Hour)
	for _, tc := range []struct {
		name string
		cert ferrytest.Certs
	}{
		{"certificate from another CA", other.Issue("web")},
		{"expired certificate", expired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{Certificates: []tls.Certificate{tc.cert.TLSCert(t)}, InsecureSkipVerify: true,
				NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
			tr := &http.Transport{Proxy: nil, TLSClientConfig: cfg, DialContext: (&net.Dialer{Timeout: ioTimeout}).DialContext}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: ioTimeout}
			code, body, _ := get(c, "https://"+m.inbound+"/", nil)
			if code != 0 {
				t.Errorf("GET with %s = %d %q, want the handshake refused", tc.name, code, body)
			} else if !strings.Contains(body, "tls") {
				t.Errorf("GET with %s failed with %q, want a TLS error", tc.name, body)
			}
		})
	}

	t.Run("server-side sidecar with another identity", func(t *testing.T) {
		// The client's upstream expects billing; the server is api.
		admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
		client := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: billing, address: %s}]
upstreams: [{name: billing, endpoints: [%s], outlier_detection: {consecutive_5xx: 3, interval: 1h, max_ejection_percent: 100}}]
%s`, admin, out, m.inbound, m.webCerts.MTLSBlock()))
		code, body, ps := get(newClient(t), "http://"+out+"/", nil)
		want := `ferry; error=tls_certificate_error; details="want spiffe://mesh.local/svc/billing, got spiffe://mesh.local/svc/api"`
		if code != http.StatusServiceUnavailable || ps != want {
			t.Errorf("GET to the wrong server = %d %q, Proxy-Status %q, want 503 with %q", code, body, ps, want)
		}
		// Identity failures are connect failures for outlier detection.
		for range 2 {
			get(newClient(t), "http://"+out+"/", nil)
		}
		eventually(t, "the endpoint ejected after identity failures", func() bool {
			return strings.Contains(client.get("/clusters"), `"ejected"`)
		})
	})

	t.Run("identity from config", func(t *testing.T) {
		// The client's upstream is named billing but is configured to expect api.
		admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
		startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: billing, address: %s}]
upstreams: [{name: billing, endpoints: [%s], identity: "spiffe://mesh.local/svc/api"}]
%s`, admin, out, m.inbound, m.webCerts.MTLSBlock()))
		if code, body, ps := get(newClient(t), "http://"+out+"/", nil); code != http.StatusOK {
			t.Errorf("GET with identity configured = %d %q (Proxy-Status %q), want 200", code, body, ps)
		}
		before++ // that one reached the app
	})

	if got := m.app.count.Load(); got != before {
		t.Errorf("app served %d requests from refused callers, want none", got-before)
	}
	// Every refusal is counted by reason on the server-side sidecar's listener.
	for reason, want := range map[string]float64{"plaintext": 1, "peer_certificate": 2} {
		if got := m.server.MetricWith("ferry_tls_handshake_failures_total", "listener="+m.inbound, "reason="+reason); got != want {
			t.Errorf("ferry_tls_handshake_failures_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

// TestClientWithCertificateFromAnotherCA: a client-side sidecar whose certificates come
// from another CA cannot verify the server (nor the server it) and answers 503 with
// Proxy-Status tls_certificate_error; nothing reaches the app.
func TestClientWithCertificateFromAnotherCA(t *testing.T) {
	p := ferrytest.NewPKI(t)
	m := startMesh(t, p, meshOptions{})
	before := m.app.count.Load()
	other := ferrytest.NewPKI(t).Issue("web")
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams: [{name: api, endpoints: [%s]}]
%s`, admin, out, m.inbound, other.MTLSBlock()))
	code, body, ps := get(newClient(t), "http://"+out+"/", nil)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(ps, `ferry; error=tls_certificate_error; details="want spiffe://mesh.local/svc/api, got spiffe://mesh.local/svc/api: `) {
		t.Errorf("GET = %d %q, Proxy-Status %q, want 503 tls_certificate_error (the server's certificate does not verify)", code, body, ps)
	}
	if got := m.app.count.Load(); got != before {
		t.Errorf("app served %d requests, want none", got-before)
	}
}

// TestRotation replaces both sidecars' certificate files during a bounded load: no
// request fails, and new handshakes present the new certificates.
func TestRotation(t *testing.T) {
	p := ferrytest.NewPKI(t)
	m := startMesh(t, p, meshOptions{idleTimeout: 200 * time.Millisecond})
	c := newClient(t)
	url := "http://" + m.outbound + "/load"

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, body, ps := get(c, url, nil)
				if code == http.StatusOK {
					ok.Add(1)
					continue
				}
				failed.Add(1)
				mu.Lock()
				if len(failures) < 5 {
					failures = append(failures, fmt.Sprintf("%d %q %s", code, strings.TrimSpace(body), ps))
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	newAPI := p.IssueAt(m.apiCerts.Dir, "api", time.Time{}, time.Hour)
	newWeb := p.IssueAt(m.webCerts.Dir, "web", time.Time{}, time.Hour)
	eventually(t, "both sidecars to load the new certificates", func() bool {
		return leafSerial(m.server.certs()) == newAPI.Serial && leafSerial(m.client.certs()) == newWeb.Serial
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("load during rotation: %d ok, %d failed (%q), want 0 failed", ok.Load(), failed.Load(), failures)
	}
	t.Logf("load during rotation: %d requests, 0 failed", ok.Load())

	// A new handshake with the server-side sidecar shows its new serial.
	if got := presentedSerial(t, m.inbound, newWeb); got != newAPI.Serial {
		t.Errorf("server presented serial %s after rotation, want %s", got, newAPI.Serial)
	}

	// The client-side sidecar's new connections (its idle ones expire after 200ms) present
	// its new certificate: the app sees its hash.
	eventually(t, "the app to see the client's new certificate", func() bool {
		time.Sleep(300 * time.Millisecond)
		if code, _, _ := get(c, url, nil); code != http.StatusOK {
			return false
		}
		xfcc, _ := m.app.seen()
		return len(xfcc) == 1 && strings.Contains(xfcc[0], "Hash="+newWeb.SHA256)
	})
}

func leafSerial(cs certsStatus) string {
	if len(cs.Certificates) == 0 {
		return ""
	}
	return cs.Certificates[0].Serial
}

// TestNotReadyWithoutCertificate: a sidecar whose certificate files are missing is not
// ready, and becomes ready when they appear.
func TestNotReadyWithoutCertificate(t *testing.T) {
	p := ferrytest.NewPKI(t)
	dir := t.TempDir()
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams: [{name: api, endpoints: [127.0.0.1:1]}]
mtls: {source: files, cert_file: %s/web.pem, key_file: %s/web-key.pem, ca_file: %s/bundle.pem}
`, admin, out, dir, dir, dir)
	launchFerry(t, admin, cfg)
	c := newClient(t)
	eventually(t, "/ready to answer 503 naming the certificate", func() bool {
		code, body, _ := get(c, "http://"+admin+"/ready", nil)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "certificate")
	})
	p.IssueAt(dir, "web", time.Time{}, time.Hour)
	eventually(t, "/ready to answer 200 once the certificate is there", func() bool {
		code, _, _ := get(c, "http://"+admin+"/ready", nil)
		return code == http.StatusOK
	})
}

// TestPermissiveMode: a permissive listener takes mTLS and plaintext on the same port; a
// plaintext caller reaches the app without an identity, and what it sent as
// X-Forwarded-Client-Cert is removed.
func TestPermissiveMode(t *testing.T) {
	p := ferrytest.NewPKI(t)
	a := startApp(t, nil)
	apiCerts := p.Issue("api")
	webCerts := p.Issue("web")
	inbound, outbound, sa, ca := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	block := strings.Replace(apiCerts.MTLSBlock(), "mode: strict", "mode: permissive", 1)
	startFerry(t, sa, fmt.Sprintf("service: api\nadmin: {address: %s}\ninbound: {address: %s, target: %s}\n%s", sa, inbound, a.addr, block))
	startFerry(t, ca, fmt.Sprintf("service: web\nadmin: {address: %s}\noutbound: [{upstream: api, address: %s}]\n"+
		"upstreams: [{name: api, endpoints: [%s]}]\n%s", ca, outbound, inbound, webCerts.MTLSBlock()))

	code, body, ps := get(newClient(t), "http://"+inbound+"/plain", http.Header{mtls.XFCCHeader: {"URI=spiffe://mesh.local/svc/admin"}})
	if code != http.StatusOK || !strings.Contains(body, "xfcc=\n") {
		t.Errorf("plaintext GET to a permissive listener = %d %q (Proxy-Status %q), want 200 with no X-Forwarded-Client-Cert", code, body, ps)
	}
	code, body, ps = get(newClient(t), "http://"+outbound+"/mtls", nil)
	if code != http.StatusOK || !strings.Contains(body, "URI=spiffe://mesh.local/svc/web") {
		t.Errorf("mTLS GET to a permissive listener = %d %q (Proxy-Status %q), want 200 with the caller's URI", code, body, ps)
	}
}
