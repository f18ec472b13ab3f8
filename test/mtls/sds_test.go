package mtls

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/ferrymesh/ferry/mtls"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// sdsSecrets are the secrets an SDS server serves for the web and api sidecars, under
// SPIRE's names: each certificate by its SPIFFE ID, the bundle by the trust domain's.
func sdsSecrets(t *testing.T, web, api ferrytest.Certs) []*tlsv3.Secret {
	t.Helper()
	webChain, webKey, ca := web.ReadSecretFiles(t)
	apiChain, apiKey, _ := api.ReadSecretFiles(t)
	return []*tlsv3.Secret{
		ferrytest.CertSecret("spiffe://mesh.local/svc/web", webChain, webKey),
		ferrytest.CertSecret("spiffe://mesh.local/svc/api", apiChain, apiKey),
		ferrytest.CASecret("spiffe://mesh.local", ca),
	}
}

// sdsBlock is the mtls block of a sidecar of service that gets its certificates from srv.
func sdsBlock(srv *ferrytest.SDSServer, service string) string {
	return fmt.Sprintf("mtls: {mode: strict, source: sds, sds: {address: %q, cert_name: \"spiffe://mesh.local/svc/%s\", validation_name: \"spiffe://mesh.local\"}}\n",
		srv.Address, service)
}

// TestSDSMesh: two sidecars get their certificates from a real SDS server (go-control-plane's
// server and snapshot cache, on a Unix socket), each asking for its own. The server-side
// sidecar is not ready until its certificate arrives; then a request through both reaches
// the app, which sees the caller's SPIFFE ID. A new snapshot rotates both certificates
// under a bounded load without a failed request, and /certs shows the new serials.
func TestSDSMesh(t *testing.T) {
	p := ferrytest.NewPKI(t)
	srv := ferrytest.StartSDS(t, "unix")
	a := startApp(t, nil)
	inbound, outbound := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	serverAdmin, clientAdmin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)

	server := launchFerry(t, serverAdmin, fmt.Sprintf("service: api\nadmin: {address: %s}\ninbound: {address: %s, target: %s}\n"+
		"telemetry: {access_log: stdout}\n%s", serverAdmin, inbound, a.addr, sdsBlock(srv, "api")))
	c := newClient(t)
	eventually(t, "/ready to answer 503 naming the certificate before the SDS server has one", func() bool {
		code, body, _ := get(c, server.AdminURL("/ready"), nil)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "certificate")
	})

	web, api := p.Issue("web"), p.Issue("api")
	v1 := srv.SetSecrets(t, sdsSecrets(t, web, api)...)
	server.WaitReady()
	client := startFerry(t, clientAdmin, fmt.Sprintf("service: web\nadmin: {address: %s}\noutbound: [{upstream: api, address: %s}]\n"+
		"upstreams: [{name: api, endpoints: [%s], idle_timeout: 200ms}]\n%s", clientAdmin, outbound, inbound, sdsBlock(srv, "web")))

	url := "http://" + outbound + "/sds"
	code, body, ps := get(c, url, nil)
	if code != http.StatusOK {
		t.Fatalf("GET through both sidecars = %d %q (Proxy-Status %q), want 200", code, body, ps)
	}
	xfcc, _ := a.seen()
	if len(xfcc) != 1 {
		t.Fatalf("app saw X-Forwarded-Client-Cert %q, want one value", xfcc)
	}
	elems, err := mtls.ParseXFCC(xfcc[0])
	if err != nil || len(elems) != 1 || elems[0].URI != "spiffe://mesh.local/svc/web" || elems[0].Hash != web.SHA256 {
		t.Fatalf("app saw X-Forwarded-Client-Cert %q (%v, %v), want URI spiffe://mesh.local/svc/web and the web certificate's hash", xfcc[0], elems, err)
	}

	// Each sidecar said who it is and asked for its own certificate, and acknowledged v1.
	for _, svc := range []string{"web", "api"} {
		id := "spiffe://mesh.local/svc/" + svc
		found := false
		for _, r := range srv.Requests() {
			if r.GetNode().GetId() == id {
				found = true
				if r.GetNode().GetCluster() != svc || strings.Join(r.GetResourceNames(), ",") != id+",spiffe://mesh.local" {
					t.Errorf("%s's first request: node.cluster %q, resource_names %q; want %q and [%s spiffe://mesh.local]",
						svc, r.GetNode().GetCluster(), r.GetResourceNames(), svc, id)
				}
				break
			}
		}
		if !found {
			t.Errorf("the SDS server saw no request from node %s", id)
		}
	}
	if !srv.ACKed(v1) {
		t.Errorf("the SDS server saw no ACK of %s", v1)
	}

	for _, tc := range []struct {
		f      *ferry
		id     string
		serial string
	}{{server, "spiffe://mesh.local/svc/api", api.Serial}, {client, "spiffe://mesh.local/svc/web", web.Serial}} {
		cs := tc.f.certs()
		if !cs.Enabled || !cs.Valid || cs.SPIFFEID != tc.id || leafSerial(cs) != tc.serial || cs.Certificates[0].Source != "sds" {
			t.Errorf("/certs = %+v, want valid %s, leaf serial %s from source sds", cs, tc.id, tc.serial)
		}
	}
	if !hasMetricLine(client.get("/metrics"), "ferry_mtls_certificate_expiry_seconds{", `source="sds"`, `role="leaf"`) {
		t.Errorf("/metrics has no ferry_mtls_certificate_expiry_seconds line for the sds leaf")
	}

	// 300 requests over about 3 s; halfway, a new snapshot rotates both certificates.
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	tick := time.NewTicker(10 * time.Millisecond)
	var newWeb, newAPI ferrytest.Certs
	var v2 string
	for i := range 300 {
		<-tick.C
		if i == 150 {
			newWeb, newAPI = p.IssueAt(t.TempDir(), "web", time.Time{}, time.Hour), p.IssueAt(t.TempDir(), "api", time.Time{}, time.Hour)
			v2 = srv.SetSecrets(t, sdsSecrets(t, newWeb, newAPI)...)
		}
		wg.Go(func() {
			code, body, ps := get(c, url, nil)
			if code == http.StatusOK {
				ok.Add(1)
				return
			}
			failed.Add(1)
			mu.Lock()
			if len(failures) < 5 {
				failures = append(failures, fmt.Sprintf("%d %q %s", code, strings.TrimSpace(body), ps))
			}
			mu.Unlock()
		})
	}
	tick.Stop()
	wg.Wait()
	if failed.Load() != 0 || ok.Load() != 300 {
		t.Fatalf("load during rotation: %d ok, %d failed (%q), want 300 ok", ok.Load(), failed.Load(), failures)
	}
	eventually(t, "both sidecars to show the new certificates in /certs", func() bool {
		return leafSerial(server.certs()) == newAPI.Serial && leafSerial(client.certs()) == newWeb.Serial
	})
	if !srv.ACKed(v2) {
		t.Errorf("the SDS server saw no ACK of %s", v2)
	}

	// New handshakes present the new certificates: the server-side sidecar's to a
	// hand-made client, the client-side sidecar's (its idle connections expire after
	// 200ms) to the app, which sees its hash.
	if got := presentedSerial(t, inbound, newWeb); got != newAPI.Serial {
		t.Errorf("server presented serial %s after rotation, want %s", got, newAPI.Serial)
	}
	eventually(t, "the app to see the client's new certificate", func() bool {
		time.Sleep(300 * time.Millisecond)
		if code, _, _ := get(c, url, nil); code != http.StatusOK {
			return false
		}
		xfcc, _ := a.seen()
		return len(xfcc) == 1 && strings.Contains(xfcc[0], "Hash="+newWeb.SHA256)
	})
}

// TestSDSRejectsBadSecretAndSurvivesRestart: a certificate from another CA is NACKed and
// the sidecar keeps serving with its previous one; while the SDS server is down the
// sidecar stays ready on its current certificate, and it takes the new one once the
// server is back.
func TestSDSRejectsBadSecretAndSurvivesRestart(t *testing.T) {
	p := ferrytest.NewPKI(t)
	srv := ferrytest.StartSDS(t, "tcp")
	a := startApp(t, nil)
	inbound, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	api := p.Issue("api")
	srv.SetSecrets(t, sdsSecrets(t, p.Issue("web"), api)...)
	f := startFerry(t, admin, fmt.Sprintf("service: api\nadmin: {address: %s}\ninbound: {address: %s, target: %s}\n%s",
		admin, inbound, a.addr, sdsBlock(srv, "api")))
	c := newClient(t)

	bad := ferrytest.NewPKI(t).Issue("api")
	badSecrets := sdsSecrets(t, p.Issue("web"), bad)
	srv.SetSecrets(t, badSecrets[1], badSecrets[2])
	eventually(t, "a NACK of the other CA's certificate", func() bool {
		for _, r := range srv.NACKs() {
			if strings.Contains(r.GetErrorDetail().GetMessage(), "does not verify") {
				return true
			}
		}
		return false
	})
	if cs := f.certs(); leafSerial(cs) != api.Serial || !cs.Valid {
		t.Errorf("/certs after a NACK = %+v, want the previous certificate %s", cs, api.Serial)
	}

	srv.Stop()
	time.Sleep(500 * time.Millisecond)
	if code, body, _ := get(c, f.AdminURL("/ready"), nil); code != http.StatusOK {
		t.Errorf("/ready while the SDS server is down = %d %q, want 200 on the current certificate", code, body)
	}
	newAPI := p.Issue("api")
	srv.SetSecrets(t, sdsSecrets(t, p.Issue("web"), newAPI)...)
	srv.Start(t)
	eventually(t, "the sidecar to take the new certificate once the SDS server is back", func() bool {
		return leafSerial(f.certs()) == newAPI.Serial
	})
}

// TestSDSReload: a reload that changes the sds block starts a new SDS stream for the new
// secret names and closes the old one; one that leaves it alone keeps the stream.
func TestSDSReload(t *testing.T) {
	p := ferrytest.NewPKI(t)
	srv := ferrytest.StartSDS(t, "unix")
	a := startApp(t, nil)
	web, api := p.Issue("web"), p.Issue("api")
	apiDefault := p.IssueAt(t.TempDir(), "api", time.Time{}, time.Hour)
	chain, key, _ := apiDefault.ReadSecretFiles(t)
	srv.SetSecrets(t, append(sdsSecrets(t, web, api), ferrytest.CertSecret("default", chain, key))...)

	inbound, admin := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	config := func(mtlsBlock string) string {
		return fmt.Sprintf("service: api\nadmin: {address: %s}\ndrain_timeout: 1s\ninbound: {address: %s, target: %s}\n%s",
			admin, inbound, a.addr, mtlsBlock)
	}
	file := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", config(sdsBlock(srv, "api")))
	f := &ferry{Process: ferrytest.StartWith(t, ferrytest.Options{Grace: 10 * time.Second, Name: admin}, ferryBin, file, admin), t: t}
	f.WaitReady()
	if got := leafSerial(f.certs()); got != api.Serial {
		t.Fatalf("/certs serial = %s, want %s", got, api.Serial)
	}

	// Same sds block, another key: the stream stays.
	requests := len(srv.Requests())
	v1 := configVersion(f)
	ferrytest.WriteFile(t, filepath.Dir(file), "ferry.yaml", config(sdsBlock(srv, "api"))+"telemetry: {access_log: stdout}\n")
	f.Signal(syscall.SIGHUP)
	eventually(t, "the reload to apply", func() bool { return configVersion(f) != v1 })
	if dump := f.get("/config_dump"); !strings.Contains(dump, `"cert_name": "spiffe://mesh.local/svc/api"`) {
		t.Errorf("/config_dump has no sds cert_name:\n%s", dump)
	}
	if n := srv.OpenStreams(); n != 1 {
		t.Errorf("OpenStreams() after a reload without sds changes = %d, want 1", n)
	}
	if got := len(srv.Requests()); got != requests {
		t.Errorf("the SDS server got %d more requests after a reload without sds changes, want 0", got-requests)
	}

	// cert_name changes: a new stream asks for "default"; the old one is closed after the
	// drain timeout.
	ferrytest.WriteFile(t, filepath.Dir(file), "ferry.yaml",
		config(fmt.Sprintf("mtls: {source: sds, sds: {address: %q, validation_name: \"spiffe://mesh.local\"}}\n", srv.Address)))
	f.Signal(syscall.SIGHUP)
	eventually(t, "/certs to show the certificate of secret default", func() bool { return leafSerial(f.certs()) == apiDefault.Serial })
	eventually(t, "the old SDS stream to close", func() bool { return srv.OpenStreams() == 1 })
}

// configVersion is the version of the config f runs, from /config_dump.
func configVersion(f *ferry) string {
	var d struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal([]byte(f.get("/config_dump")), &d); err != nil {
		f.t.Fatalf("/config_dump: %v", err)
	}
	return d.Version
}

// hasMetricLine reports whether a line of the Prometheus text exposition starts with
// prefix and contains every one of labels.
func hasMetricLine(text, prefix string, labels ...string) bool {
	for line := range strings.SplitSeq(text, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(line, l)
		}
		if all {
			return true
		}
	}
	return false
}
