package mtls_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/test/ferrytest"
)

// sdsWait bounds every wait for the SDS client in these tests.
const sdsWait = 10 * time.Second

var sdsTD = spiffeid.RequireTrustDomainFromString("mesh.local")

// sdsCA is a CA valid from three hours ago (so that it can issue expired certificates)
// for a day.
func sdsCA(t *testing.T, td spiffeid.TrustDomain) *mtls.CA {
	t.Helper()
	ca, err := mtls.NewCA(td, 24*time.Hour, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatalf("NewCA() error = %v", err)
	}
	return ca
}

// sdsIssue issues a certificate for service, valid from now for an hour.
func sdsIssue(t *testing.T, ca *mtls.CA, service string) *x509svid.SVID {
	t.Helper()
	return sdsIssueAt(t, ca, service, time.Now())
}

func sdsIssueAt(t *testing.T, ca *mtls.CA, service string, now time.Time) *x509svid.SVID {
	t.Helper()
	id, err := mtls.ServiceID(ca.TrustDomain(), service)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(mtls.IssueRequest{ID: id, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatalf("Issue(%s) error = %v", id, err)
	}
	return svid
}

// certSecret is the TLS certificate secret name holding svid.
func certSecret(t *testing.T, name string, svid *x509svid.SVID) *tlsv3.Secret {
	t.Helper()
	chain, key, err := svid.Marshal()
	if err != nil {
		t.Fatalf("Marshal() error = %v", err)
	}
	return ferrytest.CertSecret(name, chain, key)
}

// caPEM is the PEM bundle of ca.
func caPEM(t *testing.T, ca *mtls.CA) []byte {
	t.Helper()
	b, err := ca.Bundle(ca.TrustDomain()).Marshal()
	if err != nil {
		t.Fatalf("Bundle.Marshal() error = %v", err)
	}
	return b
}

// bundleMapSecret is a validation context secret holding a SPIFFE validator configuration
// whose trust_bundles is a file: a SPIFFE bundle map with the bundles of cas.
func bundleMapSecret(t *testing.T, name string, cas ...*mtls.CA) *tlsv3.Secret {
	t.Helper()
	doc := map[string]map[string]json.RawMessage{"trust_domains": {}}
	for _, ca := range cas {
		b, err := spiffebundle.FromX509Authorities(ca.TrustDomain(), []*x509.Certificate{ca.Certificate()}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		doc["trust_domains"][ca.TrustDomain().Name()] = b
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	file := ferrytest.WriteFile(t, t.TempDir(), "bundles.json", string(raw))
	typed, err := anypb.New(&tlsv3.SPIFFECertValidatorConfig{
		TrustBundles: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: file}}})
	if err != nil {
		t.Fatal(err)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: typed}}}}
}

// newSDS starts an SDS source for srv with short retry delays, closed when the test ends.
func newSDS(t *testing.T, srv *ferrytest.SDSServer, mod func(*mtls.SDSOptions)) *mtls.SDSSource {
	t.Helper()
	o := mtls.SDSOptions{Address: srv.Address, NodeID: "spiffe://mesh.local/svc/web", NodeCluster: "web",
		TrustDomain: sdsTD, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	s, err := mtls.NewSDSSource(o)
	if err != nil {
		t.Fatalf("NewSDSSource() error = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitSerial waits for src's material to have the serial of svid.
func waitSerial(t *testing.T, src mtls.Source, svid *x509svid.SVID) *mtls.Material {
	t.Helper()
	want := mtls.FormatSerial(svid.Certificates[0].SerialNumber)
	var m *mtls.Material
	ferrytest.Eventually(t, sdsWait, func() bool {
		cur, err := src.Current()
		if err == nil && mtls.FormatSerial(cur.Leaf().SerialNumber) == want {
			m = cur
			return true
		}
		return false
	}, func() string {
		cur, err := src.Current()
		if err != nil {
			return "Current() error = " + err.Error() + ", want serial " + want
		}
		return "Current() serial = " + mtls.FormatSerial(cur.Leaf().SerialNumber) + ", want " + want + "; status " + src.Status().LastError
	})
	return m
}

func waitACK(t *testing.T, srv *ferrytest.SDSServer, version string) {
	t.Helper()
	ferrytest.Eventually(t, sdsWait, func() bool { return srv.ACKed(version) },
		func() string { return "the server saw no ACK of " + version })
}

func TestSDSSourceFirstMaterial(t *testing.T) {
	ca := sdsCA(t, sdsTD)
	other := sdsCA(t, spiffeid.RequireTrustDomainFromString("other.org"))
	tests := []struct {
		name      string
		network   string
		certName  string
		validName string
		valid     func(name string) *tlsv3.Secret
		cert      func(name string, svid *x509svid.SVID) *tlsv3.Secret // default: inline bytes
	}{
		{name: "unix socket, Istio's names, trusted_ca", network: "unix",
			valid: func(name string) *tlsv3.Secret { return ferrytest.CASecret(name, caPEM(t, ca)) }},
		{name: "loopback TCP, trusted_ca", network: "tcp",
			valid: func(name string) *tlsv3.Secret { return ferrytest.CASecret(name, caPEM(t, ca)) }},
		{name: "SPIRE's names, SPIFFE validator with two trust domains", network: "unix",
			certName: "spiffe://mesh.local/svc/web", validName: "ALL",
			valid: func(name string) *tlsv3.Secret {
				return ferrytest.SPIFFEValidatorSecret(t, name, map[string][]byte{"other.org": caPEM(t, other), "mesh.local": caPEM(t, ca)})
			}},
		{name: "SPIFFE validator with a trust_bundles map in a file, certificate as inline strings", network: "tcp",
			valid: func(name string) *tlsv3.Secret { return bundleMapSecret(t, name, ca, other) },
			cert: func(name string, svid *x509svid.SVID) *tlsv3.Secret {
				chain, key, err := svid.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(chain)}},
					PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(key)}},
				}}}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := ferrytest.StartSDS(t, tc.network)
			certName, validName := tc.certName, tc.validName
			if certName == "" {
				certName, validName = mtls.DefaultSDSCertName, mtls.DefaultSDSValidationName
			}
			svid := sdsIssue(t, ca, "web")
			cert := certSecret(t, certName, svid)
			if tc.cert != nil {
				cert = tc.cert(certName, svid)
			}
			v := srv.SetSecrets(t, cert, tc.valid(validName),
				certSecret(t, "unrelated", sdsIssue(t, ca, "api")))
			src := newSDS(t, srv, func(o *mtls.SDSOptions) { o.CertName, o.ValidationName = tc.certName, tc.validName })

			ctx, cancel := context.WithTimeout(context.Background(), sdsWait)
			defer cancel()
			m, err := mtls.Wait(ctx, src)
			if err != nil {
				t.Fatalf("Wait() error = %v", err)
			}
			if got, want := m.ID().String(), "spiffe://mesh.local/svc/web"; got != want {
				t.Errorf("ID() = %s, want %s", got, want)
			}
			if got, want := m.NotAfter(), svid.Certificates[0].NotAfter; !got.Equal(want) {
				t.Errorf("NotAfter() = %v, want %v", got, want)
			}
			if got := m.Source(); got != "sds" {
				t.Errorf("Source() = %q, want sds", got)
			}
			if got := len(m.Bundles()); got != 1 {
				t.Errorf("len(Bundles()) = %d, want 1 (this trust domain's)", got)
			}
			waitACK(t, srv, v)
			st := src.Status()
			if st.Source != "sds" || st.Updates != 1 || st.Failures != 0 {
				t.Errorf("Status() = %+v, want source sds, 1 update, 0 failures", st)
			}
			first := srv.Requests()[0]
			if got, want := first.GetNode().GetId(), "spiffe://mesh.local/svc/web"; got != want {
				t.Errorf("node.id = %q, want %q", got, want)
			}
			if got, want := first.GetNode().GetCluster(), "web"; got != want {
				t.Errorf("node.cluster = %q, want %q", got, want)
			}
			if got, want := strings.Join(first.GetResourceNames(), ","), certName+","+validName; got != want {
				t.Errorf("resource_names = %q, want %q", got, want)
			}
			if n := srv.OpenStreams(); n != 1 {
				t.Errorf("OpenStreams() = %d, want 1", n)
			}
			if err := src.Close(); err != nil {
				t.Errorf("Close() error = %v", err)
			}
			ferrytest.Eventually(t, sdsWait, func() bool { return srv.OpenStreams() == 0 },
				func() string { return "the stream is still open after Close()" })
			if _, err := src.Current(); err != nil {
				t.Errorf("Current() after Close() = %v, want the material kept", err)
			}
			if got, want := first.GetTypeUrl(), "type.googleapis.com/"+string((&tlsv3.Secret{}).ProtoReflect().Descriptor().FullName()); got != want || got != mtls.SDSTypeURL {
				t.Errorf("type_url = %q, want %q", got, want)
			}
		})
	}
}

func TestSDSSourceRotation(t *testing.T) {
	ca := sdsCA(t, sdsTD)
	srv := ferrytest.StartSDS(t, "unix")
	first := sdsIssue(t, ca, "web")
	srv.SetSecrets(t, certSecret(t, "default", first), ferrytest.CASecret("ROOTCA", caPEM(t, ca)))
	src := newSDS(t, srv, nil)
	waitSerial(t, src, first)

	// A new CA whose bundle carries both roots, and a certificate from it: the shape of a
	// CA rotation.
	ca2 := sdsCA(t, sdsTD)
	second := sdsIssue(t, ca2, "web")
	changed := src.Changed()
	v2 := srv.SetSecrets(t, certSecret(t, "default", second),
		ferrytest.CASecret("ROOTCA", append(caPEM(t, ca), caPEM(t, ca2)...)))
	select {
	case <-changed:
	case <-time.After(sdsWait):
		t.Fatal("Changed() did not fire after a new snapshot")
	}
	m := waitSerial(t, src, second)
	if got, old := mtls.FormatSerial(m.Leaf().SerialNumber), mtls.FormatSerial(first.Certificates[0].SerialNumber); got == old {
		t.Errorf("serial after rotation = %s, want a new one", got)
	}
	if got := len(m.Bundles()[0].X509Authorities()); got != 2 {
		t.Errorf("authorities after rotation = %d, want 2", got)
	}
	waitACK(t, srv, v2)
	if st := src.Status(); st.Updates != 2 {
		t.Errorf("Status().Updates = %d, want 2", st.Updates)
	}
}

func TestSDSSourceRejectsInvalidSecrets(t *testing.T) {
	ca := sdsCA(t, sdsTD)
	otherCA := sdsCA(t, sdsTD)
	otherTD := sdsCA(t, spiffeid.RequireTrustDomainFromString("other.org"))
	bundle := ferrytest.CASecret("ROOTCA", caPEM(t, ca))
	tests := []struct {
		name    string
		secrets func() []*tlsv3.Secret
		want    string // in error_detail
	}{
		{
			name: "key not matching the certificate",
			secrets: func() []*tlsv3.Secret {
				a, b := sdsIssue(t, ca, "web"), sdsIssue(t, ca, "web")
				chain, _, _ := a.Marshal()
				_, key, _ := b.Marshal()
				return []*tlsv3.Secret{ferrytest.CertSecret("default", chain, key), bundle}
			},
			want: "private key does not match public key",
		},
		{
			name: "certificate of another CA",
			secrets: func() []*tlsv3.Secret {
				return []*tlsv3.Secret{certSecret(t, "default", sdsIssue(t, otherCA, "web")), bundle}
			},
			want: "does not verify against its trust bundle",
		},
		{
			name: "certificate of another trust domain",
			secrets: func() []*tlsv3.Secret {
				return []*tlsv3.Secret{certSecret(t, "default", sdsIssue(t, otherTD, "web")),
					ferrytest.CASecret("ROOTCA", caPEM(t, otherTD))}
			},
			want: `not in trust domain "mesh.local"`,
		},
		{
			name: "expired certificate",
			secrets: func() []*tlsv3.Secret {
				return []*tlsv3.Secret{certSecret(t, "default", sdsIssueAt(t, ca, "web", time.Now().Add(-2*time.Hour))), bundle}
			},
			want: "expired",
		},
		{
			name: "bad PEM",
			secrets: func() []*tlsv3.Secret {
				return []*tlsv3.Secret{ferrytest.CertSecret("default", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), []byte("junk")), bundle}
			},
			want: "certificate and key",
		},
		{
			name: "validation context of the wrong kind",
			secrets: func() []*tlsv3.Secret {
				return []*tlsv3.Secret{certSecret(t, "default", sdsIssue(t, ca, "web")), certSecret(t, "ROOTCA", sdsIssue(t, ca, "web"))}
			},
			want: `secret "ROOTCA": not a validation_context secret`,
		},
		{
			name: "SPIFFE validator without this trust domain",
			secrets: func() []*tlsv3.Secret {
				return []*tlsv3.Secret{certSecret(t, "default", sdsIssue(t, ca, "web")),
					ferrytest.SPIFFEValidatorSecret(t, "ROOTCA", map[string][]byte{"other.org": caPEM(t, otherTD)})}
			},
			want: `no bundle for trust domain "mesh.local"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := ferrytest.StartSDS(t, "unix")
			good := sdsIssue(t, ca, "web")
			v1 := srv.SetSecrets(t, certSecret(t, "default", good), bundle)
			src := newSDS(t, srv, nil)
			waitSerial(t, src, good)
			waitACK(t, srv, v1)

			v2 := srv.SetSecrets(t, tc.secrets()...)
			ferrytest.Eventually(t, sdsWait, func() bool { return len(srv.NACKs()) > 0 },
				func() string { return "the server saw no NACK of " + v2 })
			nack := srv.NACKs()[0]
			if got := nack.GetVersionInfo(); got != v1 {
				t.Errorf("NACK version_info = %q, want the previous version %q", got, v1)
			}
			if got := nack.GetErrorDetail().GetMessage(); !strings.Contains(got, tc.want) {
				t.Errorf("NACK error_detail = %q, want it to contain %q", got, tc.want)
			}
			if nack.GetResponseNonce() == "" {
				t.Error("NACK response_nonce is empty, want the rejected response's")
			}
			if srv.ACKed(v2) {
				t.Errorf("the client ACKed %s, want only NACKs", v2)
			}
			m, err := src.Current()
			if err != nil || !m.Leaf().Equal(good.Certificates[0]) {
				t.Errorf("Current() after a NACK = %v, %v; want the previous certificate kept", m, err)
			}
			st := src.Status()
			if st.Failures == 0 || !strings.Contains(st.LastError, tc.want) {
				t.Errorf("Status() = %+v, want a failure with %q", st, tc.want)
			}
			// The snapshot cache answers a NACK with the bad version again: the client
			// keeps rejecting it, without counting it again or spinning.
			time.Sleep(300 * time.Millisecond)
			if n := len(srv.NACKs()); n > 20 {
				t.Errorf("%d NACKs in 300ms, want them paced", n)
			}
			if got := src.Status().Failures; got != st.Failures {
				t.Errorf("Status().Failures = %d after repeated NACKs of one response, want %d", got, st.Failures)
			}

			// A good version afterwards is taken.
			fixed := sdsIssue(t, ca, "web")
			v3 := srv.SetSecrets(t, certSecret(t, "default", fixed), bundle)
			waitSerial(t, src, fixed)
			waitACK(t, srv, v3)
		})
	}
}

func TestSDSSourceServerDown(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			ca := sdsCA(t, sdsTD)
			srv := ferrytest.StartSDS(t, network)
			first := sdsIssue(t, ca, "web")
			srv.SetSecrets(t, certSecret(t, "default", first), ferrytest.CASecret("ROOTCA", caPEM(t, ca)))
			src := newSDS(t, srv, nil)
			waitSerial(t, src, first)

			srv.Stop()
			ferrytest.Eventually(t, sdsWait, func() bool { return src.Status().Failures >= 3 },
				func() string { return "Status().Failures did not grow while the server is down" })
			if m, err := src.Current(); err != nil || !m.Leaf().Equal(first.Certificates[0]) {
				t.Errorf("Current() while the server is down = %v, %v; want the certificate kept", m, err)
			}
			if st := src.Status(); st.LastError == "" {
				t.Errorf("Status().LastError is empty while the server is down")
			}

			second := sdsIssue(t, ca, "web")
			v2 := srv.SetSecrets(t, certSecret(t, "default", second), ferrytest.CASecret("ROOTCA", caPEM(t, ca)))
			srv.Start(t)
			waitSerial(t, src, second)
			waitACK(t, srv, v2)
			if st := src.Status(); st.LastError != "" {
				t.Errorf("Status().LastError = %q after catching up, want it cleared", st.LastError)
			}
		})
	}
}

func TestSDSSourceNoServer(t *testing.T) {
	srv := ferrytest.StartSDS(t, "unix")
	srv.Stop()
	src := newSDS(t, srv, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := mtls.Wait(ctx, src); !errors.Is(err, mtls.ErrNoCertificate) {
		t.Errorf("Wait() error = %v, want ErrNoCertificate", err)
	}
	if st := src.Status(); st.Failures == 0 || !strings.Contains(st.LastError, "sds stream to "+srv.Address) {
		t.Errorf("Status() = %+v, want failures naming the address", st)
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close() error = %v", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close() error = %v", err)
	}
	n := src.Status().Failures
	time.Sleep(100 * time.Millisecond)
	if got := src.Status().Failures; got != n {
		t.Errorf("Status().Failures = %d after Close, want %d (no more attempts)", got, n)
	}
}

func TestSDSSourceSecretsInSeparateResponses(t *testing.T) {
	ca := sdsCA(t, sdsTD)
	srv := ferrytest.StartSDS(t, "tcp")
	svid := sdsIssue(t, ca, "web")
	v1 := srv.SetSecrets(t, certSecret(t, "default", svid))
	src := newSDS(t, srv, nil)
	waitACK(t, srv, v1)
	if _, err := src.Current(); !errors.Is(err, mtls.ErrNoCertificate) {
		t.Errorf("Current() with the certificate only = %v, want ErrNoCertificate", err)
	}
	srv.SetSecrets(t, certSecret(t, "default", svid), ferrytest.CASecret("ROOTCA", caPEM(t, ca)))
	waitSerial(t, src, svid)
}

func TestSDSSourceCertNameMismatch(t *testing.T) {
	ca := sdsCA(t, sdsTD)
	srv := ferrytest.StartSDS(t, "unix")
	const name = "spiffe://mesh.local/svc/web"
	srv.SetSecrets(t, certSecret(t, name, sdsIssue(t, ca, "api")), ferrytest.CASecret("ROOTCA", caPEM(t, ca)))
	src := newSDS(t, srv, func(o *mtls.SDSOptions) { o.CertName = name })
	ferrytest.Eventually(t, sdsWait, func() bool { return len(srv.NACKs()) > 0 }, func() string { return "no NACK" })
	if got, want := srv.NACKs()[0].GetErrorDetail().GetMessage(), "holds a certificate for spiffe://mesh.local/svc/api"; !strings.Contains(got, want) {
		t.Errorf("NACK error_detail = %q, want %q", got, want)
	}
	if _, err := src.Current(); !errors.Is(err, mtls.ErrNoCertificate) {
		t.Errorf("Current() = %v, want ErrNoCertificate", err)
	}
}

func TestNewSDSSourceErrors(t *testing.T) {
	tests := []struct {
		name string
		opts mtls.SDSOptions
		want string
	}{
		{name: "no address", opts: mtls.SDSOptions{TrustDomain: sdsTD}, want: "empty SDS address"},
		{name: "no trust domain", opts: mtls.SDSOptions{Address: "unix:///tmp/x.sock"}, want: "needs a trust domain"},
		{name: "same names", opts: mtls.SDSOptions{Address: "127.0.0.1:1", TrustDomain: sdsTD, CertName: "x", ValidationName: "x"},
			want: "one secret cannot hold both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := mtls.NewSDSSource(tc.opts)
			if err == nil {
				_ = s.Close()
				t.Fatalf("NewSDSSource() error = nil, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewSDSSource() error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseSDSAddress(t *testing.T) {
	tests := []struct {
		addr   string
		target string
		local  bool
		err    string
	}{
		{addr: "unix:///run/spire/agent.sock", target: "unix:///run/spire/agent.sock", local: true},
		{addr: "127.0.0.1:8234", target: "dns:///127.0.0.1:8234", local: true},
		{addr: "[::1]:8234", target: "dns:///[::1]:8234", local: true},
		{addr: "localhost:8234", target: "dns:///localhost:8234", local: true},
		{addr: "10.0.0.5:8234", target: "dns:///10.0.0.5:8234", local: false},
		{addr: "sds.example:8234", target: "dns:///sds.example:8234", local: false},
		{addr: "", err: "empty SDS address"},
		{addr: "unix:relative.sock", err: "want unix:///absolute/path"},
		{addr: "unix://", err: "want unix:///absolute/path"},
		{addr: "unix:///", err: "want unix:///absolute/path"},
		{addr: "http://127.0.0.1:8234", err: "want unix:///path or host:port"},
		{addr: "127.0.0.1", err: "missing port"},
		{addr: ":8234", err: "no host"},
		{addr: "127.0.0.1:0", err: "bad port"},
		{addr: "127.0.0.1:99999", err: "bad port"},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			target, local, err := mtls.ParseSDSAddress(tc.addr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("ParseSDSAddress(%q) error = %v, want %q", tc.addr, err, tc.err)
				}
				return
			}
			if err != nil || target != tc.target || local != tc.local {
				t.Errorf("ParseSDSAddress(%q) = %q, %v, %v; want %q, %v, nil", tc.addr, target, local, err, tc.target, tc.local)
			}
		})
	}
}
