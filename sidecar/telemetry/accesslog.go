package telemetry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// AccessLog writes one structured line (JSON, or key=value text) per request or TCP session. A nil
// *AccessLog logs nothing. Safe for concurrent use.
type AccessLog struct {
	log    *slog.Logger
	closer io.Closer
}

// OpenAccessLog opens the destination named in the config: "" or "off" (nil, no log),
// "stdout", "stderr", or a file path (appended to, created 0644). Lines are JSON; see
// OpenAccessLogFormat for the text format.
func OpenAccessLog(dest string) (*AccessLog, error) {
	return OpenAccessLogFormat(dest, AccessLogJSON)
}

// OpenAccessLogFormat is OpenAccessLog with a line format: AccessLogJSON (or "") or
// AccessLogText.
func OpenAccessLogFormat(dest, format string) (*AccessLog, error) {
	if format != "" && format != AccessLogJSON && format != AccessLogText {
		return nil, fmt.Errorf("access log: unknown format %q", format)
	}
	var w io.Writer
	var c io.Closer
	switch dest {
	case "", "off":
		return nil, nil
	case "stdout":
		w = os.Stdout
	case "stderr":
		w = os.Stderr
	default:
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		w, c = f, f
	}
	opts := &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.LevelKey {
				return slog.Attr{} // every line is an access record; the level says nothing
			}
			if len(groups) == 0 && a.Key == slog.MessageKey {
				a.Key = "kind"
			}
			return a
		},
	}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == AccessLogText {
		h = slog.NewTextHandler(w, opts)
	}
	return &AccessLog{log: slog.New(h), closer: c}, nil
}

// Close closes the file behind the log, if any.
func (a *AccessLog) Close() error {
	if a == nil || a.closer == nil {
		return nil
	}
	return a.closer.Close()
}

// Access-log line formats.
const (
	AccessLogJSON = "json" // one JSON object per line
	AccessLogText = "text" // slog's key=value text
)

// HTTPRecord is one access-log line for an HTTP request.
type HTTPRecord struct {
	Start       time.Time
	Direction   string
	Upstream    string
	Endpoint    string
	Method      string
	Authority   string
	Path        string
	Protocol    string
	Status      int
	ProxyStatus string
	BytesIn     int64
	BytesOut    int64
	Duration    time.Duration
	RequestID   string
	Downstream  string
	// Attempts is how many tries the request took (1 without retries).
	Attempts int
	// TraceID is the request's trace ID (32 hex digits), "" with tracing off.
	TraceID string
	// Route is the name of the route that matched, "" when none is named.
	Route string
	// PeerID is the peer sidecar's SPIFFE ID, "" without mTLS.
	PeerID string
	// Policy is the outcome of the policy decision that named a rule: "allowed",
	// "denied", "dry_run_denied" or "limited"; "" when no policy rule applied.
	Policy string
	// PolicyRule names the rule of that decision, e.g. "frontend-api" or "default".
	PolicyRule string
}

// HTTP writes r.
func (a *AccessLog) HTTP(r *HTTPRecord) {
	if a == nil {
		return
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "http",
		slog.Time("start", r.Start),
		slog.String("direction", r.Direction),
		slog.String("upstream", r.Upstream),
		slog.String("endpoint", r.Endpoint),
		slog.String("method", r.Method),
		slog.String("authority", r.Authority),
		slog.String("path", r.Path),
		slog.String("protocol", r.Protocol),
		slog.Int("status", r.Status),
		slog.String("proxy_status", r.ProxyStatus),
		slog.Int64("bytes_received", r.BytesIn),
		slog.Int64("bytes_sent", r.BytesOut),
		slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000),
		slog.String("request_id", r.RequestID),
		slog.String("downstream", r.Downstream),
		slog.Int("attempts", r.Attempts),
		slog.String("trace_id", r.TraceID),
		slog.String("route", r.Route),
		slog.String("peer_identity", r.PeerID),
		slog.String("policy", r.Policy),
		slog.String("policy_rule", r.PolicyRule),
	)
}

// TCPRecord is one access-log line for a TCP session.
type TCPRecord struct {
	Start      time.Time
	Direction  string
	Upstream   string
	Endpoint   string
	Downstream string
	BytesIn    int64
	BytesOut   int64
	Duration   time.Duration
	Error      string
	// TraceID is the session's trace ID (32 hex digits), "" with tracing off.
	TraceID string
	// PeerID is the peer sidecar's SPIFFE ID (inbound over mTLS), "" otherwise.
	PeerID string
}

// TCP writes r.
func (a *AccessLog) TCP(r *TCPRecord) {
	if a == nil {
		return
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "tcp",
		slog.Time("start", r.Start),
		slog.String("direction", r.Direction),
		slog.String("upstream", r.Upstream),
		slog.String("endpoint", r.Endpoint),
		slog.String("downstream", r.Downstream),
		slog.Int64("bytes_received", r.BytesIn),
		slog.Int64("bytes_sent", r.BytesOut),
		slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000),
		slog.String("error", r.Error),
		slog.String("trace_id", r.TraceID),
		slog.String("peer_identity", r.PeerID),
	)
}
