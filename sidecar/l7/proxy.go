// Package l7 proxies HTTP: HTTP/1.1 with keep-alive, HTTP/2 cleartext, gRPC (all streaming
// kinds, trailers) and WebSocket upgrades, on top of net/http's server and
// httputil.ReverseProxy with per-upstream pooled transports.
package l7

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// Upstream is what a Handler sends requests to.
type Upstream interface {
	// Picker returns the upstream's current picker. It is called once per attempt and must
	// be cheap (an atomic load).
	Picker() balancer.Picker
}

// Options configures a Handler.
type Options struct {
	// Direction is telemetry.Inbound or telemetry.Outbound.
	Direction string
	// Name is the upstream's name in metrics and logs.
	Name string
	// Upstream supplies pickers.
	Upstream Upstream
	// Transport holds the pooled connections to the upstream's endpoints.
	Transport *Transport
	// HashOn is the ring_hash/maglev key: "header:NAME", "cookie:NAME", "source_ip" or "".
	HashOn string
	// RequestTimeout bounds the wait for response headers; 0 disables it.
	RequestTimeout time.Duration
	// Metrics receives per-request metrics; required.
	Metrics *telemetry.HTTPMetrics
	// AccessLog receives one record per request; nil disables it.
	AccessLog *telemetry.AccessLog
	// Logger receives proxy errors; nil discards them.
	Logger *slog.Logger
}

// Handler proxies every request it serves to one upstream. It is immutable after NewHandler
// and safe for concurrent use; a config change builds a new Handler.
type Handler struct {
	o      Options
	rp     *httputil.ReverseProxy
	hash   func(*http.Request) (uint64, bool)
	logger *slog.Logger
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns a Handler for o.
func NewHandler(o Options) *Handler {
	h := &Handler{o: o, logger: o.Logger}
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	h.hash = hashFunc(o.HashOn)
	h.rp = &httputil.ReverseProxy{
		Rewrite:      h.rewrite,
		Transport:    roundTripper{h},
		ErrorHandler: h.errorHandler,
		BufferPool:   newBufferPool(),
		ErrorLog:     log.New(slogWriter{h.logger}, "", 0),
	}
	return h
}

// state is the per-request record shared by ServeHTTP, the round trip and the error handler.
// It is also the ResponseWriter handed to the reverse proxy, so that one allocation serves
// all three.
type state struct {
	http.ResponseWriter
	status      int
	written     int64
	endpoint    string
	requestID   string
	proxyStatus string
	reply       *LocalReply
}

type stateKey struct{}

func (s *state) WriteHeader(code int) {
	if s.status == 0 || (s.status >= 100 && s.status < 200 && code >= 200) {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *state) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.written += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack (streaming, WebSocket).
func (s *state) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ServeHTTP proxies r to the upstream.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	g := guardFrom(r.Context())
	if g != nil {
		defer g.requestDone()
	}
	st := &state{ResponseWriter: w}
	st.requestID = r.Header.Get("X-Request-Id")
	if st.requestID == "" {
		st.requestID = newRequestID()
		r.Header.Set("X-Request-Id", st.requestID)
	}
	h.o.Metrics.Active.Inc()
	if g != nil && g.takeConflict() {
		h.localReply(st, r, &LocalReply{Status: http.StatusBadRequest, Type: ErrHTTPRequestError,
			Details: "ambiguous message framing (Transfer-Encoding with Content-Length, or on HTTP/1.0)"})
		w.Header().Set("Connection", "close")
	} else {
		h.rp.ServeHTTP(st, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
	}
	h.o.Metrics.Active.Dec()
	if st.status == 0 {
		st.status = http.StatusOK
	}
	h.o.Metrics.Request(st.status)
	d := time.Since(start)
	h.o.Metrics.Duration.Observe(d.Seconds())
	if h.o.AccessLog != nil {
		h.o.AccessLog.HTTP(&telemetry.HTTPRecord{
			Start: start, Direction: h.o.Direction, Upstream: h.o.Name, Endpoint: st.endpoint,
			Method: r.Method, Authority: r.Host, Path: r.URL.RequestURI(), Protocol: r.Proto,
			Status: st.status, ProxyStatus: st.proxyStatus, BytesIn: max(r.ContentLength, 0),
			BytesOut: st.written, Duration: d, RequestID: st.requestID, Downstream: r.RemoteAddr,
		})
	}
}

// rewrite builds the upstream request: the reverse proxy has already removed hop-by-hop
// headers and X-Forwarded-*; the Host header is kept as the caller sent it.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	out, in := pr.Out, pr.In
	out.URL.Scheme = "http"
	out.URL.Host = in.Host // replaced by the picked endpoint in RoundTrip
	clientIP, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		clientIP = in.RemoteAddr
	}
	if prior := in.Header["X-Forwarded-For"]; len(prior) > 0 {
		out.Header["X-Forwarded-For"] = []string{strings.Join(prior, ", ") + ", " + clientIP}
	} else {
		out.Header["X-Forwarded-For"] = []string{clientIP}
	}
	if p := in.Header["X-Forwarded-Proto"]; len(p) > 0 {
		out.Header["X-Forwarded-Proto"] = p[:1]
	} else if in.TLS != nil {
		out.Header["X-Forwarded-Proto"] = []string{"https"}
	} else {
		out.Header["X-Forwarded-Proto"] = []string{"http"}
	}
	if fh := in.Header["X-Forwarded-Host"]; len(fh) > 0 {
		out.Header["X-Forwarded-Host"] = fh[:1]
	}
}

type roundTripper struct{ h *Handler }

// RoundTrip picks an endpoint and sends the request to it.
func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	h := rt.h
	st, _ := req.Context().Value(stateKey{}).(*state)
	var info balancer.PickInfo
	info.Hash, info.HasHash = h.hash(req)
	ep, err := h.o.Upstream.Picker().Pick(info)
	if err != nil {
		return nil, classify(req.Context(), err)
	}
	req.URL.Host = ep.Address
	if st != nil {
		st.endpoint = ep.Address
	}
	ep.Begin()
	var timer *time.Timer
	if to := h.timeout(req); to > 0 {
		ctx, cancel := context.WithCancelCause(req.Context())
		timer = time.AfterFunc(to, func() { cancel(errResponseTimeout) })
		req = req.WithContext(ctx)
	}
	resp, err := h.o.Transport.RoundTrip(req)
	if timer != nil {
		timer.Stop()
	}
	if err != nil {
		ep.Done(balancer.DoneInfo{Err: err})
		return nil, classify(req.Context(), err)
	}
	d := &doneBody{ReadCloser: resp.Body, ep: ep, status: resp.StatusCode}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &doneRWBody{doneBody: d, w: rwc}
	} else {
		resp.Body = d
	}
	return resp, nil
}

// timeout is the wait allowed for response headers: request_timeout, or for a gRPC call
// carrying a shorter grpc-timeout, that deadline.
func (h *Handler) timeout(req *http.Request) time.Duration {
	to := h.o.RequestTimeout
	if gt := req.Header.Get("Grpc-Timeout"); gt != "" {
		if d, ok := parseGRPCTimeout(gt); ok && (to == 0 || d < to) {
			to = d
		}
	}
	return to
}

// parseGRPCTimeout parses the grpc-timeout header ("100m", "5S").
func parseGRPCTimeout(s string) (time.Duration, bool) {
	if len(s) < 2 || len(s) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[s[len(s)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// doneBody reports the end of the call to the endpoint once the response body is finished,
// so least_request sees streams as active for as long as they last.
type doneBody struct {
	io.ReadCloser
	ep     *balancer.Endpoint
	status int
	done   atomic.Bool
}

func (b *doneBody) finish(err error) {
	if b.done.CompareAndSwap(false, true) {
		b.ep.Done(balancer.DoneInfo{Err: err, Status: b.status})
	}
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.finish(nil)
	} else if err != nil {
		b.finish(err)
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.finish(nil)
	return b.ReadCloser.Close()
}

// doneRWBody is the body of a 101 Switching Protocols response: the reverse proxy writes to
// it as the upgraded connection.
type doneRWBody struct {
	*doneBody
	w io.Writer
}

func (b *doneRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// errorHandler answers for a failed round trip.
func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := w.(*state)
	if st == nil {
		st = &state{ResponseWriter: w}
	}
	if r.Context().Err() != nil {
		// The client went away (the response timeout cancels only the upstream request's
		// context, never this one): nobody is left to answer.
		st.status = statusClientClosed
		st.proxyStatus = ProxyName + "; error=" + ErrConnectionTerminated + `; details="client closed the request"`
		return
	}
	lr := classify(r.Context(), err)
	h.logger.Warn("upstream request failed", "direction", h.o.Direction, "upstream", h.o.Name,
		"endpoint", st.endpoint, "error", err, "proxy_status", lr.Type, "request_id", st.requestID)
	h.localReply(st, r, lr)
}

// localReply writes a response made by Ferry: the HTTP status, Proxy-Status, and for gRPC
// callers a trailers-only gRPC status.
func (h *Handler) localReply(st *state, r *http.Request, lr *LocalReply) {
	st.reply = lr
	st.proxyStatus = lr.ProxyStatus()
	h.o.Metrics.ProxyError(lr.Type)
	hdr := st.Header()
	hdr.Set("Proxy-Status", st.proxyStatus)
	hdr.Set("X-Request-Id", st.requestID)
	if lr.GRPCCode != 0 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		hdr.Set("Content-Type", "application/grpc")
		hdr.Set("Grpc-Status", strconv.Itoa(lr.GRPCCode))
		hdr.Set("Grpc-Message", lr.Type+": "+lr.Details)
		st.WriteHeader(http.StatusOK)
		return
	}
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	st.WriteHeader(lr.Status)
	_, _ = io.WriteString(st, lr.Type+": "+lr.Details+"\n")
}

// bufferPool lends the reverse proxy its 32 KiB copy buffers.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (bp *bufferPool) Get() []byte  { return *(bp.p.Get().(*[]byte)) }
func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }

// slogWriter adapts the reverse proxy's log.Logger to slog.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)), "component", "reverseproxy")
	return len(p), nil
}
