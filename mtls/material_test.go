package mtls

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func pemOf(t *testing.T, svid *x509svid.SVID, ca *CA) (certPEM, keyPEM, caPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err = ca.Bundle(spiffeid.TrustDomain{}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, caPEM
}

func TestParseMaterial(t *testing.T) {
	ca := newTestCA(t, testTD)
	otherCA := newTestCA(t, testTD)
	svid := issueSVID(t, ca, "api")
	certPEM, keyPEM, caPEM := pemOf(t, svid, ca)
	_, _, otherCAPEM := pemOf(t, svid, otherCA)
	_, otherKeyPEM, _ := pemOf(t, issueSVID(t, ca, "api"), ca)
	sec1, err := x509.MarshalECPrivateKey(svid.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1PEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
	expired := issueAt(t, ca, svcID(t, testTD, "api"), time.Now().Add(-3*time.Hour), time.Hour)
	expCert, expKey, _ := pemOf(t, expired, ca)

	tests := []struct {
		name              string
		cert, key, bundle []byte
		td                spiffeid.TrustDomain
		wantErr           string
	}{
		{"pkcs8", certPEM, keyPEM, caPEM, spiffeid.TrustDomain{}, ""},
		{"sec1 key", certPEM, sec1PEM, caPEM, testTD, ""},
		{"wrong key", certPEM, otherKeyPEM, caPEM, spiffeid.TrustDomain{}, "private key does not match"},
		{"other CA", certPEM, keyPEM, otherCAPEM, spiffeid.TrustDomain{}, "does not verify"},
		{"other trust domain", certPEM, keyPEM, caPEM, spiffeid.RequireTrustDomainFromString("other.org"), "not in trust domain"},
		{"expired", expCert, expKey, caPEM, spiffeid.TrustDomain{}, "expired"},
		{"garbage cert", []byte("not pem"), keyPEM, caPEM, spiffeid.TrustDomain{}, "certificate and key"},
		{"empty bundle", certPEM, keyPEM, []byte(""), spiffeid.TrustDomain{}, "trust bundle"},
		{"key as bundle", certPEM, keyPEM, keyPEM, spiffeid.TrustDomain{}, "trust bundle"},
		{"ca as leaf", caPEM, keyPEM, caPEM, spiffeid.TrustDomain{}, "certificate and key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMaterial("files", tt.cert, tt.key, tt.bundle, tt.td, time.Now())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseMaterial() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMaterial() error = %v", err)
			}
			if m.ID() != svid.ID || m.Source() != "files" {
				t.Errorf("ParseMaterial() = %s from %s, want %s from files", m.ID(), m.Source(), svid.ID)
			}
			if c := m.Certificate(); len(c.Certificate) != 1 || c.Leaf != m.Leaf() || c.PrivateKey == nil {
				t.Errorf("Certificate() = %d certs, leaf %v, key %v; want the leaf and its key", len(c.Certificate), c.Leaf != nil, c.PrivateKey != nil)
			}
		})
	}
}

func TestMaterialBundlesAndInfo(t *testing.T) {
	ca := newTestCA(t, testTD)
	otherTD := spiffeid.RequireTrustDomainFromString("other.org")
	otherCA := newTestCA(t, otherTD)
	svid := issueSVID(t, ca, "api")
	now := time.Now()
	// The federated bundle first: Bundles still puts our own first.
	m, err := NewMaterial("dev", svid, now, otherCA.Bundle(spiffeid.TrustDomain{}), ca.Bundle(spiffeid.TrustDomain{}))
	if err != nil {
		t.Fatalf("NewMaterial() error = %v", err)
	}
	bs := m.Bundles()
	if len(bs) != 2 || bs[0].TrustDomain() != testTD || bs[1].TrustDomain() != otherTD {
		t.Errorf("Bundles() = %v, want mesh.local then other.org", bs)
	}
	if _, err := m.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("third.org")); err == nil {
		t.Error("GetX509BundleForTrustDomain(unknown) error = nil, want one")
	}
	if got, _ := m.GetX509SVID(); got != svid {
		t.Error("GetX509SVID() is not the SVID given")
	}

	info := m.Info(now)
	if len(info) != 3 {
		t.Fatalf("Info() = %d entries, want 3 (leaf + 2 CAs)", len(info))
	}
	leaf := info[0]
	if leaf.Role != RoleLeaf || leaf.SPIFFEID != "spiffe://mesh.local/svc/api" || leaf.Source != "dev" ||
		leaf.Serial != FormatSerial(svid.Certificates[0].SerialNumber) || leaf.TrustDomain != "mesh.local" ||
		!strings.Contains(leaf.Subject, "CN=api") {
		t.Errorf("Info()[0] = %+v, want the leaf of spiffe://mesh.local/svc/api from dev", leaf)
	}
	if want := svid.Certificates[0].NotAfter.Sub(now).Seconds(); leaf.SecondsToExpiry != want {
		t.Errorf("SecondsToExpiry = %v, want %v", leaf.SecondsToExpiry, want)
	}
	if info[1].Role != RoleCA || info[1].SPIFFEID != "spiffe://mesh.local" || info[2].TrustDomain != "other.org" {
		t.Errorf("Info()[1:] = %+v, want the mesh.local CA then the other.org CA", info[1:])
	}
	if err := m.Valid(now); err != nil {
		t.Errorf("Valid(now) = %v, want nil", err)
	}
	if err := m.Valid(m.NotAfter().Add(time.Second)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Valid(after expiry) = %v, want 'expired'", err)
	}
	if err := m.Valid(m.Leaf().NotBefore.Add(-time.Second)); err == nil || !strings.Contains(err.Error(), "not valid before") {
		t.Errorf("Valid(before) = %v, want 'not valid before'", err)
	}
}

func TestNewMaterialErrors(t *testing.T) {
	ca := newTestCA(t, testTD)
	svid := issueSVID(t, ca, "api")
	b := ca.Bundle(spiffeid.TrustDomain{})
	tests := []struct {
		name    string
		svid    *x509svid.SVID
		bundles []*x509bundle.Bundle
		wantErr string
	}{
		{"nil svid", nil, []*x509bundle.Bundle{b}, "incomplete"},
		{"no bundle", svid, nil, "no trust bundle"},
		{"only a foreign bundle", svid, []*x509bundle.Bundle{newTestCA(t, spiffeid.RequireTrustDomainFromString("other.org")).Bundle(spiffeid.TrustDomain{})}, "no trust bundle"},
		{"duplicate", svid, []*x509bundle.Bundle{b, b}, "two trust bundles"},
		{"empty bundle", svid, []*x509bundle.Bundle{x509bundle.New(testTD)}, "empty trust bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMaterial("test", tt.svid, time.Now(), tt.bundles...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewMaterial() error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	// Material issued a little in the future (clock skew) is accepted.
	future := issueAt(t, ca, svcID(t, testTD, "api"), time.Now().Add(10*time.Minute), time.Hour)
	if _, err := NewMaterial("test", future, time.Now(), b); err != nil {
		t.Errorf("NewMaterial(not yet valid) error = %v, want nil", err)
	}
}
