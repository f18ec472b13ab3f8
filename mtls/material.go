package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Material is one immutable set of certificate material: this proxy's X509-SVID (leaf,
// intermediates and private key) and the trust bundles its peers' certificates are
// verified against. A Source publishes a new Material on every rotation; handshakes pick
// up whichever Material is current when they start. All methods are safe to call
// concurrently.
type Material struct {
	svid    *x509svid.SVID
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	tdOrder []spiffeid.TrustDomain
	cert    *tls.Certificate
	source  string
	loaded  time.Time
}

var (
	_ x509svid.Source   = (*Material)(nil)
	_ x509bundle.Source = (*Material)(nil)
)

// NewMaterial checks an SVID against the trust bundles and packages them. The bundle for
// the SVID's own trust domain is required, and the SVID must verify against it (with
// go-spiffe) at now (or at its NotBefore, if now is earlier: a small clock skew does not
// make fresh material unusable). Further bundles federate other trust domains. source
// names where the material came from ("files", "dev", …) for /certs and metrics.
func NewMaterial(source string, svid *x509svid.SVID, now time.Time, bundles ...*x509bundle.Bundle) (*Material, error) {
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, errors.New("mtls: incomplete SVID")
	}
	m := &Material{
		svid:    svid,
		bundles: make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(bundles)),
		source:  source,
		loaded:  now,
	}
	for _, b := range bundles {
		if b == nil || len(b.X509Authorities()) == 0 {
			return nil, errors.New("mtls: empty trust bundle")
		}
		td := b.TrustDomain()
		if _, dup := m.bundles[td]; dup {
			return nil, fmt.Errorf("mtls: two trust bundles for trust domain %q", td)
		}
		m.bundles[td] = b
		m.tdOrder = append(m.tdOrder, td)
	}
	if _, ok := m.bundles[svid.ID.TrustDomain()]; !ok {
		return nil, fmt.Errorf("mtls: no trust bundle for the certificate's own trust domain %q", svid.ID.TrustDomain())
	}
	at := now
	if leaf := svid.Certificates[0]; at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	if _, _, err := x509svid.Verify(svid.Certificates, m, x509svid.WithTime(at)); err != nil {
		return nil, fmt.Errorf("mtls: certificate %s does not verify against its trust bundle: %w", svid.ID, err)
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	m.cert = cert
	return m, nil
}

// ParseMaterial builds Material from PEM: certPEM holds the leaf followed by any
// intermediates, keyPEM the private key (PKCS#8, SEC 1 "EC PRIVATE KEY" or PKCS#1), caPEM
// the trust bundle's CA certificates for td. A zero td means the SVID's own trust
// domain; otherwise the SVID must belong to td.
func ParseMaterial(source string, certPEM, keyPEM, caPEM []byte, td spiffeid.TrustDomain, now time.Time) (*Material, error) {
	// crypto/tls reads every common key encoding and checks that the key matches the
	// leaf; go-spiffe then validates the result as an X509-SVID.
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: certificate and key: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(pair.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("mtls: private key: %w", err)
	}
	var der []byte
	for _, c := range pair.Certificate {
		der = append(der, c...)
	}
	svid, err := x509svid.ParseRaw(der, pkcs8)
	if err != nil {
		return nil, fmt.Errorf("mtls: certificate is not a valid X509-SVID: %w", err)
	}
	if td.IsZero() {
		td = svid.ID.TrustDomain()
	} else if svid.ID.TrustDomain() != td {
		return nil, fmt.Errorf("mtls: certificate identity %s is not in trust domain %q", svid.ID, td)
	}
	bundle, err := x509bundle.Parse(td, caPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: trust bundle: %w", err)
	}
	if len(bundle.X509Authorities()) == 0 {
		return nil, errors.New("mtls: trust bundle: no CA certificate")
	}
	return NewMaterial(source, svid, now, bundle)
}

// ID is this proxy's SPIFFE ID.
func (m *Material) ID() spiffeid.ID { return m.svid.ID }

// SVID is this proxy's X509-SVID. It must not be modified.
func (m *Material) SVID() *x509svid.SVID { return m.svid }

// Leaf is this proxy's certificate. It must not be modified.
func (m *Material) Leaf() *x509.Certificate { return m.svid.Certificates[0] }

// Certificate is the certificate chain and key to present in handshakes, built once per
// Material. It must not be modified.
func (m *Material) Certificate() *tls.Certificate { return m.cert }

// Bundles returns the trust bundles, the SVID's own trust domain's first.
func (m *Material) Bundles() []*x509bundle.Bundle {
	out := make([]*x509bundle.Bundle, 0, len(m.tdOrder))
	out = append(out, m.bundles[m.svid.ID.TrustDomain()])
	for _, td := range m.tdOrder {
		if td != m.svid.ID.TrustDomain() {
			out = append(out, m.bundles[td])
		}
	}
	return out
}

// Source names where the material came from ("files", "dev", …).
func (m *Material) Source() string { return m.source }

// LoadedAt is when the material was loaded.
func (m *Material) LoadedAt() time.Time { return m.loaded }

// NotAfter is when this proxy's certificate expires.
func (m *Material) NotAfter() time.Time { return m.Leaf().NotAfter }

// GetX509SVID returns the SVID; with it, a Material is a go-spiffe x509svid.Source.
func (m *Material) GetX509SVID() (*x509svid.SVID, error) { return m.svid, nil }

// GetX509BundleForTrustDomain returns the bundle for td; with it, a Material is a
// go-spiffe x509bundle.Source.
func (m *Material) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if b, ok := m.bundles[td]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("mtls: no trust bundle for trust domain %q", td)
}

// Valid reports whether this proxy's certificate is within its validity period at now.
func (m *Material) Valid(now time.Time) error {
	leaf := m.Leaf()
	switch {
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("mtls: certificate %s is not valid before %s", m.ID(), leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		return fmt.Errorf("mtls: certificate %s expired at %s", m.ID(), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Certificate roles in CertInfo.
const (
	RoleLeaf         = "leaf"
	RoleIntermediate = "intermediate"
	RoleCA           = "ca"
)

// CertInfo describes one certificate for the /certs admin endpoint and for metrics.
type CertInfo struct {
	// Role is RoleLeaf for this proxy's certificate, RoleIntermediate for a certificate
	// of its chain, RoleCA for a trust-bundle authority.
	Role        string    `json:"role"`
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	SPIFFEID    string    `json:"spiffe_id,omitempty"`
	TrustDomain string    `json:"trust_domain"`
	DNSNames    []string  `json:"dns_names,omitempty"`
	Serial      string    `json:"serial"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	Source      string    `json:"source"`
	// SecondsToExpiry is NotAfter minus the time Info was called; negative once expired.
	SecondsToExpiry float64 `json:"seconds_to_expiry"`
}

// Info describes the leaf, its intermediates and every trust-bundle authority, in that
// order, with seconds to expiry measured from now.
func (m *Material) Info(now time.Time) []CertInfo {
	var out []CertInfo
	own := m.svid.ID.TrustDomain()
	for i, c := range m.svid.Certificates {
		role := RoleIntermediate
		if i == 0 {
			role = RoleLeaf
		}
		out = append(out, m.describe(c, role, own, now))
	}
	for _, b := range m.Bundles() {
		for _, c := range b.X509Authorities() {
			out = append(out, m.describe(c, RoleCA, b.TrustDomain(), now))
		}
	}
	return out
}

func (m *Material) describe(c *x509.Certificate, role string, td spiffeid.TrustDomain, now time.Time) CertInfo {
	ci := CertInfo{
		Role:            role,
		Subject:         c.Subject.String(),
		Issuer:          c.Issuer.String(),
		TrustDomain:     td.Name(),
		DNSNames:        c.DNSNames,
		Serial:          FormatSerial(c.SerialNumber),
		NotBefore:       c.NotBefore.UTC(),
		NotAfter:        c.NotAfter.UTC(),
		Source:          m.source,
		SecondsToExpiry: c.NotAfter.Sub(now).Seconds(),
	}
	if len(c.URIs) == 1 && c.URIs[0].Scheme == "spiffe" {
		ci.SPIFFEID = c.URIs[0].String()
	}
	return ci
}

// FormatSerial formats a certificate serial number the way CertInfo does: lowercase
// hexadecimal without separators.
func FormatSerial(serial *big.Int) string {
	if serial == nil {
		return ""
	}
	return serial.Text(16)
}
