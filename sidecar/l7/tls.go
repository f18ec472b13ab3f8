package l7

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/mtls"
)

// RFC 9209 Proxy-Status error types for TLS failures.
const (
	// ErrTLSCertificateError: the upstream's certificate did not verify or is not the
	// identity expected of the endpoint.
	ErrTLSCertificateError = "tls_certificate_error"
	// ErrTLSAlertReceived: the upstream refused the handshake (our certificate, most
	// often; with TLS 1.3 the refusal arrives on the first read).
	ErrTLSAlertReceived = "tls_alert_received"
	// ErrTLSProtocolError: the TLS handshake failed for another reason.
	ErrTLSProtocolError = "tls_protocol_error"
)

// IdentityLookup returns the SPIFFE ID discovery expects of the endpoint at addr, or ""
// when discovery did not say (the upstream's expected identity applies). It is called on
// every new upstream connection, concurrently, and must not block.
type IdentityLookup interface {
	IdentityOf(addr string) string
}

// UpstreamTLS secures the connections of a Transport (HTTP) or of an l4 proxy (TCP). The
// zero value is plaintext. It is comparable, so that a reload with the same settings keeps
// the Transport and its pooled connections.
type UpstreamTLS struct {
	// Source, if not nil, makes connections mutual TLS with this proxy's certificate; the
	// endpoint must present Expected, or what Identities says for its address.
	Source     mtls.Source
	Expected   spiffeid.ID
	Identities IdentityLookup
	// Simple, when Source is nil, makes connections ordinary server TLS verified against
	// RootCAs (the system roots if nil) for ServerName (the endpoint's host if empty).
	Simple     bool
	RootCAs    *x509.CertPool
	ServerName string
}

// Enabled reports whether connections use TLS at all.
func (u UpstreamTLS) Enabled() bool { return u.Source != nil || u.Simple }

// PeerIdentity returns the SPIFFE ID the endpoint at addr must present with mesh TLS (what
// Identities says for it, else Expected), "" without mesh TLS. A connection to addr that
// completed its handshake has presented exactly this ID.
func (u UpstreamTLS) PeerIdentity(addr string) string {
	if u.Source == nil {
		return ""
	}
	if u.Identities != nil {
		if s := u.Identities.IdentityOf(addr); s != "" {
			return s
		}
	}
	return u.Expected.String()
}

// Client runs the client side of a TLS handshake over raw, a fresh connection to addr,
// offering the ALPN protocols alpn (none if nil). A failed handshake closes raw; with mesh
// TLS its error wraps a *mtls.PeerError when the endpoint is not who it should be.
func (u UpstreamTLS) Client(ctx context.Context, raw net.Conn, addr string, alpn []string) (*tls.Conn, error) {
	var cfg *tls.Config
	if u.Source != nil {
		want := u.Expected
		if u.Identities != nil {
			if s := u.Identities.IdentityOf(addr); s != "" {
				id, err := mtls.ParseID(s)
				if err != nil {
					_ = raw.Close()
					return nil, &mtls.PeerError{Err: err}
				}
				want = id
			}
		}
		cfg = mtls.ClientConfig(u.Source, want)
	} else {
		name := u.ServerName
		if name == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			name = host
		}
		cfg = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: u.RootCAs, ServerName: name}
	}
	cfg.NextProtos = alpn
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return tc, nil
}

// Dial dials addr over TCP with d and completes the TLS handshake (no ALPN: a TCP
// upstream). ctx bounds both.
func (u UpstreamTLS) Dial(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return u.Client(ctx, raw, addr, nil)
}

// classifyTLS turns a TLS failure into a local reply, or returns nil for other errors.
func classifyTLS(err error) *LocalReply {
	var pe *mtls.PeerError
	var alert tls.AlertError
	var ve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &pe):
		return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrTLSCertificateError, Details: pe.Details(), GRPCCode: grpcUnavailable, Err: err}
	case errors.As(err, &ve):
		return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrTLSCertificateError, Details: ve.Err.Error(), GRPCCode: grpcUnavailable, Err: err}
	case errors.As(err, &alert):
		return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrTLSAlertReceived, Details: "upstream refused the TLS session: " + alert.Error(), GRPCCode: grpcUnavailable, Err: err}
	}
	return nil
}

// connTLSKey carries a connection's TLS state (a *connTLS) from ConnContext to its
// requests.
type connTLSKey struct{}

// connTLS is the TLS state of a connection whose handshake the listener completed, with
// what the inbound handler derives from the peer's certificate, computed on the
// connection's first request and reused by the next ones (HTTP/2 streams included: hence
// the atomic): the certificate cannot change within a connection.
type connTLS struct {
	state tls.ConnectionState
	peer  atomic.Pointer[peerInfo]
}

// peerInfo is the caller's SPIFFE ID and the X-Forwarded-Client-Cert value made for it
// by this proxy while its own identity was local.
type peerInfo struct {
	local spiffeid.ID
	id    string
	xfcc  string // "" if it could not be made
	// xfccv is the header value made once for every request of the connection: its
	// capacity is its length, so an append copies it (nothing edits a value in place).
	xfccv []string
}

// connContext is the http.Server ConnContext of Ferry's listeners: the framing guard
// (GuardContext) and, for a connection whose mTLS handshake the listener completed before
// handing it over (wrapped in the guard, so that net/http sees plaintext), its TLS state.
func connContext(ctx context.Context, c net.Conn) context.Context {
	ctx = GuardContext(ctx, c)
	inner := c
	if g, ok := c.(*guardConn); ok {
		inner = g.Conn
	}
	if tc, ok := inner.(*tls.Conn); ok {
		ct := &connTLS{state: tc.ConnectionState()}
		if ct.state.HandshakeComplete {
			ctx = context.WithValue(ctx, connTLSKey{}, ct)
		}
	}
	return ctx
}

// acceptPeer runs first on an inbound request: it sets r.TLS from the connection's mTLS
// handshake, removes any X-Forwarded-Client-Cert the caller sent (it could be forged),
// and, when the caller presented a certificate, records its SPIFFE ID and sets Ferry's own
// X-Forwarded-Client-Cert (Envoy's format) for the application.
func (h *Handler) acceptPeer(st *state, r *http.Request) {
	var ct *connTLS
	if r.TLS == nil {
		if ct, _ = r.Context().Value(connTLSKey{}).(*connTLS); ct != nil {
			r.TLS = &ct.state
		}
	}
	delete(r.Header, mtls.XFCCHeader) // canonical: net/http canonicalizes what it parses
	if r.TLS == nil {
		return
	}
	var local spiffeid.ID
	if h.o.MTLS != nil {
		if m, err := h.o.MTLS.Current(); err == nil {
			local = m.ID()
		}
	}
	var pi *peerInfo
	if ct != nil {
		if pi = ct.peer.Load(); pi != nil && pi.local != local {
			pi = nil // this proxy's identity changed: the XFCC's By with it
		}
	}
	if pi == nil {
		id, err := mtls.PeerID(r.TLS)
		if err != nil {
			return
		}
		pi = &peerInfo{local: local, id: id.String()}
		if x, err := mtls.NewXFCC(local, r.TLS); err == nil {
			pi.xfcc = x.String()
			pi.xfccv = []string{pi.xfcc}
		}
		if ct != nil {
			ct.peer.Store(pi)
		}
	}
	st.peer = pi.id
	if pi.xfcc != "" {
		r.Header[mtls.XFCCHeader] = pi.xfccv[:1:1]
	}
}

// PeerID returns the SPIFFE ID of the peer sidecar that sent the request being proxied
// (as verified by the inbound mTLS handshake), or "" for a plaintext caller. It reads the
// per-request state, so it answers inside the proxy's request path (for instance from
// policy hooks and the upstream round trip); elsewhere it returns "".
func PeerID(ctx context.Context) string {
	if st, ok := ctx.Value(stateKey{}).(*state); ok {
		return st.peer
	}
	return ""
}
