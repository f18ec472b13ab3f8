package config

import (
	"time"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// Protocol names used by Listener.Protocol and Upstream.Protocol.
const (
	// ProtocolHTTP is a listener speaking HTTP/1.1, h2c, gRPC and WebSocket.
	ProtocolHTTP = "http"
	// ProtocolTCP is a listener copying bytes without inspecting them.
	ProtocolTCP = "tcp"
	// ProtocolAuto speaks to an upstream in the downstream request's HTTP version.
	ProtocolAuto = "auto"
	// ProtocolHTTP1 speaks HTTP/1.1 to an upstream.
	ProtocolHTTP1 = "http1"
	// ProtocolHTTP2 speaks h2c with prior knowledge to an upstream.
	ProtocolHTTP2 = "http2"
)

// Defaults applied by Load and Parse to keys the file leaves out.
const (
	DefaultAdminAddress            = "127.0.0.1:9901"
	DefaultListenerProtocol        = ProtocolHTTP
	DefaultHTTPIdleTimeout         = 5 * time.Minute
	DefaultTCPIdleTimeout          = time.Hour
	DefaultReadHeaderTimeout       = 10 * time.Second
	DefaultMaxHeaderBytes          = 64 << 10
	DefaultConnectTimeout          = time.Second
	DefaultLB                      = balancer.RoundRobin
	DefaultUpstreamProtocol        = ProtocolAuto
	DefaultRequestTimeout          = 15 * time.Second
	DefaultUpstreamIdleTimeout     = 90 * time.Second
	DefaultMaxIdleConnsPerEndpoint = 1024
	DefaultDrainTimeout            = 30 * time.Second
	DefaultWeight                  = 1
)

// MaxWeight is the largest endpoint weight.
const MaxWeight = 1_000_000

// applyDefaults fills in what the file leaves out.
//
// An empty string has no meaning of its own in the schema, so empty strings take their
// default. Numbers and durations are different: "request_timeout: 0s" means "disabled" and
// must stay 0, and "weight: 0" must be refused rather than silently become 1. So numbers
// and durations take their default only when their key is absent from the file (or null),
// which l.has answers from the YAML node tree that Parse decodes alongside the struct. This
// keeps the schema's plain value types (no pointers, no hidden "was set" fields) for the
// packages that read a Config.
func applyDefaults(c *Config, l *locator) {
	dur := func(d *Duration, p path, def time.Duration) {
		if !l.has(p) {
			*d = Duration(def)
		}
	}
	num := func(n *int, p path, def int) {
		if !l.has(p) {
			*n = def
		}
	}
	listener := func(ln *Listener, p path) {
		if ln.Protocol == "" {
			ln.Protocol = DefaultListenerProtocol
		}
		idle := DefaultHTTPIdleTimeout
		if ln.Protocol == ProtocolTCP {
			idle = DefaultTCPIdleTimeout
		}
		dur(&ln.IdleTimeout, p.with("idle_timeout"), idle)
		dur(&ln.ReadHeaderTimeout, p.with("read_header_timeout"), DefaultReadHeaderTimeout)
		num(&ln.MaxHeaderBytes, p.with("max_header_bytes"), DefaultMaxHeaderBytes)
	}

	if c.Admin.Address == "" {
		c.Admin.Address = DefaultAdminAddress
	}
	// Lists are never nil, so that a config reads the same however it was written and
	// /config_dump shows [] rather than null.
	if c.Outbound == nil {
		c.Outbound = []Outbound{}
	}
	if c.Upstreams == nil {
		c.Upstreams = []Upstream{}
	}
	if in := c.Inbound; in != nil {
		p := path{"inbound"}
		listener(&in.Listener, p)
		dur(&in.ConnectTimeout, p.with("connect_timeout"), DefaultConnectTimeout)
	}
	for i := range c.Outbound {
		listener(&c.Outbound[i].Listener, l.outbound(i))
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := l.upstream(i)
		if u.LB == "" {
			u.LB = DefaultLB
		}
		if u.Protocol == "" {
			u.Protocol = DefaultUpstreamProtocol
		}
		dur(&u.ConnectTimeout, p.with("connect_timeout"), DefaultConnectTimeout)
		dur(&u.RequestTimeout, p.with("request_timeout"), DefaultRequestTimeout)
		dur(&u.IdleTimeout, p.with("idle_timeout"), DefaultUpstreamIdleTimeout)
		num(&u.MaxIdleConnsPerEndpoint, p.with("max_idle_connections_per_endpoint"), DefaultMaxIdleConnsPerEndpoint)
		for j := range u.Endpoints {
			if !l.has(l.endpoint(i, j).with("weight")) {
				u.Endpoints[j].Weight = DefaultWeight
			}
		}
	}
	dur(&c.DrainTimeout, path{"drain_timeout"}, DefaultDrainTimeout)
}
