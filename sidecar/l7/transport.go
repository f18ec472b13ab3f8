package l7

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/sidecar/circuit"
)

// Upstream protocols, as in the config's upstreams[].protocol.
const (
	ProtocolAuto  = "auto"  // the downstream request's protocol
	ProtocolHTTP1 = "http1" // HTTP/1.1
	ProtocolHTTP2 = "http2" // HTTP/2 cleartext with prior knowledge
)

// TransportOptions configures the connection pools to one upstream.
type TransportOptions struct {
	// Protocol is ProtocolAuto, ProtocolHTTP1 or ProtocolHTTP2.
	Protocol string
	// ConnectTimeout bounds one dial.
	ConnectTimeout time.Duration
	// IdleTimeout closes pooled connections idle this long.
	IdleTimeout time.Duration
	// MaxIdleConnsPerHost bounds the idle HTTP/1.1 connections kept per endpoint.
	MaxIdleConnsPerHost int
	// Breaker, if not nil, is the upstream's circuit breaker: every dial is admitted
	// through it (max_pending, max_connections) and every connection counted until it
	// closes. An attempt over a limit fails with a *circuit.OverflowError.
	Breaker *circuit.Breaker
	// TLS secures the connections (mesh mTLS or simple TLS); the zero value is plaintext.
	// HTTP/1.1 connections offer ALPN http/1.1 and HTTP/2 ones h2, so that the protocol
	// negotiated is the one spoken. A failed handshake is a connect failure (*DialError).
	TLS UpstreamTLS
}

// Transport holds an upstream's pooled connections: HTTP/1.1 connections kept alive per
// endpoint (Ferry's own pool: each round trip runs on the caller's goroutine), and
// multiplexed HTTP/2 cleartext connections (net/http's). It is safe for concurrent use and
// is kept across config reloads while its options do not change, so pools survive.
type Transport struct {
	opts TransportOptions
	h1   *h1Pool
	h2   *http.Transport
}

// NewTransport returns a Transport with empty pools.
func NewTransport(o TransportOptions) *Transport {
	if o.Protocol == "" {
		o.Protocol = ProtocolAuto
	}
	t := &Transport{opts: o}
	dialer := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	dialWith := func(alpn []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			c = WithRawIO(c)
			if !o.TLS.Enabled() {
				return c, nil
			}
			if o.ConnectTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, o.ConnectTimeout)
				defer cancel()
			}
			return o.TLS.Client(ctx, c, addr, alpn)
		}
	}
	mkDial := func(alpn []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialTLS := dialWith(alpn)
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			b := o.Breaker
			if b != nil {
				if err := b.StartConnect(); err != nil {
					return nil, err
				}
			}
			c, err := dialTLS(ctx, network, addr)
			if b != nil {
				b.EndConnect(err == nil)
			}
			if err != nil {
				return nil, &DialError{Err: err}
			}
			if b != nil {
				return &countedConn{Conn: c, b: b}, nil
			}
			return c, nil
		}
	}
	base := func(p *http.Protocols, alpn string) *http.Transport {
		return &http.Transport{
			Proxy:                  nil, // a sidecar never honours HTTP_PROXY for mesh traffic
			DialContext:            mkDial([]string{alpn}),
			Protocols:              p,
			MaxIdleConns:           0,
			MaxIdleConnsPerHost:    o.MaxIdleConnsPerHost,
			IdleConnTimeout:        o.IdleTimeout,
			DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
			ExpectContinueTimeout:  0,
			MaxResponseHeaderBytes: 1 << 20,
			WriteBufferSize:        16 << 10,
			ReadBufferSize:         16 << 10,
		}
	}
	if o.Protocol != ProtocolHTTP2 {
		dial := mkDial([]string{"http/1.1"})
		t.h1 = newH1Pool(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}, o.IdleTimeout, o.MaxIdleConnsPerHost)
	}
	if o.Protocol != ProtocolHTTP1 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		t.h2 = base(&p, "h2")
		t.h2.HTTP2 = &http.HTTP2Config{
			// Detect dead upstream connections instead of waiting on them forever.
			SendPingTimeout: 15 * time.Second,
			PingTimeout:     5 * time.Second,
		}
	}
	return t
}

// Options returns the options the Transport was built with.
func (t *Transport) Options() TransportOptions { return t.opts }

// RoundTrip sends req on a pooled connection to req.URL.Host, choosing HTTP/1.1 or HTTP/2
// per the upstream's protocol. Upgrade requests (WebSocket) always use HTTP/1.1.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.http1(req) {
		return t.h1.roundTrip(req)
	}
	return t.h2.RoundTrip(req)
}

// http1 reports whether req goes over HTTP/1.1 rather than HTTP/2.
func (t *Transport) http1(req *http.Request) bool {
	switch {
	case t.h1 == nil:
		return false
	case t.h2 == nil:
		return true
	default:
		return req.ProtoMajor != 2 || req.Header.Get("Upgrade") != ""
	}
}

// CloseIdleConnections closes every idle pooled connection.
func (t *Transport) CloseIdleConnections() {
	if t.h1 != nil {
		t.h1.closeIdle()
	}
	if t.h2 != nil {
		t.h2.CloseIdleConnections()
	}
}

// countedConn is an upstream connection counted by the circuit breaker until it closes.
type countedConn struct {
	net.Conn
	b      *circuit.Breaker
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.b.EndConnection()
	}
	return c.Conn.Close()
}

// DialError marks an error that happened while connecting to an endpoint, before any byte of
// the request was sent.
type DialError struct{ Err error }

func (e *DialError) Error() string { return "connect: " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// IsDialError reports whether err happened while connecting.
func IsDialError(err error) bool {
	var d *DialError
	return errors.As(err, &d)
}
