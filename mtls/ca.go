package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names used by the development CA (`ferry ca`) and the dev source.
const (
	CACertFile = "ca.pem"     // the CA certificate
	CAKeyFile  = "ca-key.pem" // the CA private key (mode 0600)
	BundleFile = "bundle.pem" // the trust bundle written beside issued certificates
)

// Default lifetimes of the development CA and of the SVIDs it issues.
const (
	DefaultCATTL   = 365 * 24 * time.Hour
	DefaultSVIDTTL = 24 * time.Hour
)

// backdate is how far before "now" certificates become valid, to tolerate clock skew
// between the machine that issues them and the machines that check them.
const backdate = time.Minute

// SVIDCertFile and SVIDKeyFile are the file names `ferry ca issue` writes for a service.
func SVIDCertFile(service string) string { return service + ".pem" }

// SVIDKeyFile is the private-key file name `ferry ca issue` writes for a service.
func SVIDKeyFile(service string) string { return service + "-key.pem" }

// CA is a development certificate authority: an ECDSA P-256 self-signed root that issues
// X509-SVIDs for one trust domain. It is meant for demos, tests and development meshes;
// production meshes use their own CA (files), Consul Connect's or an SDS server. A CA is
// immutable and safe for concurrent use.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
	td   spiffeid.TrustDomain
}

// NewCA creates a CA for td valid from now (less a minute of clock skew) for ttl.
func NewCA(td spiffeid.TrustDomain, ttl time.Duration, now time.Time) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("mtls: CA needs a trust domain")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("mtls: CA lifetime must be positive, not %s", ttl)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mtls: generating CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Ferry development CA " + td.Name(), Organization: []string{"Ferry"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("mtls: creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("mtls: parsing CA certificate: %w", err)
	}
	return &CA{cert: cert, key: key, td: td}, nil
}

// LoadCA reads ca.pem and ca-key.pem from dir. The trust domain is the CA certificate's
// SPIFFE ID (a URI SAN such as spiffe://mesh.local); a CA without one has a zero trust
// domain and can issue for any.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("mtls: reading CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("mtls: reading CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: CA in %s: %w", dir, err)
	}
	cert := pair.Leaf
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("mtls: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("mtls: CA key in %s cannot sign", dir)
	}
	ca := &CA{cert: cert, key: key}
	if len(cert.URIs) == 1 {
		if td, err := spiffeid.TrustDomainFromURI(cert.URIs[0]); err == nil {
			ca.td = td
		}
	}
	return ca, nil
}

// Certificate is the CA certificate. It must not be modified.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// TrustDomain is the trust domain the CA issues for (zero if the CA does not name one).
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the trust bundle for td holding this CA (td may be zero when the CA
// names its trust domain).
func (ca *CA) Bundle(td spiffeid.TrustDomain) *x509bundle.Bundle {
	if td.IsZero() {
		td = ca.td
	}
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.cert})
}

// Write stores the CA in dir as ca.pem (0644) and ca-key.pem (0600), creating dir if
// needed. It refuses to replace an existing CA unless force is set.
func (ca *CA) Write(dir string, force bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mtls: %w", err)
	}
	if !force {
		for _, name := range []string{CACertFile, CAKeyFile} {
			p := filepath.Join(dir, name)
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("mtls: %s already exists (use --force to replace the CA; certificates it issued will stop verifying)", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("mtls: %w", err)
			}
		}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("mtls: encoding CA key: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, CAKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, CACertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o644)
}

// IssueRequest describes an X509-SVID to issue.
type IssueRequest struct {
	// ID is the SPIFFE ID (the certificate's only URI SAN). It must be in the CA's
	// trust domain and have a path.
	ID spiffeid.ID
	// TTL is the lifetime (DefaultSVIDTTL if zero). It is cut short at the CA's own
	// expiry.
	TTL time.Duration
	// DNSNames are added as DNS SANs, for clients that check host names.
	DNSNames []string
	// Now is the issue time (time.Now() if zero); the certificate is valid from a
	// minute before.
	Now time.Time
}

// Issue signs a new X509-SVID: a fresh ECDSA P-256 key, the SPIFFE ID as the only URI
// SAN, key usage digital signature, extended key usage server and client auth.
func (ca *CA) Issue(req IssueRequest) (*x509svid.SVID, error) {
	if req.ID.IsZero() || req.ID.Path() == "" {
		return nil, fmt.Errorf("mtls: cannot issue for %q: an SVID needs a SPIFFE ID with a path", req.ID.String())
	}
	if !ca.td.IsZero() && req.ID.TrustDomain() != ca.td {
		return nil, fmt.Errorf("mtls: cannot issue %s: the CA is for trust domain %q", req.ID, ca.td)
	}
	if req.TTL == 0 {
		req.TTL = DefaultSVIDTTL
	}
	if req.TTL < 0 {
		return nil, fmt.Errorf("mtls: certificate lifetime must be positive, not %s", req.TTL)
	}
	if req.Now.IsZero() {
		req.Now = time.Now()
	}
	if !req.Now.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("mtls: the CA expired at %s", ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := req.Now.Add(req.TTL)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mtls: generating key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	cn := path.Base(req.ID.Path())
	if s, err := ParseService(req.ID); err == nil {
		cn = s.Name
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: truncate(cn, 64), Organization: []string{"Ferry"}},
		NotBefore:             req.Now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.ID.URL()},
		DNSNames:              req.DNSNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("mtls: signing certificate for %s: %w", req.ID, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("mtls: encoding key: %w", err)
	}
	svid, err := x509svid.ParseRaw(der, keyDER)
	if err != nil {
		return nil, fmt.Errorf("mtls: issued certificate is not a valid X509-SVID: %w", err)
	}
	return svid, nil
}

// IssuedFiles are the paths WriteSVID wrote.
type IssuedFiles struct {
	Cert, Key, Bundle string
}

// WriteSVID writes svid to dir as NAME.pem (certificate chain, 0644) and NAME-key.pem
// (PKCS#8 key, 0600), and bundle as bundle.pem (0644), each replaced atomically so that
// a FileSource watching dir never reads a half-written file. Existing files are replaced:
// issuing again is how development certificates are rotated.
func WriteSVID(dir, name string, svid *x509svid.SVID, bundle *x509bundle.Bundle) (IssuedFiles, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return IssuedFiles{}, fmt.Errorf("mtls: invalid certificate name %q", name)
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return IssuedFiles{}, fmt.Errorf("mtls: %w", err)
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		return IssuedFiles{}, fmt.Errorf("mtls: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return IssuedFiles{}, fmt.Errorf("mtls: %w", err)
	}
	out := IssuedFiles{
		Cert:   filepath.Join(dir, SVIDCertFile(name)),
		Key:    filepath.Join(dir, SVIDKeyFile(name)),
		Bundle: filepath.Join(dir, BundleFile),
	}
	if err := writeFileAtomic(out.Bundle, bundlePEM, 0o644); err != nil {
		return IssuedFiles{}, err
	}
	if err := writeFileAtomic(out.Key, keyPEM, 0o600); err != nil {
		return IssuedFiles{}, err
	}
	if err := writeFileAtomic(out.Cert, certPEM, 0o644); err != nil {
		return IssuedFiles{}, err
	}
	return out, nil
}

// writeFileAtomic writes data to a temporary file beside p and renames it over p.
func writeFileAtomic(p string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return fmt.Errorf("mtls: %w", err)
	}
	name := tmp.Name()
	werr := func() error {
		if err := tmp.Chmod(perm); err != nil {
			return err
		}
		if _, err := tmp.Write(data); err != nil {
			return err
		}
		return tmp.Sync()
	}()
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(name, p)
	}
	if werr != nil {
		_ = os.Remove(name)
		return fmt.Errorf("mtls: writing %s: %w", p, werr)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("mtls: serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
