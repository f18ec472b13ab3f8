package l7

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"

	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
)

// RFC 9209 Proxy-Status error types Ferry uses.
const (
	ErrDestinationUnavailable = "destination_unavailable"
	ErrConnectionRefused      = "connection_refused"
	ErrConnectionTimeout      = "connection_timeout"
	ErrConnectionTerminated   = "connection_terminated"
	ErrHTTPResponseTimeout    = "http_response_timeout"
	ErrHTTPProtocolError      = "http_protocol_error"
	ErrHTTPRequestError       = "http_request_error"
	ErrProxyInternalError     = "proxy_internal_error"
	ErrConnectionLimit        = "connection_limit_reached"
	ErrDestinationNotFound    = "destination_not_found"
)

// ProxyName is the name Ferry gives itself in Proxy-Status headers.
const ProxyName = "ferry"

// statusClientClosed is recorded (never sent) when the client went away before the
// response, as nginx's 499.
const statusClientClosed = 499

// LocalReply is a response Ferry makes itself instead of the upstream's: an HTTP status and
// an RFC 9209 error type with details.
type LocalReply struct {
	Status  int
	Type    string
	Details string
	// GRPCCode is the gRPC status sent to gRPC callers.
	GRPCCode int
	Err      error
}

func (e *LocalReply) Error() string {
	if e.Err != nil {
		return e.Type + ": " + e.Details + ": " + e.Err.Error()
	}
	return e.Type + ": " + e.Details
}

func (e *LocalReply) Unwrap() error { return e.Err }

// ProxyStatus is the value of the Proxy-Status header for e.
func (e *LocalReply) ProxyStatus() string {
	return ProxyName + "; error=" + e.Type + "; details=" + strconv.Quote(e.Details)
}

// gRPC status codes used in local replies.
const (
	grpcInvalidArgument  = 3
	grpcUnimplemented    = 12
	grpcDeadlineExceeded = 4
	grpcInternal         = 13
	grpcUnavailable      = 14
)

var errResponseTimeout = errors.New("upstream response timeout")

// classify turns an error from picking or from the upstream round trip into a local reply.
func classify(ctx context.Context, err error) *LocalReply {
	var lr *LocalReply
	var oe *circuit.OverflowError
	switch {
	case errors.As(err, &lr):
		return lr
	case errors.As(err, &oe):
		return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrConnectionLimit, Details: oe.Error(), GRPCCode: grpcUnavailable, Err: err}
	case classifyTLS(err) != nil:
		return classifyTLS(err)
	case errors.Is(err, balancer.ErrNoEndpoint):
		return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrDestinationUnavailable, Details: "no endpoint", GRPCCode: grpcUnavailable, Err: err}
	case errors.Is(context.Cause(ctx), errResponseTimeout) || errors.Is(err, errResponseTimeout):
		return &LocalReply{Status: http.StatusGatewayTimeout, Type: ErrHTTPResponseTimeout, Details: "no response headers within request_timeout", GRPCCode: grpcDeadlineExceeded, Err: err}
	case errors.Is(context.Cause(ctx), errPerTryTimeout):
		return &LocalReply{Status: http.StatusGatewayTimeout, Type: ErrHTTPResponseTimeout, Details: "no response headers within per_try_timeout", GRPCCode: grpcDeadlineExceeded, Err: err}
	case IsDialError(err):
		var ne net.Error
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrConnectionRefused, Details: "connection refused", GRPCCode: grpcUnavailable, Err: err}
		case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
			return &LocalReply{Status: http.StatusGatewayTimeout, Type: ErrConnectionTimeout, Details: "connect_timeout elapsed", GRPCCode: grpcUnavailable, Err: err}
		default:
			return &LocalReply{Status: http.StatusServiceUnavailable, Type: ErrDestinationUnavailable, Details: "connect failed: " + rootCause(err), GRPCCode: grpcUnavailable, Err: err}
		}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return &LocalReply{Status: http.StatusBadGateway, Type: ErrConnectionTerminated, Details: "upstream closed the connection before responding", GRPCCode: grpcUnavailable, Err: err}
	default:
		return &LocalReply{Status: http.StatusBadGateway, Type: ErrHTTPProtocolError, Details: rootCause(err), GRPCCode: grpcInternal, Err: err}
	}
}

func rootCause(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		err = u
	}
}
