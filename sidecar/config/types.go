// Package config is Ferry's configuration file: the YAML schema, its defaults, and
// validation that reports every problem with file:line. A *Config returned by Load or Parse
// is fully validated and defaulted; treat it as immutable.
package config

import (
	"time"
)

// Config is the whole file.
type Config struct {
	// Service is this service's name in the mesh.
	Service string `yaml:"service" json:"service"`
	// Admin is the admin listener.
	Admin Admin `yaml:"admin" json:"admin"`
	// Inbound is where peer sidecars reach the local application; optional.
	Inbound *Inbound `yaml:"inbound" json:"inbound,omitempty"`
	// Outbound lists the listeners the local application calls, one per upstream.
	Outbound []Outbound `yaml:"outbound" json:"outbound"`
	// Upstreams lists the services this one calls.
	Upstreams []Upstream `yaml:"upstreams" json:"upstreams"`
	// DrainTimeout bounds how long in-flight requests and TCP sessions may take to finish on
	// SIGTERM/SIGINT and on listeners removed by a reload. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout" json:"drain_timeout"`
	// Telemetry configures access logs (tracing and more come with the telemetry work).
	Telemetry Telemetry `yaml:"telemetry" json:"telemetry"`

	// File is the path the config was read from (not a YAML key).
	File string `yaml:"-" json:"file"`
	// Version is a content hash of the file (not a YAML key).
	Version string `yaml:"-" json:"version"`
}

// Telemetry is the telemetry block.
type Telemetry struct {
	// AccessLog is where access logs go: "" or "off" (none, the default), "stdout",
	// "stderr", or a file path.
	AccessLog string `yaml:"access_log" json:"access_log,omitempty"`
}

// Admin is the admin HTTP listener.
type Admin struct {
	// Address defaults to 127.0.0.1:9901.
	Address string `yaml:"address" json:"address"`
}

// Listener holds the settings every proxy listener shares.
type Listener struct {
	// Address is host:port to listen on.
	Address string `yaml:"address" json:"address"`
	// Protocol is "http" (HTTP/1.1, h2c, gRPC, WebSocket) or "tcp". Default http.
	Protocol string `yaml:"protocol" json:"protocol"`
	// IdleTimeout closes a downstream connection idle this long (HTTP keep-alive idle, or a
	// TCP session with no bytes either way). Default 5m for http, 1h for tcp.
	IdleTimeout Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// ReadHeaderTimeout bounds the time to read a request's headers (slowloris). Default 10s.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout" json:"read_header_timeout"`
	// MaxHeaderBytes bounds the size of a request's headers. Default 64 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes" json:"max_header_bytes"`
}

// Inbound is the listener peer sidecars reach; it forwards to the local application.
type Inbound struct {
	Listener `yaml:",inline" json:",inline"`
	// Target is host:port of the local application.
	Target string `yaml:"target" json:"target"`
	// ConnectTimeout bounds dialing the application. Default 1s.
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// RequestTimeout bounds the time from sending a request to the application until its
	// response headers arrive; 0 disables. Default 0 (the caller's sidecar times out).
	RequestTimeout Duration `yaml:"request_timeout" json:"request_timeout"`
}

// Outbound is a listener the local application calls to reach an upstream.
type Outbound struct {
	Listener `yaml:",inline" json:",inline"`
	// Upstream names an entry of Config.Upstreams.
	Upstream string `yaml:"upstream" json:"upstream"`
}

// Upstream is a service this one calls and how to call it.
type Upstream struct {
	// Name is the upstream's name, referenced by Outbound.Upstream.
	Name string `yaml:"name" json:"name"`
	// Endpoints lists static endpoints: "host:port" or {address, weight}.
	Endpoints []Endpoint `yaml:"endpoints" json:"endpoints"`
	// LB is the load-balancing policy: round_robin (default), least_request, random,
	// ring_hash, maglev.
	LB string `yaml:"lb" json:"lb"`
	// HashOn is the hash key for ring_hash and maglev: header:NAME, cookie:NAME or source_ip.
	HashOn string `yaml:"hash_on" json:"hash_on,omitempty"`
	// Protocol is how HTTP is spoken to the endpoints: "auto" (the downstream request's
	// protocol, the default), "http1", or "http2" (h2c with prior knowledge).
	Protocol string `yaml:"protocol" json:"protocol"`
	// ConnectTimeout bounds dialing an endpoint. Default 1s.
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// RequestTimeout bounds the time from sending a request until the response headers
	// arrive; 0 disables (streaming calls are bounded by IdleTimeout). Default 15s.
	RequestTimeout Duration `yaml:"request_timeout" json:"request_timeout"`
	// IdleTimeout closes pooled upstream connections idle this long. Default 90s.
	IdleTimeout Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// MaxIdleConnsPerEndpoint bounds the pool of idle HTTP/1.1 connections kept per
	// endpoint. Default 1024.
	MaxIdleConnsPerEndpoint int `yaml:"max_idle_connections_per_endpoint" json:"max_idle_connections_per_endpoint"`
}

// Endpoint is one static endpoint. In YAML it is either a "host:port" string or a mapping
// {address: host:port, weight: N}.
type Endpoint struct {
	Address string `yaml:"address" json:"address"`
	// Weight defaults to 1.
	Weight uint32 `yaml:"weight" json:"weight"`
}

// Duration is a time.Duration written in the file as a Go duration string ("1.5s", "200ms").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
