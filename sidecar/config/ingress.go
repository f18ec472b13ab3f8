package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/policy/route"
)

// Ingress is a TLS listener for traffic from outside the mesh: it terminates ordinary
// server TLS (no client certificate), with the certificate chosen by SNI, and proxies to
// the local application (Target) or to an upstream (Upstream). The policy block applies
// to its requests as on inbound; callers have no SPIFFE ID.
type Ingress struct {
	Listener `yaml:",inline" json:",inline"`
	// Certificates are the server certificates. A client's SNI picks the certificate
	// whose DNS names (SANs, wildcards included) match it; the first is the default for
	// an unknown or absent SNI. The files are re-read when they change.
	Certificates []IngressCertificate `yaml:"certificates" json:"certificates"`
	// MinVersion is the lowest TLS version accepted: "1.2" (the default; TLS 1.2 is then
	// restricted to ECDHE key exchange with AEAD ciphers) or "1.3".
	MinVersion string `yaml:"min_version" json:"min_version"`
	// Target is host:port of the local application; exactly one of Target and Upstream.
	Target string `yaml:"target" json:"target,omitempty"`
	// Upstream names an entry of Config.Upstreams, balanced, retried and
	// outlier-detected as on outbound; exactly one of Target and Upstream.
	Upstream string `yaml:"upstream" json:"upstream,omitempty"`
	// TargetProtocol is how HTTP is spoken to Target: "auto" (the caller's protocol, so
	// HTTP/2 callers reach it over h2c, as on inbound; the default, and what gRPC needs),
	// "http1" (for an application that speaks only HTTP/1.1), or "http2" (h2c with prior
	// knowledge). An upstream's own protocol applies to Upstream.
	TargetProtocol string `yaml:"target_protocol" json:"target_protocol,omitempty"`
	// ConnectTimeout bounds dialing Target. Default 1s. (An upstream's own
	// connect_timeout applies to Upstream.)
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// RequestTimeout bounds the wait for Target's response headers; 0 disables. Default 0.
	// (An upstream's own request_timeout applies to Upstream.)
	RequestTimeout Duration `yaml:"request_timeout" json:"request_timeout"`
	// Routes (http only), in order, send matching requests elsewhere than Target or
	// Upstream: to another upstream, a weighted split, a redirect or a fixed response (see
	// route.Route). A route that names none of these forwards to the listener's own
	// target or upstream, and so do requests no route takes. Paths match as the policy
	// block normalizes them.
	Routes []route.Route `yaml:"routes" json:"routes,omitempty"`
}

// IngressCertificate is one certificate of an ingress listener: PEM files of the chain
// (leaf first) and of its RSA or ECDSA private key.
type IngressCertificate struct {
	CertFile string `yaml:"cert_file" json:"cert_file"`
	KeyFile  string `yaml:"key_file" json:"key_file"`
}

// Values of ingress.min_version.
const (
	TLSVersion12 = "1.2"
	TLSVersion13 = "1.3"
	// DefaultIngressMinVersion is ingress.min_version when the file leaves it out.
	DefaultIngressMinVersion = TLSVersion12
)

// TLSVersion returns the crypto/tls constant of MinVersion, and false for an unknown one.
func (in *Ingress) TLSVersion() (uint16, bool) {
	switch in.MinVersion {
	case TLSVersion12:
		return tls.VersionTLS12, true
	case TLSVersion13:
		return tls.VersionTLS13, true
	}
	return 0, false
}

// ingressPath returns the path of the i-th decoded ingress listener (of n): items yaml.v3
// left out shift the decoded indexes, as for outbound.
func ingressPath(l *locator, n, i int) path {
	return path{"ingress", pick(l.kept(path{"ingress"}, n, structKept), i)}
}

// ingressDefaults fills in the ingress listeners; listener applies the shared listener
// defaults.
func ingressDefaults(c *Config, l *locator, listener func(*Listener, path), dur func(*Duration, path, time.Duration)) {
	for i := range c.Ingress {
		in := &c.Ingress[i]
		p := ingressPath(l, len(c.Ingress), i)
		listener(&in.Listener, p)
		if in.MinVersion == "" {
			in.MinVersion = DefaultIngressMinVersion
		}
		if in.TargetProtocol == "" && in.Target != "" && in.Protocol != ProtocolTCP {
			in.TargetProtocol = ProtocolAuto
		}
		if in.Certificates == nil {
			in.Certificates = []IngressCertificate{}
		}
		dur(&in.ConnectTimeout, p.with("connect_timeout"), DefaultConnectTimeout)
		routeDefaults(&in.Routes)
	}
}

// checkIngress validates the ingress listeners: the shared listener settings and address
// clashes (ls), the certificates (read and matched with their keys here, so that a bad
// file is reported with its line), min_version, and exactly one of a valid target and a
// known upstream (names; namesHidden when an upstream's name failed to decode).
func checkIngress(c *Config, col *collector, ls *listeners, names map[string]int, namesHidden bool) {
	for i := range c.Ingress {
		in := &c.Ingress[i]
		p := ingressPath(col.loc, len(c.Ingress), i)
		checkListener(col, ls, p, &in.Listener)
		if _, ok := in.TLSVersion(); !ok {
			col.add(p.with("min_version"), "unknown TLS version %q (want %s or %s)", in.MinVersion, TLSVersion12, TLSVersion13)
		}
		cp := p.with("certificates")
		if len(in.Certificates) == 0 && !col.brokenUnder(cp) {
			col.add(cp, "missing certificates (want at least one {cert_file, key_file}; the first is the default)")
		}
		kept := col.loc.kept(cp, len(in.Certificates), structKept)
		for j, ic := range in.Certificates {
			ip := cp.with(pick(kept, j))
			// An item with a key that failed to decode (a misspelt key_file, say) has
			// its problem reported already; "missing key_file" would only repeat it.
			if col.brokenWhere(func(b string) bool { return under(b, ip.String()) }) {
				continue
			}
			checkIngressCert(col, ip, ic)
		}
		switch {
		case in.Target == "" && in.Upstream == "":
			col.add(p, "want one of target (the local application) and upstream")
		case in.Target != "" && in.Upstream != "":
			col.add(p.with("upstream"), "want only one of target and upstream, got both")
		case in.Target != "":
			checkAddress(col, p.with("target"), "target", in.Target, false)
		default:
			if _, ok := names[in.Upstream]; !ok && !namesHidden {
				col.add(p.with("upstream"), "unknown upstream %q (%s)", in.Upstream, knownUpstreams(c))
			}
		}
		checkRoutes(c, col, p, in.Protocol, in.Routes, names, namesHidden, true)
		switch {
		case in.TargetProtocol == "":
		case in.Target == "" || in.Protocol == ProtocolTCP:
			col.add(p.with("target_protocol"), "target_protocol applies to http listeners with a target only")
		case in.TargetProtocol != ProtocolAuto && in.TargetProtocol != ProtocolHTTP1 && in.TargetProtocol != ProtocolHTTP2:
			col.add(p.with("target_protocol"), "unknown protocol %q (want %s, %s or %s)", in.TargetProtocol, ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2)
		}
		positive(col, p.with("connect_timeout"), in.ConnectTimeout)
		notNegative(col, p.with("request_timeout"), in.RequestTimeout)
	}
}

// checkIngressCert reads one certificate's files and reports what keeps them from making
// a server certificate.
func checkIngressCert(col *collector, p path, ic IngressCertificate) {
	ok := true
	for _, f := range []struct{ key, v string }{{"cert_file", ic.CertFile}, {"key_file", ic.KeyFile}} {
		switch {
		case f.v == "":
			col.add(p.with(f.key), "missing %s", f.key)
			ok = false
		case strings.ContainsRune(f.v, 0):
			col.add(p.with(f.key), "invalid file name %q", f.v)
			ok = false
		}
	}
	if !ok {
		return
	}
	if _, err := LoadIngressCertificate(ic); err != nil {
		key := "cert_file"
		var ke *keyError
		if errors.As(err, &ke) {
			key = "key_file"
		}
		col.add(p.with(key), "%v", err)
	}
}

// keyError is a problem with the key file (rather than the certificate file).
type keyError struct{ err error }

func (e *keyError) Error() string { return e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }

// LoadIngressCertificate reads and checks one ingress certificate: a PEM chain whose leaf
// is a server certificate, and its RSA or ECDSA private key, which must match it. The
// returned certificate has its Leaf set. Safe to call concurrently.
func LoadIngressCertificate(ic IngressCertificate) (*tls.Certificate, error) {
	certPEM, err := readPEMFile(ic.CertFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read certificate: %w", err)
	}
	keyPEM, err := readPEMFile(ic.KeyFile)
	if err != nil {
		return nil, &keyError{fmt.Errorf("cannot read key: %w", err)}
	}
	var chain tls.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain.Certificate = append(chain.Certificate, b.Bytes)
		}
	}
	if len(chain.Certificate) == 0 {
		return nil, fmt.Errorf("%s holds no PEM CERTIFICATE block", ic.CertFile)
	}
	leaf, err := x509.ParseCertificate(chain.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %v", ic.CertFile, err)
	}
	switch leaf.PublicKeyAlgorithm {
	case x509.RSA, x509.ECDSA:
	default:
		return nil, fmt.Errorf("%s: %s key (want RSA or ECDSA)", ic.CertFile, leaf.PublicKeyAlgorithm)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &keyError{fmt.Errorf("%s does not hold the private key of %s: %v", ic.KeyFile, ic.CertFile, err)}
	}
	cert.Leaf = leaf
	return &cert, nil
}

// MaxPEMFileSize is the largest certificate or key file LoadIngressCertificate reads.
const MaxPEMFileSize = 1 << 20

// readPEMFile reads a regular file of at most MaxPEMFileSize bytes, so that a path naming
// a device or a FIFO cannot hang validation.
func readPEMFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, unwrapPath(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxPEMFileSize+1))
	if err != nil {
		return nil, unwrapPath(err)
	}
	if len(b) > MaxPEMFileSize {
		return nil, fmt.Errorf("%s: larger than %d KiB", name, MaxPEMFileSize>>10)
	}
	return b, nil
}

// unwrapPath drops the *fs.PathError's operation, keeping "open FILE: reason" short.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}
