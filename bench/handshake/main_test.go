package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// pki is a throw-away CA with one server and one client certificate, written as PEM files.
type pki struct {
	pool                       *x509.CertPool
	server                     tls.Certificate
	caFile, clientCert, client string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := &pki{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	issue := func(serial int64, usage x509.ExtKeyUsage, name string) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse("spiffe://mesh.local/svc/" + name)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), URIs: []*url.URL{u},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	sc, sk := issue(2, x509.ExtKeyUsageServerAuth, "server")
	if p.server, err = tls.X509KeyPair(sc, sk); err != nil {
		t.Fatal(err)
	}
	cc, ck := issue(3, x509.ExtKeyUsageClientAuth, "client")
	write := func(name string, b []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	p.caFile = write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	p.clientCert, p.client = write("client.pem", cc), write("client-key.pem", ck)
	return p
}

// server is an HTTPS server requiring a client certificate from p's CA, offering session
// tickets (so that a client able to resume would), and counting full handshakes.
func (p *pki) serve(t *testing.T, status int) (addr string, full *atomic.Int64) {
	t.Helper()
	full = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		io.WriteString(w, "Hello, world\n")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failure tests make it complain
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		NextProtos:   []string{"h2", "http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if !cs.DidResume {
				full.Add(1)
			}
			return nil
		},
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), full
}

func TestRunFullHandshakes(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name, maxVersion, curves string
		wantVersion              string
	}{
		{"TLS 1.3, X25519", "1.3", "X25519", "TLS1.3"},
		{"TLS 1.2, P-256", "1.2", "P256", "TLS1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, full := p.serve(t, http.StatusOK)
			cfg, err := clientConfig(p.clientCert, p.client, p.caFile, "http/1.1", tt.curves, tt.maxVersion)
			if err != nil {
				t.Fatalf("clientConfig() error = %v", err)
			}
			res := run(cfg, addr, "/", 4, 300*time.Millisecond)
			if res.handshakes == 0 || res.errors != 0 {
				t.Fatalf("run() = %d handshakes, %d errors (first %v), want > 0 and 0", res.handshakes, res.errors, res.firstErr)
			}
			if res.resumed != 0 {
				t.Errorf("run() resumed %d sessions, want 0", res.resumed)
			}
			// The server may count a handshake whose request the end of the run cut off.
			if got := full.Load(); got < res.handshakes {
				t.Errorf("server saw %d full handshakes, want ≥ %d (the client's count)", got, res.handshakes)
			}
			if got := versionName(res.state.Version); got != tt.wantVersion {
				t.Errorf("version = %s, want %s", got, tt.wantVersion)
			}
			if got := res.state.NegotiatedProtocol; got != "http/1.1" {
				t.Errorf("ALPN = %q, want http/1.1", got)
			}
		})
	}
}

func TestRunCountsFailures(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name   string
		status int
		ca     string
	}{
		{"non-200 answer", http.StatusForbidden, ""},
		{"server not signed by the CA", http.StatusOK, "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := p.serve(t, tt.status)
			caFile := p.caFile
			if tt.ca == "other" {
				caFile = newPKI(t).caFile
			}
			cfg, err := clientConfig(p.clientCert, p.client, caFile, "http/1.1", "X25519", "1.3")
			if err != nil {
				t.Fatalf("clientConfig() error = %v", err)
			}
			res := run(cfg, addr, "/", 2, 200*time.Millisecond)
			if res.handshakes != 0 || res.errors == 0 || res.firstErr == nil {
				t.Errorf("run() = %d handshakes, %d errors (first %v), want 0 and > 0", res.handshakes, res.errors, res.firstErr)
			}
		})
	}
}

func TestClientConfigErrors(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name                           string
		cert, key, ca, curves, version string
	}{
		{"missing files", "", "", "", "X25519", "1.3"},
		{"unknown group", p.clientCert, p.client, p.caFile, "X448", "1.3"},
		{"bad version", p.clientCert, p.client, p.caFile, "X25519", "1.1"},
		{"CA not PEM", p.clientCert, p.client, p.client, "X25519", "1.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := clientConfig(tt.cert, tt.key, tt.ca, "", tt.curves, tt.version); err == nil {
				t.Errorf("clientConfig() error = nil, want an error")
			}
		})
	}
}
