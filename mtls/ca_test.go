package mtls

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestCAWriteLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newTestCA(t, testTD)
	if err := ca.Write(dir, false); err != nil {
		t.Fatalf("Write() error = %v", err)
	}
	for name, want := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %o, want %o", name, got, want)
		}
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA() error = %v", err)
	}
	if loaded.TrustDomain() != testTD {
		t.Errorf("LoadCA().TrustDomain() = %q, want %q", loaded.TrustDomain(), testTD)
	}
	if !loaded.Certificate().Equal(ca.Certificate()) {
		t.Error("LoadCA() certificate differs from the one written")
	}
	c := loaded.Certificate()
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 || c.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("CA certificate: IsCA=%v KeyUsage=%v alg=%v, want an ECDSA CA with CertSign", c.IsCA, c.KeyUsage, c.PublicKeyAlgorithm)
	}

	// Refuses to overwrite, for either file, unless forced.
	if err := newTestCA(t, testTD).Write(dir, false); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Write() over an existing CA error = %v, want 'already exists'", err)
	}
	if again, _ := LoadCA(dir); !again.Certificate().Equal(ca.Certificate()) {
		t.Error("refused Write() changed the CA on disk")
	}
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if err := newTestCA(t, testTD).Write(dir, false); err == nil {
		t.Error("Write() with only ca-key.pem present error = nil, want a refusal")
	}
	other := newTestCA(t, testTD)
	if err := other.Write(dir, true); err != nil {
		t.Fatalf("Write(force) error = %v", err)
	}
	if again, _ := LoadCA(dir); !again.Certificate().Equal(other.Certificate()) {
		t.Error("Write(force) did not replace the CA")
	}
}

func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCA(dir); err == nil {
		t.Error("LoadCA(empty dir) error = nil, want one")
	}
	// A leaf certificate is not a CA.
	ca := newTestCA(t, testTD)
	if _, err := WriteSVID(dir, "api", issueSVID(t, ca, "api"), ca.Bundle(spiffeid.TrustDomain{})); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "api.pem"), filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "api-key.pem"), filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("LoadCA(leaf) error = %v, want 'not a CA'", err)
	}
	// Mismatched key.
	if err := ca.Write(dir, true); err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	if err := newTestCA(t, testTD).Write(otherDir, false); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(otherDir, CAKeyFile))
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil {
		t.Error("LoadCA(mismatched key) error = nil, want one")
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, testTD)
	id := svcID(t, testTD, "api")
	svid, err := ca.Issue(IssueRequest{ID: id, TTL: 2 * time.Hour, DNSNames: []string{"api.local", "localhost"}})
	if err != nil {
		t.Fatalf("Issue() error = %v", err)
	}
	leaf := svid.Certificates[0]
	if svid.ID != id {
		t.Errorf("SVID ID = %s, want %s", svid.ID, id)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URI SANs = %v, want [%s]", leaf.URIs, id)
	}
	if !slices.Equal(leaf.DNSNames, []string{"api.local", "localhost"}) {
		t.Errorf("DNS SANs = %v, want [api.local localhost]", leaf.DNSNames)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want DigitalSignature only", leaf.KeyUsage)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want server and client auth", leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("leaf IsCA = true")
	}
	if leaf.Subject.CommonName != "api" {
		t.Errorf("Subject CN = %q, want api", leaf.Subject.CommonName)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life != 2*time.Hour+backdate {
		t.Errorf("lifetime = %s, want 2h1m (1m backdated)", life)
	}
	// go-spiffe accepts it against the CA's bundle, and only against it.
	gotID, _, err := x509svid.Verify(svid.Certificates, ca.Bundle(spiffeid.TrustDomain{}))
	if err != nil || gotID != id {
		t.Errorf("x509svid.Verify() = %s, %v, want %s", gotID, err, id)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, newTestCA(t, testTD).Bundle(spiffeid.TrustDomain{})); err == nil {
		t.Error("x509svid.Verify() against another CA error = nil, want one")
	}

	// A serial is never reused.
	again := issueSVID(t, ca, "api")
	if again.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two issued certificates share a serial number")
	}
}

func TestIssueErrors(t *testing.T) {
	ca := newTestCA(t, testTD)
	tests := []struct {
		name    string
		req     IssueRequest
		wantErr string
	}{
		{"other trust domain", IssueRequest{ID: spiffeid.RequireFromString("spiffe://other.org/svc/api")}, "trust domain"},
		{"no path", IssueRequest{ID: testTD.ID()}, "with a path"},
		{"zero id", IssueRequest{}, "with a path"},
		{"negative ttl", IssueRequest{ID: svcID(t, testTD, "api"), TTL: -time.Hour}, "positive"},
		{"after CA expiry", IssueRequest{ID: svcID(t, testTD, "api"), Now: time.Now().Add(2 * DefaultCATTL)}, "CA expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Issue(tt.req)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Issue() error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestIssueCappedAtCAExpiry(t *testing.T) {
	now := time.Now()
	ca, err := NewCA(testTD, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	svid := issueAt(t, ca, svcID(t, testTD, "api"), now, 48*time.Hour)
	if got, want := svid.Certificates[0].NotAfter, ca.Certificate().NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter = %s, want the CA's %s", got, want)
	}
}

func TestNewCAErrors(t *testing.T) {
	if _, err := NewCA(spiffeid.TrustDomain{}, time.Hour, time.Now()); err == nil {
		t.Error("NewCA(zero trust domain) error = nil, want one")
	}
	if _, err := NewCA(testTD, 0, time.Now()); err == nil {
		t.Error("NewCA(ttl 0) error = nil, want one")
	}
}

func TestWriteSVID(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := filepath.Join(t.TempDir(), "out")
	svid := issueSVID(t, ca, "web")
	files, err := WriteSVID(dir, "web", svid, ca.Bundle(spiffeid.TrustDomain{}))
	if err != nil {
		t.Fatalf("WriteSVID() error = %v", err)
	}
	want := IssuedFiles{Cert: filepath.Join(dir, "web.pem"), Key: filepath.Join(dir, "web-key.pem"), Bundle: filepath.Join(dir, BundleFile)}
	if files != want {
		t.Errorf("WriteSVID() = %+v, want %+v", files, want)
	}
	for p, mode := range map[string]os.FileMode{files.Cert: 0o644, files.Key: 0o600, files.Bundle: 0o644} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %o, want %o", p, fi.Mode().Perm(), mode)
		}
	}
	loaded, err := x509svid.Load(files.Cert, files.Key)
	if err != nil {
		t.Fatalf("x509svid.Load() error = %v", err)
	}
	bundle, err := x509bundle.Load(testTD, files.Bundle)
	if err != nil {
		t.Fatalf("x509bundle.Load() error = %v", err)
	}
	if id, _, err := x509svid.Verify(loaded.Certificates, bundle); err != nil || id != svid.ID {
		t.Errorf("Verify(written files) = %s, %v, want %s", id, err, svid.ID)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("dir holds %d entries, want 3 (no temporary files left)", len(entries))
	}
	for _, bad := range []string{"", "..", "a/b", "."} {
		if _, err := WriteSVID(dir, bad, svid, ca.Bundle(spiffeid.TrustDomain{})); err == nil {
			t.Errorf("WriteSVID(name %q) error = nil, want one", bad)
		}
	}
}
