package route

import (
	"github.com/ferrymesh/ferry/policy"
)

// Route is one entry of a listener's `routes:` list. Routes are tried in order; the first
// whose Match holds handles the request. Exactly one action is set: Upstream, Split,
// Redirect or Response.
//
//	routes:
//	  - name: canary
//	    match: {prefix: /api/, headers: [{name: x-canary, exact: "1"}]}
//	    split: [{upstream: api-v2, weight: 90}, {upstream: api-v3, weight: 10}]
//	    prefix_rewrite: /
//	    request_headers: {set: {x-route: canary}, remove: [x-debug]}
//	    timeout: 5s
//	    retries: {attempts: 3, on: [gateway-error], per_try_timeout: 1s}
//	  - {name: old, match: {prefix: /v1/}, redirect: {prefix_rewrite: /v2/, code: 308}}
//	  - {name: gone, match: {path: /legacy}, response: {status: 410, body: "gone\n"}}
//	  - {name: api, match: {prefix: /}, upstream: api}
type Route struct {
	// Name names the route in logs, spans and metrics. Default "routes[INDEX]".
	Name string `yaml:"name" json:"name,omitempty"`
	// Match says which requests the route takes; empty takes all.
	Match Match `yaml:"match" json:"match"`

	// Upstream sends the request to this upstream.
	Upstream string `yaml:"upstream" json:"upstream,omitempty"`
	// Split sends the request to one of these upstreams, chosen at random in proportion to
	// the weights (a canary split).
	Split []WeightedUpstream `yaml:"split" json:"split,omitempty"`
	// Redirect answers with a redirect instead of forwarding.
	Redirect *Redirect `yaml:"redirect" json:"redirect,omitempty"`
	// Response answers with a fixed response instead of forwarding.
	Response *FixedResponse `yaml:"response" json:"response,omitempty"`

	// PrefixRewrite replaces the part of the path that Match.Prefix matched (forwarded
	// requests only; needs Match.Prefix).
	PrefixRewrite string `yaml:"prefix_rewrite" json:"prefix_rewrite,omitempty"`
	// RequestHeaders changes the request's headers before it is forwarded.
	RequestHeaders HeaderOps `yaml:"request_headers" json:"request_headers"`
	// ResponseHeaders changes the response's headers before it is returned.
	ResponseHeaders HeaderOps `yaml:"response_headers" json:"response_headers"`
	// Timeout overrides the upstream's request_timeout; 0 keeps it.
	Timeout policy.Duration `yaml:"timeout" json:"timeout,omitempty"`
	// Retries overrides the upstream's retry policy; absent keeps it.
	Retries *Retries `yaml:"retries" json:"retries,omitempty"`
}

// Match is a route's conditions; all that are set must hold. At most one of Path, Prefix and
// Regex is set; none matches every path.
type Match struct {
	// Path matches this normalized path exactly.
	Path string `yaml:"path" json:"path,omitempty"`
	// Prefix matches normalized paths starting with it.
	Prefix string `yaml:"prefix" json:"prefix,omitempty"`
	// Regex matches normalized paths the RE2 expression matches in whole.
	Regex string `yaml:"regex" json:"regex,omitempty"`
	// Methods matches requests with any of these methods.
	Methods []string `yaml:"methods" json:"methods,omitempty"`
	// Headers matches requests satisfying all these header conditions.
	Headers []policy.HeaderMatch `yaml:"headers" json:"headers,omitempty"`
	// Query matches requests satisfying all these query-parameter conditions.
	Query []QueryMatch `yaml:"query" json:"query,omitempty"`
}

// QueryMatch is a condition on a query parameter (its decoded name and value). Exactly one
// of Exact, Prefix, Regex, Present and Absent is set; a parameter given several times
// matches when any value does.
type QueryMatch struct {
	// Name is the parameter's name, compared after decoding.
	Name string `yaml:"name" json:"name"`
	// Exact matches a value equal to this string (which may be empty).
	Exact *string `yaml:"exact" json:"exact,omitempty"`
	// Prefix matches a value starting with this string.
	Prefix string `yaml:"prefix" json:"prefix,omitempty"`
	// Regex matches a value the RE2 expression matches in whole.
	Regex string `yaml:"regex" json:"regex,omitempty"`
	// Present matches when the parameter is given, with any value.
	Present bool `yaml:"present" json:"present,omitempty"`
	// Absent matches when the parameter is not given.
	Absent bool `yaml:"absent" json:"absent,omitempty"`
}

// WeightedUpstream is one upstream of a split.
type WeightedUpstream struct {
	// Upstream names an upstream.
	Upstream string `yaml:"upstream" json:"upstream"`
	// Weight is relative to the other entries' weights; 0 takes no traffic.
	Weight uint32 `yaml:"weight" json:"weight"`
}

// Redirect builds the Location of a redirect from the request's URL, replacing the parts set.
type Redirect struct {
	// Scheme replaces the scheme (http or https).
	Scheme string `yaml:"scheme" json:"scheme,omitempty"`
	// Host replaces the host (and drops the request's port unless Port is set).
	Host string `yaml:"host" json:"host,omitempty"`
	// Port replaces the port.
	Port int `yaml:"port" json:"port,omitempty"`
	// Path replaces the whole path.
	Path string `yaml:"path" json:"path,omitempty"`
	// PrefixRewrite replaces the part of the path Match.Prefix matched.
	PrefixRewrite string `yaml:"prefix_rewrite" json:"prefix_rewrite,omitempty"`
	// StripQuery drops the query string.
	StripQuery bool `yaml:"strip_query" json:"strip_query,omitempty"`
	// Code is the status: 301 (default), 302, 303, 307 or 308.
	Code int `yaml:"code" json:"code,omitempty"`
}

// FixedResponse is a response the route sends itself.
type FixedResponse struct {
	// Status is the HTTP status, 200 to 599.
	Status int `yaml:"status" json:"status"`
	// Body is the response body.
	Body string `yaml:"body" json:"body,omitempty"`
	// Headers are response headers (the Content-Type defaults to text/plain).
	Headers map[string]string `yaml:"headers" json:"headers,omitempty"`
}

// HeaderOps changes headers: Remove first, then Set (replacing any values), then Add
// (appending a value).
type HeaderOps struct {
	// Add appends a value to each header named.
	Add map[string]string `yaml:"add" json:"add,omitempty"`
	// Set replaces the values of each header named.
	Set map[string]string `yaml:"set" json:"set,omitempty"`
	// Remove deletes the headers named.
	Remove []string `yaml:"remove" json:"remove,omitempty"`
}

// Retries overrides an upstream's retry policy for one route.
type Retries struct {
	// Attempts is how many times a failed request may be retried.
	Attempts int `yaml:"attempts" json:"attempts"`
	// On lists the failures retried, as in an upstream's retries.on.
	On []string `yaml:"on" json:"on,omitempty"`
	// PerTryTimeout bounds each try; 0 is no limit per try.
	PerTryTimeout policy.Duration `yaml:"per_try_timeout" json:"per_try_timeout,omitempty"`
}
