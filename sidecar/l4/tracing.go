package l4

import (
	"context"
	"errors"
	"net"

	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"go.opentelemetry.io/otel/trace"
)

// RFC 9209 Proxy-Status error types recorded on the spans of sessions Ferry failed.
const (
	proxyStatusNoEndpoint      = "destination_unavailable"
	proxyStatusConnectRefused  = "connection_refused"
	proxyStatusConnectTimeout  = "connection_timeout"
	proxyStatusConnectionLimit = "connection_limit_reached"
)

// endSpan records session s on its span and ends it; connectFailed says no upstream
// connection was made. A nil span (tracing off) is ignored.
func (p *Proxy) endSpan(span trace.Span, s Session, connectFailed bool) {
	if span == nil {
		return
	}
	res := tcpResult(s, connectFailed)
	p.tracing.EndTCP(span, res)
}

// tcpResult converts s for Tracing.EndTCP. A session cut by the drain (context
// cancelled) or ended by the idle timeout is recorded with its error but no Proxy-Status.
func tcpResult(s Session, connectFailed bool) telemetry.TCPResult {
	res := telemetry.TCPResult{Endpoint: s.Endpoint, BytesReceived: s.BytesIn, BytesSent: s.BytesOut, Err: s.Err}
	if !connectFailed || s.Err == nil {
		return res
	}
	var oe *circuit.OverflowError
	var ne net.Error
	switch {
	case errors.Is(s.Err, balancer.ErrNoEndpoint):
		res.ProxyStatus = proxyStatusNoEndpoint
	case errors.As(s.Err, &oe):
		res.ProxyStatus = proxyStatusConnectionLimit
	case errors.Is(s.Err, context.DeadlineExceeded), errors.As(s.Err, &ne) && ne.Timeout():
		res.ProxyStatus = proxyStatusConnectTimeout
	case errors.Is(s.Err, context.Canceled):
	default:
		res.ProxyStatus = proxyStatusConnectRefused
	}
	return res
}
