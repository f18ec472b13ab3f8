package consul

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/test/ferrytest"
)

// xfccApp is the local application behind the api sidecar: it answers with the
// X-Forwarded-Client-Cert value Ferry gave it.
func xfccApp(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "api xfcc=%s", strings.Join(r.Header.Values(mtls.XFCCHeader), " | "))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// certsView is the part of /certs the tests read.
type certsView struct {
	Enabled  bool   `json:"enabled"`
	SPIFFEID string `json:"spiffe_id"`
	Valid    bool   `json:"valid"`
	Status   struct {
		Source  string `json:"source"`
		Updates uint64 `json:"updates"`
	} `json:"status"`
	Certificates []mtls.CertInfo `json:"certificates"`
}

func (f *ferry) certs() (certsView, error) {
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get(f.AdminURL("/certs"))
	if err != nil {
		return certsView{}, err
	}
	defer resp.Body.Close()
	var v certsView
	err = json.NewDecoder(resp.Body).Decode(&v)
	return v, err
}

// leafIssuer returns the issuer of the sidecar's current leaf certificate.
func (v certsView) leafIssuer() string {
	for _, c := range v.Certificates {
		if c.Role == mtls.RoleLeaf {
			return c.Issuer
		}
	}
	return ""
}

// activeRootSubject returns the subject of Consul's active CA root and the roots' trust
// domain.
func activeRootSubject(c *api.Client) (string, string, error) {
	roots, _, err := c.Connect().CARoots(nil)
	if err != nil {
		return "", "", err
	}
	for _, r := range roots.Roots {
		if r.ID == roots.ActiveRootID {
			b, _ := pem.Decode([]byte(r.RootCertPEM))
			if b == nil {
				return "", "", errors.New("active root: no PEM")
			}
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return "", "", err
			}
			return cert.Subject.String(), roots.TrustDomain, nil
		}
	}
	return "", "", fmt.Errorf("no active root %q", roots.ActiveRootID)
}

// TestConnectCA runs two ferry processes with mtls.source consul against one real agent:
// web calls api through both sidecars, over mTLS with the leaf certificates of Consul
// Connect's built-in CA; api's application sees web's Consul-form SPIFFE ID; a Connect
// upstream (identity from discovery) and a static one (identity derived at run time)
// both work, and a static upstream expecting another service is refused. A bounded load
// runs across a CA root rotation with no failed request.
func TestConnectCA(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulClient(t, agent)
	_, tdName, err := activeRootSubject(c)
	if err != nil {
		t.Fatal(err)
	}

	// api: registers itself (and its Connect sidecar, this ferry) with the agent.
	app := xfccApp(t)
	apiAdmin, apiIn := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	apiF := runFerry(t, apiAdmin, fmt.Sprintf(`service: api
admin: {address: %s}
inbound: {address: %s, target: %s}
outbound: []
upstreams: []
discovery:
  consul: {address: %s, register: true, check_interval: 1s}
mtls: {source: consul}
drain_timeout: 2s
`, apiAdmin, apiIn, app, agent.Addr))

	// web: api through Consul Connect discovery, api through a static address, and
	// "billing", a static upstream that is really api (so the wrong identity).
	webAdmin, outConnect, outStatic, outWrong := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	web := runFerry(t, webAdmin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound:
  - {upstream: api-connect, address: %s}
  - {upstream: api, address: %s}
  - {upstream: billing, address: %s}
upstreams:
  - {name: api-connect, consul: {service: api, connect: true}, idle_timeout: 200ms}
  - {name: api, endpoints: [%s], idle_timeout: 200ms}
  - {name: billing, endpoints: [%s]}
discovery:
  consul: {address: %s}
mtls: {source: consul}
drain_timeout: 2s
`, webAdmin, outConnect, outStatic, outWrong, apiIn, apiIn, agent.Addr))
	apiF.WaitReady()
	web.WaitReady()

	wantWeb := fmt.Sprintf("spiffe://%s/ns/default/dc/dc1/svc/web", tdName)
	wantAPI := fmt.Sprintf("spiffe://%s/ns/default/dc/dc1/svc/api", tdName)
	for _, tc := range []struct {
		f    *ferry
		want string
	}{{web, wantWeb}, {apiF, wantAPI}} {
		v, err := tc.f.certs()
		if err != nil {
			t.Fatalf("/certs: %v", err)
		}
		if !v.Enabled || !v.Valid || v.SPIFFEID != tc.want || v.Status.Source != "consul" {
			t.Errorf("/certs = enabled %v, valid %v, spiffe_id %q, source %q; want true, true, %q, consul",
				v.Enabled, v.Valid, v.SPIFFEID, v.Status.Source, tc.want)
		}
	}
	if got := web.MetricWith("ferry_mtls_certificate_loaded", `source="consul"`); got != 1 {
		t.Errorf("ferry_mtls_certificate_loaded{source=consul} = %v, want 1", got)
	}
	if got := web.MetricWith("ferry_mtls_certificate_expiry_seconds", `source="consul"`, `role="leaf"`); got <= 0 {
		t.Errorf("ferry_mtls_certificate_expiry_seconds{source=consul,role=leaf} = %v, want > 0", got)
	}

	cl := &http.Client{Timeout: ioTimeout}
	defer cl.CloseIdleConnections()
	for _, out := range []string{outConnect, outStatic} {
		var code int
		var body string
		eventually(t, "a request through "+out+" reaches api", func() bool {
			code, body = get(cl, "http://"+out+"/")
			return code == http.StatusOK
		})
		if !strings.HasPrefix(body, "api xfcc=") || !strings.Contains(body, "URI="+wantWeb) || !strings.Contains(body, "By="+wantAPI) {
			t.Errorf("GET via %s = %d %q, want api seeing URI=%s and By=%s in X-Forwarded-Client-Cert", out, code, body, wantWeb, wantAPI)
		}
	}
	resp, err := cl.Get("http://" + outWrong + "/")
	if err != nil {
		t.Fatalf("GET via billing: %v", err)
	}
	resp.Body.Close()
	wantPS := fmt.Sprintf(`ferry; error=tls_certificate_error; details="want spiffe://%s/ns/default/dc/dc1/svc/billing, got %s"`, tdName, wantAPI)
	if ps := resp.Header.Get("Proxy-Status"); resp.StatusCode != http.StatusServiceUnavailable || ps != wantPS {
		t.Errorf("GET via billing (really api) = %d, Proxy-Status %q; want 503 with %q", resp.StatusCode, ps, wantPS)
	}

	// A bounded load through both paths while Consul rotates its CA root.
	oldRoot, _, err := activeRootSubject(c)
	if err != nil {
		t.Fatal(err)
	}
	var (
		ok, failed atomic.Int64
		firstFail  atomic.Value
		wg         sync.WaitGroup
		stopLoad   = make(chan struct{})
		certsSeen  sync.Map // X-Forwarded-Client-Cert values api's app saw: one per web certificate
	)
	for i := range 6 {
		url := "http://" + []string{outConnect, outStatic}[i%2] + "/"
		wg.Go(func() {
			wc := &http.Client{Timeout: ioTimeout}
			defer wc.CloseIdleConnections()
			for {
				select {
				case <-stopLoad:
					return
				// Pauses often longer than web's idle_timeout (200ms), so that its upstream
				// connections expire and new handshakes run throughout the rotation.
				case <-time.After(time.Duration(100+mrand.IntN(500)) * time.Millisecond):
				}
				code, body := get(wc, url)
				if code == http.StatusOK && strings.Contains(body, "URI="+wantWeb) {
					ok.Add(1)
					certsSeen.Store(body, true)
				} else {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("%s: %d %s", url, code, body))
				}
			}
		})
	}
	time.Sleep(time.Second)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if _, err := c.Connect().CASetConfig(&api.CAConfig{Provider: "consul", Config: map[string]any{"PrivateKey": keyPEM}}, nil); err != nil {
		t.Fatalf("CASetConfig() error = %v", err)
	}
	var newRoot string
	consultest.WaitFor(t, waitTimeout, func() error {
		s, _, err := activeRootSubject(c)
		if err != nil {
			return err
		}
		if s == oldRoot {
			return errors.New("active root unchanged")
		}
		newRoot = s
		return nil
	})
	// The agent re-signs the leaves after a jitter of up to 30s; both sidecars follow
	// without a restart.
	rotated := time.Now()
	for name, f := range map[string]*ferry{"web": web, "api": apiF} {
		ferrytest.Eventually(t, 90*time.Second, func() bool {
			v, err := f.certs()
			return err == nil && v.Valid && v.leafIssuer() == newRoot
		}, func() string { return name + "'s leaf to be issued by the new root " + newRoot })
	}
	t.Logf("both leaves re-signed %v after the new root", time.Since(rotated).Round(time.Millisecond))
	// The load goes on until it has run through handshakes with web's new leaf too.
	distinct := func() int {
		n := 0
		certsSeen.Range(func(any, any) bool { n++; return true })
		return n
	}
	ferrytest.Eventually(t, waitTimeout, func() bool { return distinct() >= 2 },
		func() string { return "api's app to see web's new certificate during the load" })
	time.Sleep(time.Second)
	close(stopLoad)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("load across the CA rotation: %d ok, %d failed (first: %v), want 0 failed", ok.Load(), failed.Load(), firstFail.Load())
	}
	t.Logf("load across the CA rotation: %d requests, 0 failed", ok.Load())
	for _, f := range []*ferry{web, apiF} {
		if code, body := f.ready(); code != http.StatusOK {
			t.Errorf("/ready after rotation = %d %s, want 200", code, body)
		}
	}

	// The agent goes away: both sidecars keep their certificates and keep serving.
	agent.Stop()
	eventually(t, "web records a failed certificate query", func() bool {
		return web.MetricWith("ferry_mtls_certificate_update_failures_total", `source="consul"`) > 0
	})
	for _, out := range []string{outConnect, outStatic} {
		if got := seen(t, "http://"+out+"/", 10); len(got) != 1 {
			t.Errorf("10 GETs via %s with the agent down = %v, want all answered by api", out, got)
		} else {
			for body := range got {
				if !strings.Contains(body, "URI="+wantWeb) {
					t.Errorf("GET via %s with the agent down = %q, want api seeing %s", out, body, wantWeb)
				}
			}
		}
	}
}

// TestConnectCAWaitsForAgent: with the agent down, a ferry with mtls.source consul stays
// not ready with a clear reason and log line, and becomes ready once the agent is up.
func TestConnectCAWaitsForAgent(t *testing.T) {
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	agentAddr := fmt.Sprintf("127.0.0.1:%d", ports.HTTP)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := runFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams: [{name: api, endpoints: [127.0.0.1:1]}]
discovery:
  consul: {address: %s}
mtls: {source: consul}
`, admin, out, agentAddr))
	eventually(t, "/ready answers 503 for want of a certificate from Consul", func() bool {
		code, body := f.ready()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "no valid certificate") && strings.Contains(body, agentAddr)
	})
	eventually(t, "a clear log line says the agent cannot be reached", func() bool {
		return f.logHas("cannot reach the Consul agent for certificates", agentAddr)
	})
	consultest.Start(t, consultest.Options{Ports: &ports})
	f.WaitReady()
	v, err := f.certs()
	if err != nil || !strings.HasSuffix(v.SPIFFEID, "/ns/default/dc/dc1/svc/web") {
		t.Errorf("/certs spiffe_id = %q (%v), want Consul's form for web", v.SPIFFEID, err)
	}
}
