package l7

import (
	"log"
	"log/slog"
	"net/http"
	"time"
)

// ServerOptions are the downstream settings of an HTTP listener.
type ServerOptions struct {
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	Logger            *slog.Logger
}

// NewServer returns the http.Server for one HTTP listener: HTTP/1.1 and HTTP/2 cleartext
// (prior knowledge) on the same port, with the framing guard (see GuardConn) reachable
// from requests. handler is called for every request.
func NewServer(o ServerOptions, handler http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           handler,
		Protocols:         &p,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ConnContext:       connContext,
		ErrorLog:          log.New(slogWriter{lg}, "", 0),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			SendPingTimeout:      30 * time.Second,
			PingTimeout:          10 * time.Second,
		},
	}
}
