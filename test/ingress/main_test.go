// Package ingress holds the end-to-end tests of TLS ingress listeners: a real ferry
// process terminating ordinary server TLS for clients outside the mesh, with server
// certificates made in the test by a CA of its own (so none can expire mid-CI), backends
// written in the test, and clients that try old protocol versions, weak cipher suites and
// plaintext. Every wait is bounded.
package ingress

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

const (
	// ioTimeout bounds every network operation and HTTP request of the tests.
	ioTimeout = ferrytest.IOTimeout
	// waitTimeout bounds the waits for a state change.
	waitTimeout = 20 * time.Second
)

// ferryBin is built by TestMain.
var ferryBin string

func TestMain(m *testing.M) {
	os.Exit(ferrytest.Main(m, "ingress", ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"}))
}

// ca is a certificate authority made for one test, and the pool that trusts it.
type ca struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	next atomic.Int64
}

func newCA(t *testing.T) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ingress test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &ca{t: t, dir: t.TempDir(), cert: cert, key: key, pool: pool}
	c.next.Store(100)
	return c
}

// leaf is one issued server certificate's files and serial.
type leaf struct {
	cert, key string
	serial    *big.Int
}

// issue writes a server certificate for names as NAME.pem and NAME-key.pem (replacing
// what is there by renaming new files over it, as a certificate manager does).
func (c *ca) issue(name string, names ...string) leaf {
	c.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	serial := big.NewInt(c.next.Add(1))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		c.t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		c.t.Fatal(err)
	}
	l := leaf{cert: filepath.Join(c.dir, name+".pem"), key: filepath.Join(c.dir, name+"-key.pem"), serial: serial}
	c.replace(l.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	c.replace(l.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}))
	return l
}

// replace writes data to path atomically.
func (c *ca) replace(path string, data []byte) {
	c.t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		c.t.Fatal(err)
	}
}

// entry is the YAML flow mapping of l in a certificates list.
func (l leaf) entry() string { return fmt.Sprintf("{cert_file: %q, key_file: %q}", l.cert, l.key) }

// startFerry writes config (which must set admin.address to admin) and runs ferry on it
// until the test ends; it returns once /ready answers 200.
func startFerry(t *testing.T, admin, config string) *ferrytest.Process {
	t.Helper()
	p, _ := startFerryFile(t, admin, config)
	return p
}

// startFerryFile is startFerry, also returning the config file's path (to rewrite it
// before a SIGHUP).
func startFerryFile(t *testing.T, admin, config string) (*ferrytest.Process, string) {
	t.Helper()
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", config)
	p := ferrytest.StartWith(t, ferrytest.Options{Grace: 10 * time.Second, Name: admin}, ferryBin, cfg, admin)
	p.WaitReady()
	return p, cfg
}

// httpsClient returns a client that trusts the test CA and sends serverName as SNI (and
// verifies it); protocols nil is HTTP/1.1 and HTTP/2 by ALPN. keepAlive false makes
// every request a new connection, so a new handshake.
func (c *ca) httpsClient(t *testing.T, serverName string, protocols *http.Protocols, keepAlive bool) *http.Client {
	tr := &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{Timeout: ioTimeout}).DialContext,
		TLSClientConfig:   &tls.Config{RootCAs: c.pool, ServerName: serverName},
		ForceAttemptHTTP2: true,
		Protocols:         protocols,
		DisableKeepAlives: !keepAlive,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: ioTimeout}
}

// h1Only is HTTP/1.1 alone.
func h1Only() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}

// seen is what the application saw of a request.
type seen struct {
	proto, xfp, xfcc, xff, host string
}

// app is an application serving HTTP/1.1 and h2c that names itself in its answers and
// records what it saw of the last request.
type app struct {
	name  string
	addr  string
	count atomic.Int64
	mu    sync.Mutex
	last  seen
}

func startApp(t *testing.T, name string) *app {
	t.Helper()
	a := &app{name: name}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.count.Add(1)
		a.mu.Lock()
		a.last = seen{proto: r.Proto, xfp: r.Header.Get("X-Forwarded-Proto"), xfcc: r.Header.Get("X-Forwarded-Client-Cert"),
			xff: r.Header.Get("X-Forwarded-For"), host: r.Host}
		a.mu.Unlock()
		_, _ = io.WriteString(w, a.name)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return a
}

func (a *app) seen() seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// get sends GET url with header and returns the status and the body; a transport error
// is status 0 with the error as body.
func get(c *http.Client, url string, header http.Header) (int, string, *http.Response) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error(), nil
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp
}
