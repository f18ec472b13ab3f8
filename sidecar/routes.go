package sidecar

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/l7"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// routeBuild resolves the routes of one Apply's listeners: the upstreams they forward to,
// with their transports (shared with the listeners that name the same upstreams) and the
// routes' timeout and retry overrides. It is used under the Sidecar's lock only.
type routeBuild struct {
	s          *Sidecar
	cfg        *config.Config
	upTLS      map[string]l7.UpstreamTLS
	transports map[string]*l7.Transport // this Apply's transports, by upstream name
	local      l7.Target                // the inbound listener's local application
}

// upstreamTarget is what upstream name stands for with its own settings.
func (b *routeBuild) upstreamTarget(name string) l7.Target {
	uc := b.cfg.Upstream(name)
	u := b.s.upstreams[name]
	t := b.s.upstreamTransport(b.transports, name, l7.TransportOptions{
		Protocol: uc.Protocol, ConnectTimeout: uc.ConnectTimeout.D(),
		IdleTimeout: uc.IdleTimeout.D(), MaxIdleConnsPerHost: uc.MaxIdleConnsPerEndpoint, Breaker: u.breaker,
		TLS: withIdentities(b.upTLS[name], u)})
	return l7.Target{Name: name, Upstream: u, Transport: t, HashOn: uc.HashOn, RequestTimeout: uc.RequestTimeout.D(),
		Retry: retryPolicy(uc.Retries), Breaker: u.breaker}
}

// routing returns the l7 routing of a listener's routes (nil for none), compiled with
// opts, its metrics those of direction.
func (b *routeBuild) routing(routes []route.Route, opts route.Options, direction string) (*l7.Routing, error) {
	if len(routes) == 0 {
		return nil, nil
	}
	table, err := route.Compile(routes, opts)
	if err != nil {
		return nil, err // unreachable: validation compiled the routes
	}
	return b.routingOf(table, direction), nil
}

// routingOf is the l7 routing of a compiled route table whose default target is b.local.
func (b *routeBuild) routingOf(table *route.Table, direction string) *l7.Routing {
	return &l7.Routing{
		Table: table,
		Target: func(e *route.Entry, upstream string) l7.Target {
			t := b.local
			if upstream != config.InboundTarget {
				t = b.upstreamTarget(upstream)
			}
			if d := e.Timeout(); d > 0 {
				t.RequestTimeout = d
			}
			t.Retry = routeRetry(t.Retry, e.Retries())
			return t
		},
		Metrics: func(upstream, name string) *telemetry.HTTPMetrics {
			return b.s.metrics.HTTPRoute(direction, upstream, name)
		},
	}
}

// ingressRoutes compiles the routes of every http ingress listener of cfg, by address:
// they match paths as pol normalizes them, like the inbound's, and a route that names no
// upstream forwards to the listener's own target or upstream.
func ingressRoutes(cfg *config.Config, pol *policy.Policy) (map[string]*route.Table, error) {
	var out map[string]*route.Table
	for i := range cfg.Ingress {
		in := &cfg.Ingress[i]
		if len(in.Routes) == 0 || in.Protocol == config.ProtocolTCP {
			continue
		}
		opts := config.RouteOptions(cfg, true)
		opts.Normalize = pol.Normalize()
		t, err := route.Compile(in.Routes, opts)
		if err != nil {
			return nil, fmt.Errorf("ingress %s routes: %w", in.Address, err) // unreachable: validated
		}
		if out == nil {
			out = map[string]*route.Table{}
		}
		out[in.Address] = t
	}
	return out, nil
}

// inboundRouting is routing for the inbound listener, whose routes match paths as pol
// normalizes them (nil pol: the defaults, as the config's validation assumed).
func (b *routeBuild) inboundRouting(pol *policy.Policy) (*l7.Routing, error) {
	opts := config.RouteOptions(b.cfg, true)
	opts.Normalize = pol.Normalize()
	r, err := b.routing(b.cfg.Inbound.Routes, opts, telemetry.Inbound)
	if err != nil {
		return nil, fmt.Errorf("inbound routes: %w", err)
	}
	return r, nil
}

// outboundRouting is routing for an outbound listener: no policy, default normalization.
func (b *routeBuild) outboundRouting(o *config.Outbound) (*l7.Routing, error) {
	r, err := b.routing(o.Routes, config.RouteOptions(b.cfg, false), telemetry.Outbound)
	if err != nil {
		return nil, fmt.Errorf("outbound %s routes: %w", o.Address, err)
	}
	return r, nil
}

// routeRetry is the retry policy of a route whose upstream's policy is base (nil: none)
// and whose own is r (nil: keep base). The route's attempts, on and per_try_timeout
// replace the upstream's; backoff and buffer_limit stay the upstream's, or the defaults
// when it retries nothing. attempts 0 turns retries off on the route; an empty on keeps
// the upstream's conditions (the default ones when it has none).
func routeRetry(base *l7.RetryPolicy, r *route.Retries) *l7.RetryPolicy {
	if r == nil {
		return base
	}
	if r.Attempts == 0 {
		return nil
	}
	var p l7.RetryPolicy
	if base != nil {
		p = *base
	} else {
		on, _ := l7.ParseRetryOn(config.DefaultRetryOn())
		p = l7.RetryPolicy{On: on, BackoffBase: config.DefaultRetryBackoffBase,
			BackoffMax: 10 * config.DefaultRetryBackoffBase, BufferLimit: config.DefaultRetryBufferLimit}
	}
	p.Retries = r.Attempts
	if len(r.On) > 0 {
		on, err := l7.ParseRetryOn(r.On)
		if err != nil {
			panic(err) // unreachable: validation checked every condition
		}
		p.On = on
	}
	p.PerTryTimeout = time.Duration(r.PerTryTimeout)
	return &p
}

// routeRetryBudgets gives the circuit breaker of every upstream that a route retries but
// whose own config retries nothing the default retry budget: without one, its breaker
// would refuse every retry.
func routeRetryBudgets(cfg *config.Config, specs map[string]upstreamConfig) {
	check := func(routes []route.Route, local string) {
		for i := range routes {
			r := &routes[i]
			if r.Retries == nil || r.Retries.Attempts == 0 {
				continue
			}
			names := []string{}
			if r.Upstream != "" {
				names = append(names, r.Upstream)
			}
			for _, w := range r.Split {
				names = append(names, w.Upstream)
			}
			if len(names) == 0 && local != "" {
				names = append(names, local)
			}
			for _, n := range names {
				spec, ok := specs[n]
				if !ok || spec.limits.BudgetPercent > 0 || spec.limits.MinRetryConcurrency > 0 {
					continue
				}
				if uc := cfg.Upstream(n); uc != nil && uc.Retries != nil {
					continue // its own budget, as configured
				}
				spec.limits.BudgetPercent = config.DefaultRetryBudgetPercent
				spec.limits.MinRetryConcurrency = config.DefaultRetryMinRetryConcurrency
				specs[n] = spec
			}
		}
	}
	if in := cfg.Inbound; in != nil {
		check(in.Routes, inboundUpstream)
	}
	for i := range cfg.Outbound {
		check(cfg.Outbound[i].Routes, "")
	}
	for i := range cfg.Ingress {
		in := &cfg.Ingress[i]
		local := in.Upstream
		if local == "" {
			local = ingressUpstream(in.Address)
		}
		check(in.Routes, local)
	}
}

// upstreamTransport is transport reusing the transport this Apply already made for the
// upstream when the options are the same, so that listeners and routes that send to one
// upstream share its pool.
func (s *Sidecar) upstreamTransport(into map[string]*l7.Transport, name string, o l7.TransportOptions) *l7.Transport {
	if t := into[name]; t != nil && t.Options() == o {
		return t
	}
	return s.transport(into, name, o)
}

// listenerRoutes is one listener's routes as the status page lists them.
type listenerRoutes struct {
	Listener string // "inbound 0.0.0.0:21000" or "outbound 127.0.0.1:9191 (api)"
	Routes   []routeRow
}

// routeRow is one route on the status page.
type routeRow struct {
	Name, Match, Action, Options string
}

// statusRoutes describes the routes of cfg's listeners, in the config's order.
func statusRoutes(cfg *config.Config) []listenerRoutes {
	var out []listenerRoutes
	add := func(listener string, routes []route.Route, def string) {
		if len(routes) == 0 {
			return
		}
		lr := listenerRoutes{Listener: listener}
		for i := range routes {
			lr.Routes = append(lr.Routes, describeRoute(i, &routes[i], def))
		}
		out = append(out, lr)
	}
	if in := cfg.Inbound; in != nil {
		add("inbound "+in.Address, in.Routes, "the local application")
	}
	for _, o := range cfg.Outbound {
		name := "outbound " + o.Address
		if o.Upstream != "" {
			name += " (otherwise " + o.Upstream + ")"
		} else {
			name += " (otherwise 404)"
		}
		add(name, o.Routes, "")
	}
	for _, in := range cfg.Ingress {
		def := in.Target
		if in.Upstream != "" {
			def = "upstream " + in.Upstream
		}
		add("ingress "+in.Address, in.Routes, def)
	}
	return out
}

// describeRoute is the status-page row of the i-th route; def is where a route without
// an action forwards.
func describeRoute(i int, r *route.Route, def string) routeRow {
	row := routeRow{Name: r.Name}
	if row.Name == "" {
		row.Name = fmt.Sprintf("routes[%d]", i)
	}
	m := &r.Match
	var match []string
	switch {
	case m.Path != "":
		match = append(match, "path "+m.Path)
	case m.Prefix != "":
		match = append(match, "prefix "+m.Prefix)
	case m.Regex != "":
		match = append(match, "regex "+m.Regex)
	}
	if len(m.Methods) > 0 {
		match = append(match, strings.Join(m.Methods, ","))
	}
	for _, h := range m.Headers {
		match = append(match, "header "+h.Name)
	}
	for _, q := range m.Query {
		match = append(match, "query "+q.Name)
	}
	row.Match = strings.Join(match, " · ")
	if row.Match == "" {
		row.Match = "any"
	}
	switch {
	case r.Upstream != "":
		row.Action = "→ " + r.Upstream
	case len(r.Split) > 0:
		var parts []string
		for _, w := range r.Split {
			parts = append(parts, fmt.Sprintf("%s %d", w.Upstream, w.Weight))
		}
		row.Action = "split " + strings.Join(parts, ", ")
	case r.Redirect != nil:
		code := r.Redirect.Code
		if code == 0 {
			code = 301
		}
		row.Action = fmt.Sprintf("redirect %d", code)
	case r.Response != nil:
		row.Action = fmt.Sprintf("response %d", r.Response.Status)
	default:
		row.Action = "→ " + def
	}
	var opts []string
	if r.PrefixRewrite != "" {
		opts = append(opts, "prefix_rewrite "+r.PrefixRewrite)
	}
	if r.Timeout > 0 {
		opts = append(opts, "timeout "+time.Duration(r.Timeout).String())
	}
	if r.Retries != nil {
		opts = append(opts, fmt.Sprintf("retries %d", r.Retries.Attempts))
	}
	row.Options = strings.Join(opts, " · ")
	return row
}
