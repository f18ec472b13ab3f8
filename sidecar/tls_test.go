package sidecar

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/sidecar/l7"
)

// issue makes a CA in a temporary directory and issues certificates for services there
// (NAME.pem, NAME-key.pem, bundle.pem).
func issue(t *testing.T, services ...string) string {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	ca, err := mtls.NewCA(td, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, s := range services {
		id, _ := mtls.ServiceID(td, s)
		svid, err := ca.Issue(mtls.IssueRequest{ID: id, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mtls.WriteSVID(dir, s, svid, ca.Bundle(td)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestInboundMTLS: the inbound listener terminates mTLS (r.TLS is set: the app sees
// X-Forwarded-Proto https), negotiates h2 by ALPN, gives the app the caller's identity,
// and a reload to permissive on the same address takes plaintext too.
func TestInboundMTLS(t *testing.T) {
	dir := issue(t, "api", "web")
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto=%s fwd=%s xfcc=%s", r.Proto, r.Header.Get("X-Forwarded-Proto"), r.Header.Get(mtls.XFCCHeader))
	}))
	app.Config.Protocols = new(http.Protocols)
	app.Config.Protocols.SetHTTP1(true)
	app.Config.Protocols.SetUnencryptedHTTP2(true) // an h2 caller is proxied to the app as h2c
	app.Start()
	t.Cleanup(app.Close)
	in, admin := freeAddr(t), freeAddr(t)
	cfgText := func(mode string) string {
		return fmt.Sprintf("service: api\nadmin: {address: %s}\ninbound: {address: %s, target: %s}\n"+
			"mtls: {mode: %s, source: dev, dir: %s}\n", admin, in, app.Listener.Addr(), mode, dir)
	}
	s := New(Options{})
	drained(t, s)
	if err := s.Apply(parse(t, cfgText("strict"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if ok, why := s.Ready(); !ok {
		t.Fatalf("Ready() = false, %q, want true", why)
	}

	web, err := tls.LoadX509KeyPair(filepath.Join(dir, "web.pem"), filepath.Join(dir, "web-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		h2        bool
		wantProto string
	}{{"http/1.1", false, "HTTP/1.1"}, {"h2 by ALPN", true, "HTTP/2.0"}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{web}, InsecureSkipVerify: true},
				ForceAttemptHTTP2: tc.h2}
			defer tr.CloseIdleConnections()
			if !tc.h2 {
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			req, _ := http.NewRequest("GET", "https://"+in+"/", nil)
			req.Header.Set(mtls.XFCCHeader, "URI=spiffe://mesh.local/svc/forged")
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
			if err != nil {
				t.Fatalf("GET over mTLS: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Proto != tc.wantProto {
				t.Errorf("response protocol = %s, want %s (ALPN)", resp.Proto, tc.wantProto)
			}
			body := string(b)
			if !strings.Contains(body, "fwd=https") || !strings.Contains(body, "URI=spiffe://mesh.local/svc/web") ||
				strings.Contains(body, "forged") || !strings.Contains(body, "By=spiffe://mesh.local/svc/api") {
				t.Errorf("app saw %q, want fwd=https, By=…/api and URI=…/web, nothing forged", body)
			}
		})
	}

	plain := func() (int, string) {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + in + "/")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Proxy-Status")
	}
	if code, ps := plain(); code != http.StatusBadRequest || !strings.Contains(ps, "tls_protocol_error") {
		t.Errorf("plaintext GET to strict = %d %q, want 400 tls_protocol_error", code, ps)
	}
	if err := s.Apply(parse(t, cfgText("permissive"))); err != nil {
		t.Fatalf("Apply(permissive) error = %v", err)
	}
	if code, ps := plain(); code != http.StatusOK {
		t.Errorf("plaintext GET to permissive = %d %q, want 200", code, ps)
	}

	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/certs", nil))
	var cs CertsStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &cs); err != nil {
		t.Fatalf("/certs: %v", err)
	}
	if !cs.Enabled || !cs.Valid || cs.SPIFFEID != "spiffe://mesh.local/svc/api" || len(cs.Certificates) == 0 ||
		cs.Certificates[0].Source != "dev" || cs.Certificates[0].SecondsToExpiry <= 0 {
		t.Errorf("/certs = %+v, want the api certificate from the dev source", cs)
	}
}

// TestReadyNeedsCertificate: /ready is false while no certificate is loaded.
func TestReadyNeedsCertificate(t *testing.T) {
	dir := t.TempDir()
	s := New(Options{})
	drained(t, s)
	cfg := fmt.Sprintf("service: api\nadmin: {address: %s}\ninbound: {address: %s, target: 127.0.0.1:1}\n"+
		"mtls: {cert_file: %s/api.pem, key_file: %s/api-key.pem, ca_file: %s/bundle.pem}\n", freeAddr(t), freeAddr(t), dir, dir, dir)
	if err := s.Apply(parse(t, cfg)); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if ok, why := s.Ready(); ok || !strings.Contains(why, "no valid certificate") {
		t.Errorf("Ready() = %v, %q, want false: no valid certificate", ok, why)
	}
}

// TestSimpleTLSTransportKeptAcrossReloads: a tls: simple upstream's CA file is read on
// every reload, but while its content is unchanged the upstream keeps its transport and so
// its pooled connections; new content builds a new one.
func TestSimpleTLSTransportKeptAcrossReloads(t *testing.T) {
	dir := issue(t, "api")
	caFile := filepath.Join(dir, "bundle.pem")
	out, admin := freeAddr(t), freeAddr(t)
	cfgText := func(drain string) string {
		return fmt.Sprintf("service: web\nadmin: {address: %s}\ndrain_timeout: %s\n"+
			"outbound: [{upstream: api, address: %s}]\n"+
			"upstreams: [{name: api, endpoints: [127.0.0.1:1], tls: simple, tls_ca_file: %q}]\n", admin, drain, out, caFile)
	}
	s := New(Options{})
	drained(t, s)
	transport := func() *l7.Transport {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.transports["api"]
	}
	if err := s.Apply(parse(t, cfgText("5s"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	first := transport()
	if first == nil || first.Options().TLS.RootCAs == nil {
		t.Fatalf("transport of api = %v, want one verifying with the CA file", first)
	}
	if err := s.Apply(parse(t, cfgText("6s"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if got := transport(); got != first {
		t.Errorf("after a reload with the same CA file, api's transport was rebuilt (its pooled connections lost)")
	}
	other := issue(t, "api") // another CA
	pem, err := os.ReadFile(filepath.Join(other, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(parse(t, cfgText("7s"))); err != nil {
		t.Fatalf("Apply() error = %v", err)
	}
	if got := transport(); got == first {
		t.Errorf("after the CA file changed, api's transport is the old one (verifying with the old CA)")
	}
}
