package ferrytest

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ferrymesh/ferry/mtls"
)

// TrustDomain is the trust domain of the certificates a PKI issues.
var TrustDomain = spiffeid.RequireTrustDomainFromString("mesh.local")

// PKI is a development CA (Ferry's own, mtls.CA) for the test, writing the certificates it
// issues under a temporary directory. A test that needs certificates from another CA makes
// a second PKI. Not safe for concurrent use.
type PKI struct {
	t   *testing.T
	dir string
	// CA is the certificate authority.
	CA *mtls.CA
}

// NewPKI makes a CA for TrustDomain, valid for a day.
func NewPKI(t *testing.T) *PKI {
	t.Helper()
	ca, err := mtls.NewCA(TrustDomain, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatalf("NewCA() error = %v", err)
	}
	return &PKI{t: t, dir: t.TempDir(), CA: ca}
}

// Certs are the files of one issued certificate and what the tests check it by.
type Certs struct {
	// Dir holds the files; Cert, Key and CA are the certificate chain, its key and the
	// trust bundle (PEM).
	Dir, Cert, Key, CA string
	// SVID is the certificate issued.
	SVID *x509svid.SVID
	// Serial is the leaf's serial as /certs shows it, SHA256 the hex SHA-256 of its DER
	// (the Hash of X-Forwarded-Client-Cert).
	Serial, SHA256 string
}

// Issue writes a certificate for service (spiffe://mesh.local/svc/SERVICE), valid for an
// hour from now, into its own directory.
func (p *PKI) Issue(service string) Certs {
	p.t.Helper()
	return p.IssueAt(filepath.Join(p.dir, service), service, time.Time{}, time.Hour)
}

// IssueWith writes a certificate for service into its own directory; now shifts the
// validity period (zero: now) and ttl is its lifetime.
func (p *PKI) IssueWith(service string, now time.Time, ttl time.Duration) Certs {
	p.t.Helper()
	return p.IssueAt(filepath.Join(p.dir, service), service, now, ttl)
}

// IssueAt writes a certificate for service into dir (SERVICE.pem, SERVICE-key.pem,
// bundle.pem), replacing what is there. now shifts the validity period (zero: now); ttl is
// its lifetime.
func (p *PKI) IssueAt(dir, service string, now time.Time, ttl time.Duration) Certs {
	p.t.Helper()
	id, err := mtls.ServiceID(TrustDomain, service)
	if err != nil {
		p.t.Fatal(err)
	}
	svid, err := p.CA.Issue(mtls.IssueRequest{ID: id, TTL: ttl, Now: now})
	if err != nil {
		p.t.Fatalf("Issue(%s) error = %v", service, err)
	}
	files, err := mtls.WriteSVID(dir, service, svid, p.CA.Bundle(TrustDomain))
	if err != nil {
		p.t.Fatalf("WriteSVID() error = %v", err)
	}
	sum := sha256.Sum256(svid.Certificates[0].Raw)
	return Certs{Dir: dir, Cert: files.Cert, Key: files.Key, CA: files.Bundle, SVID: svid,
		Serial: mtls.FormatSerial(svid.Certificates[0].SerialNumber), SHA256: hex.EncodeToString(sum[:])}
}

// TLSCert is c as a tls.Certificate for a hand-made client.
func (c Certs) TLSCert(t *testing.T) tls.Certificate {
	t.Helper()
	tc, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// MTLSBlock is the mtls block (one line of YAML) of a config using c, strict mode.
func (c Certs) MTLSBlock() string {
	return fmt.Sprintf("mtls: {mode: strict, source: files, cert_file: %q, key_file: %q, ca_file: %q}\n", c.Cert, c.Key, c.CA)
}
