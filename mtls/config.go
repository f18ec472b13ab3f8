package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Authorizer decides whether a peer whose certificate verified against the trust bundle
// may connect: it returns nil to allow. It is go-spiffe's type, so tlsconfig.AuthorizeID,
// AuthorizeOneOf, AuthorizeMemberOf, AdaptMatcher(MatchService(…)) and friends can be
// used directly. It is called on every handshake and must be safe for concurrent use.
type Authorizer = tlsconfig.Authorizer

// ALPN protocol identifiers offered and accepted by ServerConfig and ClientConfig.
const (
	ALPNHTTP2 = "h2"
	ALPNHTTP1 = "http/1.1"
)

// ErrNoPeerID is returned by PeerID for a connection without a peer certificate (a
// plaintext connection accepted in permissive mode, for example).
var ErrNoPeerID = errors.New("mtls: no peer certificate")

// PeerError is the error a handshake fails with when the peer's certificate does not
// verify against the trust bundle, is not authorized, or (when dialling) does not carry
// the SPIFFE ID expected for the endpoint. It reaches the caller of Handshake, Dial and
// http.Transport wrapped in their errors; find it with errors.As.
type PeerError struct {
	// Want is the SPIFFE ID expected of the peer (dialling only; zero when accepting).
	Want spiffeid.ID
	// Got is the SPIFFE ID the peer's certificate carries, zero if it has none.
	Got spiffeid.ID
	// Err is why a certificate was refused; nil when it verified but Got is not Want.
	Err error
}

// Error implements error.
func (e *PeerError) Error() string {
	switch {
	case !e.Want.IsZero() && e.Err == nil:
		return "mtls: peer identity mismatch: " + e.Details()
	case !e.Want.IsZero():
		return "mtls: peer certificate refused: " + e.Details()
	default:
		return fmt.Sprintf("mtls: peer certificate refused (peer %s): %v", idOrNone(e.Got), e.Err)
	}
}

// Unwrap returns the underlying verification or authorization error.
func (e *PeerError) Unwrap() error { return e.Err }

// Details is the short form for a Proxy-Status details parameter and for logs:
// `want spiffe://mesh.local/svc/api, got spiffe://mesh.local/svc/web`, followed by the
// reason when the certificate did not verify.
func (e *PeerError) Details() string {
	s := "want " + idOrNone(e.Want) + ", got " + idOrNone(e.Got)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func idOrNone(id spiffeid.ID) string {
	if id.IsZero() {
		return "none"
	}
	return id.String()
}

// ServerConfig returns the tls.Config of an inbound (terminating) mTLS listener. It
// presents src's current certificate, requires a client certificate, verifies it with
// go-spiffe against src's current trust bundles (chain, validity, SVID rules) and then
// asks authorize; a nil authorize allows any SPIFFE ID in this proxy's own trust domain.
// A refused peer fails the handshake with a *PeerError. The handler reads the peer's
// identity with PeerID. TLS 1.2 is the minimum (1.3 is negotiated whenever the peer
// offers it); ALPN offers h2 and http/1.1 — change NextProtos on the returned config,
// which is new on every call, for a TCP listener. Material is read on every handshake,
// so rotations apply to new connections without rebuilding the config.
func ServerConfig(src Source, authorize Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: tls12CipherSuites(),
		NextProtos:   []string{ALPNHTTP2, ALPNHTTP1},
		ClientAuth:   tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			m, err := src.Current()
			if err != nil {
				return nil, err
			}
			return m.Certificate(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			m, err := src.Current()
			if err != nil {
				return err
			}
			id, chains, err := x509svid.Verify(cs.PeerCertificates, m)
			if err != nil {
				return &PeerError{Got: id, Err: err}
			}
			authz := authorize
			if authz == nil {
				authz = tlsconfig.AuthorizeMemberOf(m.ID().TrustDomain())
			}
			if err := authz(id, chains); err != nil {
				return &PeerError{Got: id, Err: err}
			}
			return nil
		},
	}
}

// ClientConfig returns the tls.Config for dialling an upstream sidecar whose SPIFFE ID
// must be expected. It presents src's current certificate as the client certificate and
// verifies the server's with go-spiffe against src's current trust bundles; a server
// that does not verify, or whose ID is not expected, fails the handshake with a
// *PeerError (Want = expected, Got = what it presented). Host names are not checked: the
// SPIFFE ID is the server's identity. The config is new on every call and cheap to build;
// build one per upstream (or per endpoint when discovery supplies identities) and reuse
// it. Rotated material is used by the next handshake. ALPN offers h2 and http/1.1.
func ClientConfig(src Source, expected spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: tls12CipherSuites(),
		NextProtos:   []string{ALPNHTTP2, ALPNHTTP1},
		// The chain and the identity are verified by VerifyConnection below, with
		// go-spiffe, instead of by host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m, err := src.Current()
			if err != nil {
				return nil, err
			}
			return m.Certificate(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if expected.IsZero() {
				return &PeerError{Err: errors.New("no expected identity configured for this endpoint")}
			}
			m, err := src.Current()
			if err != nil {
				return err
			}
			id, _, err := x509svid.Verify(cs.PeerCertificates, m)
			if err != nil {
				return &PeerError{Want: expected, Got: id, Err: err}
			}
			if id != expected {
				return &PeerError{Want: expected, Got: id}
			}
			return nil
		},
	}
}

// tls12CipherSuites are the TLS 1.2 suites offered: ECDHE with AEAD only (TLS 1.3
// suites are not configurable and all good).
func tls12CipherSuites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}

// PeerID returns the SPIFFE ID of the peer of a connection accepted or dialled with
// ServerConfig or ClientConfig (for HTTP, pass r.TLS). The handshake has verified and
// authorized it. A nil state or one without a peer certificate gives ErrNoPeerID.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerID
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: peer certificate: %w", err)
	}
	return id, nil
}

// PeerIDFromConn returns PeerID of c if it is a *tls.Conn whose handshake completed, and
// ErrNoPeerID otherwise (a plaintext connection). Call it after the handshake.
func PeerIDFromConn(c net.Conn) (spiffeid.ID, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return spiffeid.ID{}, ErrNoPeerID
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, ErrNoPeerID
	}
	return PeerID(&cs)
}

// Dialer dials upstream sidecars over mTLS, verifying each one's SPIFFE ID. Its fields
// must not change after first use; it is safe for concurrent use.
type Dialer struct {
	// Source supplies this proxy's certificate and the trust bundles.
	Source Source
	// NetDialer dials the TCP connection (a zero net.Dialer if nil).
	NetDialer *net.Dialer
	// NextProtos overrides the ALPN protocols offered (h2 and http/1.1 if nil).
	NextProtos []string
}

// DialContext connects to addr and completes a handshake that verifies the server is
// expected. On a mismatch or an unverifiable certificate the error wraps a *PeerError.
// ctx bounds the connection and the handshake.
func (d *Dialer) DialContext(ctx context.Context, network, addr string, expected spiffeid.ID) (*tls.Conn, error) {
	cfg := ClientConfig(d.Source, expected)
	if d.NextProtos != nil {
		cfg.NextProtos = d.NextProtos
	}
	td := &tls.Dialer{NetDialer: d.NetDialer, Config: cfg}
	c, err := td.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// Mode is how an inbound listener treats TLS (the `mtls.mode` config key).
type Mode string

// Modes.
const (
	// ModeStrict accepts mTLS only.
	ModeStrict Mode = "strict"
	// ModePermissive accepts mTLS and plaintext on the same port (for migrations).
	ModePermissive Mode = "permissive"
	// ModeDisabled accepts plaintext only.
	ModeDisabled Mode = "disabled"
)

// ParseMode parses a mode name; an empty name is ModeStrict.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "":
		return ModeStrict, nil
	case ModeStrict, ModePermissive, ModeDisabled:
		return Mode(s), nil
	}
	return "", fmt.Errorf("mtls: unknown mode %q (want strict, permissive or disabled)", s)
}

// WrapListener wraps an inbound listener for mode: strict returns tls.NewListener(inner,
// config), permissive NewPermissiveListener(inner, config, DefaultSniffTimeout), disabled
// inner itself. TLS connections are returned as *tls.Conn before their handshake, which
// net/http performs (and which a TCP proxy performs with HandshakeContext).
func WrapListener(inner net.Listener, mode Mode, config *tls.Config) (net.Listener, error) {
	switch mode {
	case ModeStrict, "":
		return tls.NewListener(inner, config), nil
	case ModePermissive:
		return NewPermissiveListener(inner, config, DefaultSniffTimeout), nil
	case ModeDisabled:
		return inner, nil
	}
	return nil, fmt.Errorf("mtls: unknown mode %q", mode)
}
