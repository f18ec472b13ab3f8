// Package mtls holds the end-to-end tests of mutual TLS between sidecars: two real ferry
// processes (a client-side and a server-side sidecar) with certificates from a
// development CA made in the test, backends written in the test, and clients that try to
// get past the server-side sidecar without a valid identity. Certificates are generated
// per test run, so none can expire mid-CI. Every wait is bounded.
package mtls

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/mtls"

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
	os.Exit(ferrytest.Main(m, "mtls", ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"}))
}

// ferry is one running ferry process.
type ferry struct {
	*ferrytest.Process
	t *testing.T
}

// startFerry writes config (which must set admin.address to admin) and runs ferry on it
// until the test ends; it returns once /ready answers 200.
func startFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	f := launchFerry(t, admin, config)
	f.WaitReady()
	return f
}

// launchFerry is startFerry without the wait for readiness. At cleanup the process gets
// SIGTERM, then SIGKILL after 10s.
func launchFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", config)
	o := ferrytest.Options{Grace: 10 * time.Second, Name: admin}
	return &ferry{Process: ferrytest.StartWith(t, o, ferryBin, cfg, admin), t: t}
}

// certsStatus is /certs as the tests read it.
type certsStatus struct {
	Enabled      bool   `json:"enabled"`
	SPIFFEID     string `json:"spiffe_id"`
	Valid        bool   `json:"valid"`
	Certificates []struct {
		Role            string  `json:"role"`
		Subject         string  `json:"subject"`
		SPIFFEID        string  `json:"spiffe_id"`
		Serial          string  `json:"serial"`
		NotAfter        string  `json:"not_after"`
		Source          string  `json:"source"`
		SecondsToExpiry float64 `json:"seconds_to_expiry"`
	} `json:"certificates"`
}

func (f *ferry) certs() certsStatus {
	f.t.Helper()
	resp, err := newClient(f.t).Get(f.AdminURL("/certs"))
	if err != nil {
		f.t.Fatalf("GET /certs: %v", err)
	}
	defer resp.Body.Close()
	var out certsStatus
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		f.t.Fatalf("GET /certs: %v", err)
	}
	return out
}

// get returns the body of GET path on the admin listener.
func (f *ferry) get(path string) string {
	f.t.Helper()
	_, body, _ := get(newClient(f.t), f.AdminURL(path), nil)
	return body
}

// eventually polls cond every 20ms until it holds, or fails t after waitTimeout.
// presentedSerial makes a new TLS handshake with the sidecar at addr, presenting client's
// certificate, and returns the serial of the leaf the sidecar presented.
func presentedSerial(t *testing.T, addr string, client ferrytest.Certs) string {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{client.TLSCert(t)}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return mtls.FormatSerial(conn.ConnectionState().PeerCertificates[0].SerialNumber)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ferrytest.Eventually(t, waitTimeout, cond, func() string { return "waiting for " + what })
}

// newClient returns an HTTP/1.1 client of its own, closed at cleanup.
func newClient(t *testing.T) *http.Client { return ferrytest.NewClient(t, 64, nil) }

// newH2CClient returns an HTTP/2 cleartext (prior knowledge) client of its own.
func newH2CClient(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Proxy: nil, Protocols: &p, DialContext: (&net.Dialer{Timeout: ioTimeout}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: ioTimeout}
}

// get sends GET url with header and returns the status, the body and the Proxy-Status
// header; a transport error is status 0.
func get(c *http.Client, url string, header http.Header) (int, string, string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error(), ""
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Proxy-Status")
}

// app is the local application behind the server-side sidecar: it counts the requests
// that reach it and records what it saw of the last one.
type app struct {
	addr  string
	count atomic.Int64
	mu    sync.Mutex
	xfcc  []string // X-Forwarded-Client-Cert values of the last request
	proto string
}

// startApp serves HTTP/1.1 and h2c on a free port until the test ends. grpcHandler, if
// not nil, serves requests whose Content-Type is application/grpc.
func startApp(t *testing.T, grpcHandler http.Handler) *app {
	t.Helper()
	a := &app{}
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
		a.xfcc = r.Header.Values(mtls.XFCCHeader)
		a.proto = r.Proto
		a.mu.Unlock()
		if grpcHandler != nil && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcHandler.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "proto=%s xfcc=%s\n", r.Proto, strings.Join(r.Header.Values(mtls.XFCCHeader), " | "))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return a
}

// seen returns the X-Forwarded-Client-Cert values and the protocol of the last request.
func (a *app) seen() ([]string, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.xfcc, a.proto
}

// mesh is a client-side sidecar (service web) and a server-side sidecar (service api) in
// front of an app.
type mesh struct {
	app      *app
	server   *ferry
	client   *ferry
	inbound  string // the server-side sidecar's mTLS listener
	outbound string // the client-side sidecar's listener for api
	webCerts ferrytest.Certs
	apiCerts ferrytest.Certs
}

// meshOptions vary startMesh.
type meshOptions struct {
	grpc         http.Handler  // served by the app for gRPC requests
	apiService   string        // the server-side sidecar's certificate's service (default api)
	upstreamKeys string        // extra keys of the client's api upstream (YAML flow mapping entries)
	idleTimeout  time.Duration // the client's upstream idle_timeout (default 90s)
}

func startMesh(t *testing.T, p *ferrytest.PKI, o meshOptions) *mesh {
	t.Helper()
	if o.apiService == "" {
		o.apiService = "api"
	}
	if o.idleTimeout == 0 {
		o.idleTimeout = 90 * time.Second
	}
	m := &mesh{app: startApp(t, o.grpc), inbound: ferrytest.FreeAddr(t), outbound: ferrytest.FreeAddr(t)}
	m.apiCerts = p.Issue(o.apiService)
	m.webCerts = p.Issue("web")
	serverAdmin, clientAdmin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	m.server = startFerry(t, serverAdmin, fmt.Sprintf(`service: api
admin: {address: %s}
inbound: {address: %s, target: %s}
telemetry: {access_log: stdout}
%s`, serverAdmin, m.inbound, m.app.addr, m.apiCerts.MTLSBlock()))
	keys := ""
	if o.upstreamKeys != "" {
		keys = ", " + o.upstreamKeys
	}
	m.client = startFerry(t, clientAdmin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams: [{name: api, endpoints: [%s], idle_timeout: %s%s}]
telemetry: {access_log: stdout}
%s`, clientAdmin, m.outbound, m.inbound, o.idleTimeout, keys, m.webCerts.MTLSBlock()))
	return m
}
