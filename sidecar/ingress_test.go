package sidecar

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

var testSerial atomic.Int64

// writeCert writes a self-signed ECDSA server certificate for names to cert and key and
// returns its serial.
func writeCert(t testing.TB, cert, key string, names ...string) *big.Int {
	t.Helper()
	return writeCertSerial(t, cert, key, big.NewInt(time.Now().UnixNano()+testSerial.Add(1)), names...)
}

// writeCertSerial is writeCert with a given serial.
func writeCertSerial(t testing.TB, cert, key string, serial *big.Int, names ...string) *big.Int {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return serial
}

func TestCertSetPick(t *testing.T) {
	mk := func(names ...string) *tls.Certificate {
		return &tls.Certificate{Leaf: &x509.Certificate{DNSNames: names}}
	}
	def, a, wild, dup := mk("default.example"), mk("a.example", "A2.example."), mk("*.b.example"), mk("a.example")
	set := newCertSet([]*tls.Certificate{def, a, wild, dup})
	tests := []struct {
		sni  string
		want *tls.Certificate
	}{
		{"a.example", a},
		{"A.EXAMPLE", a},
		{"a2.example", a},
		{"a.example.", a},
		{"x.b.example", wild},
		{"b.example", def},       // a wildcard does not cover its parent
		{"y.x.b.example", def},   // nor two levels down
		{"default.example", def}, // the default by name too
		{"unknown.example", def},
		{"", def},
	}
	for _, tc := range tests {
		t.Run(tc.sni, func(t *testing.T) {
			if got := set.pick(tc.sni); got != tc.want {
				t.Errorf("pick(%q) = %v, want %v", tc.sni, got.Leaf.DNSNames, tc.want.Leaf.DNSNames)
			}
		})
	}
}

func TestIngressCertsReload(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem")
	first := writeCert(t, cert, key, "a.example")
	in := &config.Ingress{Listener: config.Listener{Address: "127.0.0.1:1"},
		Certificates: []config.IngressCertificate{{CertFile: cert, KeyFile: key}}}
	c, err := newIngressCerts(in, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newIngressCerts() error = %v", err)
	}
	defer c.close()
	serial := func() *big.Int {
		got, _ := c.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.example"})
		return got.Leaf.SerialNumber
	}
	if got := serial(); got.Cmp(first) != 0 {
		t.Fatalf("serial = %v, want %v", got, first)
	}

	// A key that does not match: the previous certificate stays, the failure is recorded.
	other := filepath.Join(dir, "other-key.pem")
	writeCert(t, filepath.Join(dir, "other.pem"), other, "other.example")
	otherKey, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	c.reload("test")
	if got := serial(); got.Cmp(first) != 0 {
		t.Errorf("serial after a bad reload = %v, want the previous %v", got, first)
	}
	if info := c.info(time.Now()); info[0].Error == "" || c.failures.Load() != 1 {
		t.Errorf("info().Error = %q, failures = %d, want the reload error and 1", info[0].Error, c.failures.Load())
	}

	// New good files are picked up by the watcher, without a call to reload.
	second := writeCert(t, cert, key, "a.example")
	deadline := time.Now().Add(10 * time.Second)
	for serial().Cmp(second) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("serial = %v, want %v after the files changed", serial(), second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info := c.info(time.Now()); info[0].Error != "" {
		t.Errorf("info().Error = %q after a good reload, want none", info[0].Error)
	}
}

func TestIngressServesBySNIWithEdgeHeaders(t *testing.T) {
	type seen struct{ proto, xfcc, xff string }
	got := make(chan seen, 8)
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Client-Cert"), r.Header.Get("X-Forwarded-For")}
		_, _ = io.WriteString(w, "app")
	}))
	// HTTP/2 callers reach the application over h2c, as on inbound.
	app.Config.Protocols = new(http.Protocols)
	app.Config.Protocols.SetHTTP1(true)
	app.Config.Protocols.SetUnencryptedHTTP2(true)
	app.Start()
	defer app.Close()
	dir := t.TempDir()
	aCert, aKey, bCert, bKey := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem"), filepath.Join(dir, "b.pem"), filepath.Join(dir, "b-key.pem")
	aSerial := writeCert(t, aCert, aKey, "a.example")
	bSerial := writeCert(t, bCert, bKey, "*.b.example")
	addr, admin := freeAddr(t), freeAddr(t)
	m := telemetry.NewMetrics()
	s := New(Options{Metrics: m})
	drained(t, s)
	cfg := parse(t, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - address: %s
    certificates: [{cert_file: %q, key_file: %q}, {cert_file: %q, key_file: %q}]
    target: %s
`, admin, addr, aCert, aKey, bCert, bKey, app.Listener.Addr()))
	if err := s.Apply(cfg); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}

	client := func(sni string) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: sni}, ForceAttemptHTTP2: true}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}
	for _, tc := range []struct {
		sni  string
		want *big.Int
	}{{"a.example", aSerial}, {"x.b.example", bSerial}, {"", aSerial}} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/", nil)
		req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://forged")
		req.Header.Set("X-Forwarded-Proto", "http")
		resp, err := client(tc.sni).Do(req)
		if err != nil {
			t.Fatalf("GET with SNI %q: %v", tc.sni, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Errorf("GET with SNI %q = %d over %s, want 200 over HTTP/2", tc.sni, resp.StatusCode, resp.Proto)
		}
		if s := resp.TLS.PeerCertificates[0].SerialNumber; s.Cmp(tc.want) != 0 {
			t.Errorf("SNI %q: serial = %v, want %v", tc.sni, s, tc.want)
		}
		if g := <-got; g.proto != "https" || g.xfcc != "" || g.xff != "127.0.0.1" {
			t.Errorf("app saw X-Forwarded-Proto %q, XFCC %q, XFF %q; want https, none, 127.0.0.1", g.proto, g.xfcc, g.xff)
		}
	}

	// The expiry metric covers the ingress certificates and the registry accepts the mix.
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	var expiries, requests int
	for _, mf := range mfs {
		switch mf.GetName() {
		case "ferry_mtls_certificate_expiry_seconds":
			expiries = len(mf.GetMetric())
		case "ferry_requests_total":
			for _, mm := range mf.GetMetric() {
				for _, l := range mm.GetLabel() {
					if l.GetName() == "direction" && l.GetValue() == telemetry.Ingress {
						requests += int(mm.GetCounter().GetValue())
					}
				}
			}
		}
	}
	if expiries != 2 || requests != 3 {
		t.Errorf("expiry samples = %d, ingress requests = %d; want 2 and 3", expiries, requests)
	}

	// /certs lists them.
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/certs", nil))
	var cs CertsStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &cs); err != nil {
		t.Fatalf("/certs: %v", err)
	}
	if len(cs.Ingress) != 2 || !cs.Ingress[0].Default || cs.Ingress[1].DNSNames[0] != "*.b.example" || cs.Ingress[1].CertFile != bCert {
		t.Errorf("/certs ingress = %+v, want a (default) then *.b.example from %s", cs.Ingress, bCert)
	}
	rec = httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if body := rec.Body.String(); !strings.Contains(body, "*.b.example") || !strings.Contains(body, addr) {
		t.Errorf("status page does not list the ingress listener %s and its certificates", addr)
	}
}

func TestIngressReloadKeepsSocketAndConnections(t *testing.T) {
	one, two := backend(t, "one"), backend(t, "two")
	dir := t.TempDir()
	aCert, aKey, bCert, bKey := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem"), filepath.Join(dir, "b.pem"), filepath.Join(dir, "b-key.pem")
	aSerial := writeCert(t, aCert, aKey, "a.example")
	bSerial := writeCert(t, bCert, bKey, "a.example")
	addr, admin := freeAddr(t), freeAddr(t)
	s := New(Options{})
	drained(t, s)
	cfg := func(target, cert, key string) *config.Config {
		return parse(t, fmt.Sprintf(`service: web
admin: {address: %s}
ingress: [{address: %s, certificates: [{cert_file: %q, key_file: %q}], target: %s}]
`, admin, addr, cert, key, target))
	}
	if err := s.Apply(cfg(one, aCert, aKey)); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	dial := func() (*tls.Conn, *bufio.Reader) {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "a.example", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatalf("tls.Dial() error = %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c, bufio.NewReader(c)
	}
	c1, br1 := dial()
	if got := get(t, c1, br1); got != "one" {
		t.Fatalf("GET = %q, want one", got)
	}
	if got := c1.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(aSerial) != 0 {
		t.Fatalf("serial = %v, want %v", got, aSerial)
	}

	// A new target: same socket, same connection, new requests go to the new target.
	if err := s.Apply(cfg(two, aCert, aKey)); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if got := get(t, c1, br1); got != "two" {
		t.Errorf("GET on the kept connection after a reload = %q, want two", got)
	}

	// New certificate files: new handshakes get the new certificate, and the front is
	// kept, so the established connection keeps working.
	if err := s.Apply(cfg(two, bCert, bKey)); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	c2, br2 := dial()
	if got := c2.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(bSerial) != 0 {
		t.Errorf("serial after the reload = %v, want %v", got, bSerial)
	}
	if got := get(t, c2, br2); got != "two" {
		t.Errorf("GET on a new connection = %q, want two", got)
	}
	if got := get(t, c1, br1); got != "two" {
		t.Errorf("GET on the connection from before the certificate change = %q, want two", got)
	}
}

func TestIngressCertMetricsSharedCertificate(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem")
	writeCertSerial(t, cert, key, big.NewInt(7), "a.example")
	// Another certificate with the same serial (self-signed, so another issuer).
	other, otherKey := filepath.Join(dir, "b.pem"), filepath.Join(dir, "b-key.pem")
	writeCertSerial(t, other, otherKey, big.NewInt(7), "b.example")
	m := telemetry.NewMetrics()
	s := New(Options{Metrics: m})
	drained(t, s)
	app := backend(t, "app")
	cfg := parse(t, fmt.Sprintf(`service: web
admin: {address: %s}
ingress:
  - {address: %s, certificates: [{cert_file: %q, key_file: %q}], target: %s}
  - {address: %s, certificates: [{cert_file: %q, key_file: %q}, {cert_file: %q, key_file: %q}], target: %s}
`, freeAddr(t), freeAddr(t), cert, key, app, freeAddr(t), cert, key, other, otherKey, app))
	if err := s.Apply(cfg); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v, want the certificates with serial 7 reported once", err)
	}
	counts := map[string]int{}
	for _, mf := range mfs {
		counts[mf.GetName()] = len(mf.GetMetric())
	}
	if counts["ferry_mtls_certificate_expiry_seconds"] != 1 || counts["ferry_ingress_certificate_updates_total"] != 2 {
		t.Errorf("samples = %d expiry, %d updates; want 1 and 2", counts["ferry_mtls_certificate_expiry_seconds"],
			counts["ferry_ingress_certificate_updates_total"])
	}
}

func TestIngressRSACertificateTLS12(t *testing.T) {
	dir := t.TempDir()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "rsa.example"},
		DNSNames: []string{"rsa.example"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "rsa-key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), 0o600); err != nil {
		t.Fatal(err)
	}
	in := &config.Ingress{Listener: config.Listener{Address: "127.0.0.1:1"},
		Certificates: []config.IngressCertificate{{CertFile: cert, KeyFile: key}}}
	c, err := newIngressCerts(in, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newIngressCerts() error = %v", err)
	}
	defer c.close()
	p := &certPicker{}
	p.cur.Store(c)
	pool := x509.NewCertPool()
	pool.AddCert(c.set.Load().certs[0].Leaf)

	tests := []struct {
		name    string
		suites  []uint16
		wantErr bool
	}{
		{"ECDHE-RSA AES-GCM", []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, false},
		{"ECDHE-RSA ChaCha20", []uint16{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}, false},
		{"RSA key exchange", []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}, true},
		{"ECDHE-RSA CBC", []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc, cc := net.Pipe()
			defer sc.Close()
			defer cc.Close()
			srv := tls.Server(sc, p.serverConfig(tls.VersionTLS12, true))
			srvErr := make(chan error, 1)
			go func() { srvErr <- srv.Handshake() }()
			cli := tls.Client(cc, &tls.Config{RootCAs: pool, ServerName: "rsa.example", MaxVersion: tls.VersionTLS12, CipherSuites: tc.suites})
			cliErr := cli.Handshake()
			if tc.wantErr {
				_ = cli.Close()
			}
			err := <-srvErr
			if (err != nil) != tc.wantErr {
				t.Fatalf("server Handshake() error = %v (client: %v), want error %v", err, cliErr, tc.wantErr)
			}
			// A refusal must be the server's: no shared cipher suite, not a client that
			// could not even offer the suite.
			if tc.wantErr && (err == nil || !strings.Contains(err.Error(), "no cipher suite supported by both")) {
				t.Errorf("server Handshake() error = %v, want no shared cipher suite", err)
			}
			if !tc.wantErr && cli.ConnectionState().CipherSuite != tc.suites[0] {
				t.Errorf("CipherSuite = %s, want %s", tls.CipherSuiteName(cli.ConnectionState().CipherSuite), tls.CipherSuiteName(tc.suites[0]))
			}
		})
	}
}

// TestIngressCertsKubernetesSecretSwap: an ingress certificate mounted from a Kubernetes
// secret (tls.crt → ..data/tls.crt, ..data → ..<generation>) is replaced by the kubelet's
// atomic swap of ..data, twice. Each swap publishes the new certificate once, without a
// failure (never a mix of the old and new halves). That notifications alone see such
// swaps is TestFileWatcherRepeatedSymlinkSwaps in mtls, with polling off; here the
// deadline leaves room for the poll, so that a loaded machine cannot fail the test.
func TestIngressCertsKubernetesSecretSwap(t *testing.T) {
	dir := t.TempDir()
	gen := func(name string) *big.Int {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		return writeCert(t, filepath.Join(dir, name, "tls.crt"), filepath.Join(dir, name, "tls.key"), "a.example")
	}
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	first := gen("..gen1")
	link("..gen1", "..data")
	link("..data/tls.crt", "tls.crt")
	link("..data/tls.key", "tls.key")
	in := &config.Ingress{Listener: config.Listener{Address: "127.0.0.1:1"},
		Certificates: []config.IngressCertificate{{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}}}
	c, err := newIngressCerts(in, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newIngressCerts() error = %v", err)
	}
	defer c.close()
	serial := func() *big.Int {
		got, _ := c.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.example"})
		return got.Leaf.SerialNumber
	}
	if got := serial(); got.Cmp(first) != 0 {
		t.Fatalf("serial = %v, want %v", got, first)
	}
	prev := "..gen1"
	for i, next := range []string{"..gen2", "..gen3"} {
		want := gen(next)
		link(next, "..data_tmp")
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, prev)); err != nil {
			t.Fatal(err)
		}
		prev = next
		deadline := time.Now().Add(10 * time.Second)
		for serial().Cmp(want) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("swap %d: serial = %v, want %v", i+1, serial(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(3 * ingressCertDebounce)
		if got, want := c.updates.Load(), uint64(i+2); got != want {
			t.Errorf("swap %d: updates = %d, want %d (one publish per swap)", i+1, got, want)
		}
		if got := c.failures.Load(); got != 0 {
			t.Errorf("swap %d: failures = %d, want 0", i+1, got)
		}
	}
}
