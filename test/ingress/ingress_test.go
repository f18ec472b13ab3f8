package ingress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// handshake connects to addr over TLS with cfg (RootCAs defaulting to the test CA) and
// returns the connection state, or the handshake error.
func (c *ca) handshake(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	if cfg.RootCAs == nil {
		cfg.RootCAs = c.pool
	}
	d := &net.Dialer{Timeout: ioTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.ConnectionState(), nil
}

func TestIngressHTTP(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	def := ca.issue("default", "www.example")
	a := ca.issue("a", "a.example")
	b := ca.issue("b", "b.example", "*.b.example")
	application := startApp(t, "app")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - address: %s
    certificates: [%s, %s, %s]
    target: %s
telemetry: {access_log: stdout}
`, admin, addr, def.entry(), a.entry(), b.entry(), application.addr))

	t.Run("certificate by SNI", func(t *testing.T) {
		tests := []struct {
			sni  string
			want *big.Int
		}{
			{"a.example", a.serial},
			{"b.example", b.serial},
			{"api.b.example", b.serial},
			{"www.example", def.serial},
			{"", def.serial},             // no SNI: the default
			{"unknown.test", def.serial}, // unknown SNI: the default
		}
		for _, tc := range tests {
			cfg := &tls.Config{ServerName: tc.sni}
			if tc.sni == "" || tc.sni == "unknown.test" {
				// Go's client sends no SNI without a ServerName, and an unknown name's
				// certificate cannot verify: check the serial without verification.
				cfg.InsecureSkipVerify = true
			}
			st, err := ca.handshake(addr, cfg)
			if err != nil {
				t.Errorf("handshake with SNI %q: %v", tc.sni, err)
				continue
			}
			if got := st.PeerCertificates[0].SerialNumber; got.Cmp(tc.want) != 0 {
				t.Errorf("SNI %q: serial = %v, want %v", tc.sni, got, tc.want)
			}
		}
	})

	t.Run("old versions and weak suites are refused", func(t *testing.T) {
		tests := []struct {
			name string
			cfg  *tls.Config
		}{
			{"TLS 1.1", &tls.Config{ServerName: "a.example", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}},
			{"TLS 1.0", &tls.Config{ServerName: "a.example", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}},
			{"TLS 1.2 CBC only", &tls.Config{ServerName: "a.example", MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
				tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
				tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA}}},
		}
		for _, tc := range tests {
			_, err := ca.handshake(addr, tc.cfg)
			// A refusal by the server is a TLS alert it sends; a client-side failure would
			// not prove anything about the listener.
			if err == nil || !strings.Contains(err.Error(), "remote error") {
				t.Errorf("%s handshake error = %v, want a refusal by the server (remote error)", tc.name, err)
			}
		}
		// TLS 1.2 with an AEAD suite works.
		st, err := ca.handshake(addr, &tls.Config{ServerName: "a.example", MaxVersion: tls.VersionTLS12})
		if err != nil || st.Version != tls.VersionTLS12 {
			t.Errorf("TLS 1.2 handshake = version %x, %v; want TLS 1.2", st.Version, err)
		}
	})

	t.Run("HTTP/1.1 and HTTP/2 reach the app with edge headers", func(t *testing.T) {
		forged := http.Header{"X-Forwarded-Client-Cert": {"By=spiffe://mesh.local/svc/web;URI=spiffe://mesh.local/svc/admin"},
			"X-Forwarded-Proto": {"http"}}
		for _, tc := range []struct {
			name      string
			protocols *http.Protocols
			wantProto string // what the client speaks, after ALPN
		}{{"h1", h1Only(), "HTTP/1.1"}, {"h2", nil, "HTTP/2.0"}} {
			c := ca.httpsClient(t, "a.example", tc.protocols, true)
			status, body, resp := get(c, "https://"+addr+"/hello", forged)
			if status != http.StatusOK || body != "app" {
				t.Errorf("%s: GET = %d %q, want 200 app", tc.name, status, body)
				continue
			}
			if resp.Proto != tc.wantProto {
				t.Errorf("%s: response protocol = %s, want %s", tc.name, resp.Proto, tc.wantProto)
			}
			s := application.seen()
			if s.xfp != "https" || s.xfcc != "" || s.xff != "127.0.0.1" {
				t.Errorf("%s: app saw X-Forwarded-Proto %q, X-Forwarded-Client-Cert %q, X-Forwarded-For %q; want https, none, 127.0.0.1",
					tc.name, s.xfp, s.xfcc, s.xff)
			}
		}
	})

	t.Run("plaintext HTTP is refused", func(t *testing.T) {
		before := application.count.Load()
		c := ferrytest.NewClient(t, 1, nil)
		status, body, resp := get(c, "http://"+addr+"/", nil)
		want := `ferry; error=tls_protocol_error; details="plaintext request to a TLS listener"`
		if status != http.StatusBadRequest || resp.Header.Get("Proxy-Status") != want {
			t.Errorf("plaintext GET = %d %q, Proxy-Status %q, want 400 with %s", status, body, resp.Header.Get("Proxy-Status"), want)
		}
		if got := application.count.Load(); got != before {
			t.Errorf("app requests = %d after a plaintext request, want %d", got, before)
		}
	})

	t.Run("malformed request gets 400", func(t *testing.T) {
		before := application.count.Load()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool, ServerName: "a.example", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		_, _ = io.WriteString(conn, "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("smuggling attempt = %d, want 400", resp.StatusCode)
		}
		if got := application.count.Load(); got != before {
			t.Errorf("app requests = %d after a malformed request, want %d", got, before)
		}
	})

	t.Run("admin lists the certificates and metrics", func(t *testing.T) {
		c := ferrytest.NewClient(t, 1, nil)
		_, body, _ := get(c, f.AdminURL("/certs"), nil)
		var certs struct {
			Ingress []struct {
				Listener string   `json:"listener"`
				Default  bool     `json:"default"`
				DNSNames []string `json:"dns_names"`
				Serial   string   `json:"serial"`
				CertFile string   `json:"cert_file"`
				NotAfter string   `json:"not_after"`
			} `json:"ingress"`
		}
		if err := json.Unmarshal([]byte(body), &certs); err != nil {
			t.Fatalf("/certs: %v\n%s", err, body)
		}
		if len(certs.Ingress) != 3 || !certs.Ingress[0].Default || certs.Ingress[2].CertFile != b.cert ||
			certs.Ingress[1].DNSNames[0] != "a.example" || certs.Ingress[0].Listener != addr || certs.Ingress[0].NotAfter == "" {
			t.Errorf("/certs ingress = %+v, want default, a, b of listener %s", certs.Ingress, addr)
		}
		if v := f.MetricWith("ferry_mtls_certificate_expiry_seconds", `source="ingress"`); v < 3600 {
			t.Errorf("ferry_mtls_certificate_expiry_seconds{source=ingress} = %v, want about 12h", v)
		}
		if v := f.MetricWith("ferry_requests_total", `direction="ingress"`, `code="200"`); v < 2 {
			t.Errorf("ferry_requests_total{direction=ingress,code=200} = %v, want at least 2", v)
		}
		// The refused handshakes above: three old or weak clients, one plaintext request.
		for reason, want := range map[string]float64{"protocol": 3, "plaintext": 1} {
			if v := f.MetricWith("ferry_tls_handshake_failures_total", "listener="+addr, "reason="+reason); v != want {
				t.Errorf("ferry_tls_handshake_failures_total{reason=%q} = %v, want %v", reason, v, want)
			}
		}
		_, dump, _ := get(c, f.AdminURL("/config_dump"), nil)
		if !strings.Contains(dump, `"ingress"`) || !strings.Contains(dump, a.cert) {
			t.Errorf("/config_dump does not show the ingress listener:\n%s", dump)
		}
		ferrytest.Eventually(t, waitTimeout, func() bool { return strings.Contains(f.Output(), `"direction":"ingress"`) },
			func() string { return "an access-log line with direction ingress" })
		_, page, _ := get(c, f.AdminURL("/"), nil)
		if !strings.Contains(page, "*.b.example") {
			t.Errorf("status page does not list the ingress certificates")
		}
	})
}

func TestIngressUpstreamBalances(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	cert := ca.issue("api", "api.example")
	one, two := startApp(t, "one"), startApp(t, "two")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
upstreams: [{name: api, endpoints: [%s, %s], lb: round_robin}]
ingress:
  - {address: %s, certificates: [%s], upstream: api}
`, admin, one.addr, two.addr, addr, cert.entry()))
	c := ca.httpsClient(t, "api.example", nil, true)
	counts := map[string]int{}
	for range 20 {
		status, body, _ := get(c, "https://"+addr+"/", nil)
		if status != http.StatusOK {
			t.Fatalf("GET = %d %q, want 200", status, body)
		}
		counts[body]++
	}
	if counts["one"] != 10 || counts["two"] != 10 {
		t.Errorf("answers = %v, want 10 from each backend (round robin)", counts)
	}
	if s := one.seen(); s.xfp != "https" {
		t.Errorf("backend saw X-Forwarded-Proto %q, want https", s.xfp)
	}
}

func TestIngressPolicyByCIDR(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	cert := ca.issue("a", "a.example")
	application := startApp(t, "app")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, certificates: [%s], target: %s}
policy:
  access:
    default: deny
    rules:
      - {from: [127.0.0.0/8], paths: [/public/*], action: allow}
      - {from: [any], paths: [/health], action: allow}
  rate_limits:
    - {path_prefix: /public/limited, requests_per_second: 0.01, burst: 1, key: client_ip}
`, admin, addr, cert.entry(), application.addr))
	c := ca.httpsClient(t, "a.example", nil, true)
	for _, tc := range []struct {
		path string
		want int
	}{{"/public/x", 200}, {"/health", 200}, {"/private", 403}, {"/public/limited", 200}, {"/public/limited", 429}} {
		if status, body, _ := get(c, "https://"+addr+tc.path, nil); status != tc.want {
			t.Errorf("GET %s = %d %q, want %d", tc.path, status, body, tc.want)
		}
	}
	if got := application.count.Load(); got != 3 {
		t.Errorf("app requests = %d, want 3 (the refused ones never reach it)", got)
	}
}

func TestIngressCertRotationUnderLoad(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	first := ca.issue("a", "a.example")
	application := startApp(t, "app")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, certificates: [%s], target: %s}
`, admin, addr, first.entry(), application.addr))

	// Bounded load: 4 clients, each request on a new connection (a new handshake).
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	serials := map[string]int{}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		c := ca.httpsClient(t, "a.example", h1Only(), false)
		wg.Go(func() {
			for ctx.Err() == nil {
				status, body, resp := get(c, "https://"+addr+"/", nil)
				if status != http.StatusOK {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%d %s", status, body))
					mu.Unlock()
					continue
				}
				ok.Add(1)
				mu.Lock()
				serials[resp.TLS.PeerCertificates[0].SerialNumber.String()]++
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	seenSerial := func(s *big.Int) bool {
		mu.Lock()
		defer mu.Unlock()
		return serials[s.String()] > 0
	}
	ferrytest.Eventually(t, waitTimeout, func() bool { return seenSerial(first.serial) }, func() string { return "load on the first certificate" })
	// A broken certificate file first: the previous certificate stays in use.
	ca.replace(first.cert, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"))
	ferrytest.Eventually(t, waitTimeout, func() bool { return strings.Contains(f.Output(), "keeping the previous certificate") },
		func() string { return "the failed reload to be logged" })
	mid := ok.Load()
	ferrytest.Eventually(t, waitTimeout, func() bool { return ok.Load() > mid+50 }, func() string { return "load on the kept certificate" })
	second := ca.issue("a", "a.example") // same files, new certificate and key
	ferrytest.Eventually(t, waitTimeout, func() bool { return seenSerial(second.serial) },
		func() string { return "new handshakes to see serial " + second.serial.String() })
	before := ok.Load()
	ferrytest.Eventually(t, waitTimeout, func() bool { return ok.Load() > before+200 }, func() string { return "more load" })
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during the rotation, want 0: %v", failed.Load(), ok.Load()+failed.Load(), failures[:min(len(failures), 5)])
	}
	t.Logf("rotation under load: %d requests, serials %v", ok.Load(), serials)
	// After the rotation, only the new certificate is served.
	st, err := ca.handshake(addr, &tls.Config{ServerName: "a.example"})
	if err != nil || st.PeerCertificates[0].SerialNumber.Cmp(second.serial) != 0 {
		t.Errorf("handshake after rotation: %v; want serial %v", err, second.serial)
	}
}

func TestIngressTCP(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	cert := ca.issue("db", "db.example")
	echo := ferrytest.StartEcho(t)
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, protocol: tcp, min_version: "1.3", certificates: [%s], target: %s}
`, admin, addr, cert.entry(), echo))
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, &tls.Config{RootCAs: ca.pool, ServerName: "db.example"})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ioTimeout))
	if st := conn.ConnectionState(); st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != "" {
		t.Errorf("TLS version %x, ALPN %q; want TLS 1.3 and no ALPN", st.Version, st.NegotiatedProtocol)
	}
	msg := strings.Repeat("ferry ingress bytes ", 1000)
	go func() { _, _ = io.WriteString(conn, msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		t.Fatalf("echo through the ingress = %d bytes, %v; want the %d bytes sent", len(got), err, len(msg))
	}
	// min_version 1.3 refuses TLS 1.2.
	if _, err := ca.handshake(addr, &tls.Config{ServerName: "db.example", MaxVersion: tls.VersionTLS12}); err == nil ||
		!strings.Contains(err.Error(), "remote error") {
		t.Errorf("TLS 1.2 handshake to a 1.3-only listener error = %v, want a refusal by the server", err)
	}
	_ = conn.Close()
	ferrytest.Eventually(t, waitTimeout, func() bool {
		return f.MetricWith("ferry_tcp_sessions_total", `direction="ingress"`, `result="ok"`) >= 1
	}, func() string { return "ferry_tcp_sessions_total{direction=ingress,result=ok}" })
}

// startH1App serves HTTP/1.1 only (no h2c, as many applications behind an edge): GET
// answers with the request's protocol; an Upgrade: websocket request is switched and its
// bytes echoed.
func startH1App(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			_, _ = io.WriteString(w, r.Proto)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		_, _ = io.Copy(conn, brw)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
	})
	return ln.Addr().String()
}

func TestIngressHTTP1TargetAndWebSocket(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	cert := ca.issue("a", "a.example")
	target := startH1App(t)
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, certificates: [%s], target: %s, target_protocol: http1}
`, admin, addr, cert.entry(), target))

	// An HTTP/2 caller reaches an HTTP/1.1-only application.
	status, body, resp := get(ca.httpsClient(t, "a.example", nil, true), "https://"+addr+"/", nil)
	if status != http.StatusOK || body != "HTTP/1.1" || resp.Proto != "HTTP/2.0" {
		t.Errorf("h2 GET = %d %q, want 200 from the app over HTTP/1.1", status, body)
	}

	// WebSocket: the upgrade goes through and bytes flow both ways.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr,
		&tls.Config{RootCAs: ca.pool, ServerName: "a.example", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ioTimeout))
	_, _ = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(conn)
	up, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the upgrade answer: %v", err)
	}
	if up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade = %d, want 101", up.StatusCode)
	}
	_, _ = io.WriteString(conn, "ping through the ingress")
	got := make([]byte, len("ping through the ingress"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping through the ingress" {
		t.Errorf("echo over the upgraded connection = %q, %v; want the bytes sent", got, err)
	}
}

// TestIngressReload: SIGHUP with a new certificate list and a new target keeps the
// listener's socket and its established connections; new handshakes see the new
// certificates and requests go to the new target.
func TestIngressReload(t *testing.T) {
	ferrytest.CheckLeaks(t)
	ca := newCA(t)
	a := ca.issue("a", "a.example")
	b := ca.issue("b", "b.example")
	one, two := startApp(t, "one"), startApp(t, "two")
	addr, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	config := func(target string, certs ...leaf) string {
		var entries []string
		for _, c := range certs {
			entries = append(entries, c.entry())
		}
		return fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, certificates: [%s], target: %s}
`, admin, addr, strings.Join(entries, ", "), target)
	}
	f, path := startFerryFile(t, admin, config(one.addr, a))

	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr,
		&tls.Config{RootCAs: ca.pool, ServerName: "a.example", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	send := func() string {
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"); err != nil {
			return err.Error()
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	if got := send(); got != "one" {
		t.Fatalf("GET = %q, want one", got)
	}
	// Before the reload, b.example gets the default certificate (a).
	if st, err := ca.handshake(addr, &tls.Config{ServerName: "b.example", InsecureSkipVerify: true}); err != nil ||
		st.PeerCertificates[0].SerialNumber.Cmp(a.serial) != 0 {
		t.Fatalf("SNI b.example before the reload: %v, want a's serial %v", err, a.serial)
	}

	ferrytest.WriteFile(t, filepath.Dir(path), filepath.Base(path), config(two.addr, a, b))
	f.Signal(syscall.SIGHUP)
	ferrytest.Eventually(t, waitTimeout, func() bool {
		v, _ := f.Metric("ferry_config_reloads_total", map[string]string{"result": "ok"})
		return v >= 2
	}, func() string { return "the reload to be applied" })

	if got := send(); got != "two" {
		t.Errorf("GET on the connection from before the reload = %q, want two (same connection, new target)", got)
	}
	st, err := ca.handshake(addr, &tls.Config{ServerName: "b.example"})
	if err != nil || st.PeerCertificates[0].SerialNumber.Cmp(b.serial) != 0 {
		t.Errorf("SNI b.example after the reload: %v, want b's serial %v", err, b.serial)
	}
}
