package config

import (
	"reflect"
	"slices"
	"strings"

	"github.com/ferrymesh/ferry/policy/normalize"
	"github.com/ferrymesh/ferry/policy/route"
)

// checkRoutes validates the routes of the listener at p (protocol its protocol) with
// route.Validate and records each problem at its key's line, its path prefixed with
// p.routes. names holds the upstream names; namesHidden says some failed to decode, so an
// unknown name is not reported. inbound says the listener is the inbound one, whose
// routes are matched on paths normalized as the policy block says (outbound listeners
// enforce no policy and normalize with the defaults).
func checkRoutes(c *Config, col *collector, p path, protocol string, routes []route.Route, names map[string]int,
	namesHidden, inbound bool) {
	rp := p.with("routes")
	if len(routes) == 0 {
		return
	}
	if protocol == ProtocolTCP {
		col.add(rp, "routes apply only to http listeners (protocol is tcp)")
		return
	}
	opts := RouteOptions(c, inbound)
	opts.Upstream = func(name string) bool {
		_, ok := names[name]
		return ok || namesHidden
	}
	for _, fe := range route.Validate(routes, opts) {
		msg := fe.Msg
		if strings.HasPrefix(msg, "unknown upstream") {
			msg += " (" + knownUpstreams(c) + ")"
		}
		if strings.HasPrefix(msg, "unknown retry condition") {
			msg += " (want " + strings.Join(RetryConditions, ", ") + ")"
		}
		col.add(rp.with(fe.Path...), "%s", msg)
	}
	for i := range routes {
		r := &routes[i]
		if r.Retries == nil {
			continue
		}
		if r.Retries.Attempts > MaxRetryAttempts {
			col.add(rp.with(i, "retries", "attempts"), "must be from 0 to %d, got %d", MaxRetryAttempts, r.Retries.Attempts)
		}
		if slices.Contains(r.Retries.On, RetryRetriableStatusCodes) {
			checkRouteStatusCodes(c, col, rp.with(i, "retries", "on"), r)
		}
	}
}

// checkRouteStatusCodes reports a route retrying on retriable-status-codes while a target
// it forwards to has no codes: a route cannot list them itself, it takes its upstream's.
func checkRouteStatusCodes(c *Config, col *collector, p path, r *route.Route) {
	var ups []string
	if r.Upstream != "" {
		ups = append(ups, r.Upstream)
	}
	for _, w := range r.Split {
		ups = append(ups, w.Upstream)
	}
	if len(ups) == 0 && r.Redirect == nil && r.Response == nil {
		col.add(p, "%s takes the codes of the upstream's retries, and the local application has none", RetryRetriableStatusCodes)
		return
	}
	for _, name := range ups {
		if u := c.Upstream(name); u != nil && (u.Retries == nil || len(u.Retries.RetriableStatusCodes) == 0) {
			col.add(p, "%s takes the codes of the upstream's retries, and upstream %q lists no retriable_status_codes", RetryRetriableStatusCodes, name)
		}
	}
}

// InboundTarget is the name the inbound and ingress listeners' routes compile with as their
// route.Options.DefaultUpstream: a route that sets none of upstream, split, redirect and
// response forwards where the listener itself does (the inbound: the local application;
// an ingress: its target or upstream). No upstream can have this name.
const InboundTarget = "inbound|local"

// RouteOptions are the options the routes of a listener compile with: the inbound
// listener's (inbound true) normalize paths as the policy block says and forward to
// InboundTarget by default, outbound listeners' normalize with the defaults and must name
// their action; retries.on takes the conditions an upstream's retries.on takes.
// Options.Upstream is left nil. It only reads c.
func RouteOptions(c *Config, inbound bool) route.Options {
	var norm normalize.Options
	def := ""
	if inbound {
		def = InboundTarget
		es, err := normalize.ParseEscapedSlashes(c.Policy.Normalize.EscapedSlashes)
		if err == nil { // (an invalid value is reported with the policy block)
			norm.EscapedSlashes = es
		}
		norm.CaseInsensitive = c.Policy.Normalize.CaseInsensitive
	}
	return route.Options{
		Normalize:       norm,
		DefaultUpstream: def,
		RetryOn:         func(cond string) bool { return slices.Contains(RetryConditions, cond) },
	}
}

// routeDefaults makes every list and map inside routes that the file leaves out empty,
// as policyDefaults does for the policy block, and an empty list of routes nil (the key
// is left out when written back), so that a parsed config written back with yaml.Marshal
// parses to the same value. The routes are otherwise kept as written (route names
// default when compiled).
func routeDefaults(routes *[]route.Route) {
	if len(*routes) == 0 {
		*routes = nil
		return
	}
	emptyCollections(reflect.ValueOf(routes).Elem())
}

// emptyCollections is emptyLists that also replaces nil maps by empty ones.
func emptyCollections(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			emptyCollections(v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if f := v.Field(i); f.CanSet() {
				emptyCollections(f)
			}
		}
	case reflect.Map:
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
	case reflect.Slice:
		if v.IsNil() {
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			return
		}
		for i := 0; i < v.Len(); i++ {
			emptyCollections(v.Index(i))
		}
	}
}
