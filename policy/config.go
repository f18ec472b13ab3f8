package policy

// Config is the `policy:` block of the config file: how request paths are normalized,
// request filtering limits, access rules and rate limits. The zero Config (no block)
// normalizes paths with the defaults and allows everything. The config package decodes it
// strictly (unknown keys are errors) and calls Validate; Compile turns it into a Policy.
//
//	policy:
//	  normalize: {escaped_slashes: reject, case_insensitive: false}
//	  filter:
//	    max_header_count: 100
//	    max_header_bytes: 65536
//	    max_uri_length: 8192
//	    max_body_bytes: 10485760
//	    methods: [GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS]
//	    deny_headers: [{name: user-agent, regex: ".*sqlmap.*"}]
//	    ip_allow: [10.0.0.0/8]
//	    ip_deny: [10.66.0.0/16]
//	  access:
//	    default: deny
//	    dry_run: false
//	    rules:
//	      - {name: frontend-api, from: [spiffe://mesh.local/svc/frontend], paths: [/api/*], methods: [GET], action: allow}
//	      - {name: no-admin, from: [any], paths: [/admin, /admin/*], action: deny}
//	  rate_limits:
//	    - {path_prefix: /api/, requests_per_second: 100, burst: 200, key: source}
//	    - {name: tenants, paths: [/api/**], key: "header:x-tenant", global: true}
//	  connection_rate_limit: {connections_per_second: 500, burst: 1000, key: client_ip}
//	  rate_limit_service: {address: 127.0.0.1:8081, domain: ferry, timeout: 20ms, failure_mode: open}
type Config struct {
	// Normalize says how request paths are canonicalized before anything matches them.
	Normalize Normalize `yaml:"normalize" json:"normalize"`
	// Filter holds request limits and deny lists, checked before the access rules.
	Filter Filter `yaml:"filter" json:"filter"`
	// Access holds the access rules (RBAC).
	Access Access `yaml:"access" json:"access"`
	// RateLimits are local token-bucket limits on requests; every limit whose conditions
	// match a request applies to it.
	RateLimits []RateLimit `yaml:"rate_limits" json:"rate_limits,omitempty"`
	// ConnectionRateLimit, if set, limits new connections per second on TCP listeners (and
	// HTTP listeners, before any request is read).
	ConnectionRateLimit *ConnectionRateLimit `yaml:"connection_rate_limit" json:"connection_rate_limit,omitempty"`
	// RateLimitService, if set, is a global rate limit service (Envoy's
	// envoy.service.ratelimit.v3 protocol) that rate limits marked global ask.
	RateLimitService *RateLimitService `yaml:"rate_limit_service" json:"rate_limit_service,omitempty"`
}

// RateLimitService is `policy.rate_limit_service`.
type RateLimitService struct {
	// Address is host:port of the service, called over plaintext gRPC: run it on
	// loopback, or reach a remote one through an outbound listener of this sidecar (which
	// secures the hop with the mesh's mTLS).
	Address string `yaml:"address" json:"address"`
	// Domain is the service's domain for these limits. Default "ferry".
	Domain string `yaml:"domain" json:"domain,omitempty"`
	// Timeout bounds each call. Default 20ms.
	Timeout Duration `yaml:"timeout" json:"timeout,omitempty"`
	// FailureMode is what happens when the service cannot answer in time: "open" (allow,
	// the default) or "closed" (refuse with 500).
	FailureMode string `yaml:"failure_mode" json:"failure_mode,omitempty"`
}

// Normalize is the `policy.normalize` block.
type Normalize struct {
	// EscapedSlashes is what to do with %2F and %5C in a path: "reject" (400, the
	// default), "keep" (left encoded; rules do not see them as separators) or "unescape"
	// (decoded to "/" before matching and forwarding).
	EscapedSlashes string `yaml:"escaped_slashes" json:"escaped_slashes,omitempty"`
	// CaseInsensitive makes path matching ignore ASCII case (rules and routes alike). The
	// path forwarded keeps its case.
	CaseInsensitive bool `yaml:"case_insensitive" json:"case_insensitive,omitempty"`
}

// Filter is the `policy.filter` block. A zero limit is no limit.
type Filter struct {
	// MaxHeaderCount bounds the number of header fields (431).
	MaxHeaderCount int `yaml:"max_header_count" json:"max_header_count,omitempty"`
	// MaxHeaderBytes bounds the total size of the header fields, names and values (431).
	// The listener's max_header_bytes still bounds what the HTTP server reads at all.
	MaxHeaderBytes int `yaml:"max_header_bytes" json:"max_header_bytes,omitempty"`
	// MaxURILength bounds the length of the request target (414).
	MaxURILength int `yaml:"max_uri_length" json:"max_uri_length,omitempty"`
	// MaxBodyBytes bounds the request body (413, the body never forwarded).
	MaxBodyBytes int64 `yaml:"max_body_bytes" json:"max_body_bytes,omitempty"`
	// Methods, if set, are the only methods allowed (405 with an Allow header otherwise).
	Methods []string `yaml:"methods" json:"methods,omitempty"`
	// DenyHeaders refuses (403) a request matching any of these header conditions.
	DenyHeaders []HeaderMatch `yaml:"deny_headers" json:"deny_headers,omitempty"`
	// IPAllow, if set, are the only source addresses or CIDRs allowed (403 otherwise; TCP
	// connections are closed).
	IPAllow []string `yaml:"ip_allow" json:"ip_allow,omitempty"`
	// IPDeny are source addresses or CIDRs refused (403; TCP connections are closed). They
	// win over IPAllow.
	IPDeny []string `yaml:"ip_deny" json:"ip_deny,omitempty"`
}

// Access is the `policy.access` block: access rules evaluated on the caller's verified
// identity and address and on the request. In the default order (deny_first) deny rules
// win over allow rules: a request matching any deny rule is refused (403), else one
// matching an allow rule is allowed, else Default decides. In first_match order the first
// matching rule decides.
//
// With Source "consul" the rules are the Consul intentions whose destination is this
// service, which the sidecar follows with blocking queries and hands to Compile as
// Options.Rules, highest precedence first; they are evaluated first_match, and Rules must
// be empty.
type Access struct {
	// Source is where the rules come from: "file" (Rules; the default) or "consul".
	Source string `yaml:"source" json:"source,omitempty"`
	// Order is how rules are evaluated: "deny_first" (the default; see above) or
	// "first_match" (in order, the first rule that matches decides by its action). Source
	// consul is always first_match.
	Order string `yaml:"order" json:"order,omitempty"`
	// Default is the decision when no rule matches: "allow" or "deny". Empty means, for
	// source consul, "allow" (Consul's default without ACLs; set "deny" for a cluster whose
	// ACL default policy is deny) and otherwise "deny" if there is any allow rule (allow
	// rules then list what is allowed) and "allow" if not.
	Default string `yaml:"default" json:"default,omitempty"`
	// DryRun evaluates and counts every decision but denies nothing: a request that would
	// be denied is forwarded, and its decision says so (for logs, spans and metrics).
	DryRun bool `yaml:"dry_run" json:"dry_run,omitempty"`
	// Rules are the access rules, in order; the first matching deny rule (else the first
	// matching allow rule) is the one named in the decision.
	Rules []Rule `yaml:"rules" json:"rules,omitempty"`
}

// Rule is one access rule. It matches a request when the caller matches From and the
// request matches every condition set (Paths, Methods, Headers, Ports); an unset condition
// matches everything. On TCP listeners, where only the caller is known, an allow rule with
// request conditions (paths, methods, headers) never matches and a deny rule with them
// matches on From and Ports alone (failing closed); in first_match order, the first rule
// matching on From and Ports refuses the connection if it has request conditions.
type Rule struct {
	// Name names the rule in decisions, Proxy-Status, logs and metrics. Default
	// "rules[INDEX]". Letters, digits and . _ - : / [ ] only.
	Name string `yaml:"name" json:"name,omitempty"`
	// From lists the callers: SPIFFE IDs, where a whole segment (or the trust domain) "*"
	// matches any one segment and a final "**" one or more
	// (spiffe://mesh.local/ns/*/sa/web, spiffe://mesh.local/**); source CIDRs or addresses
	// (10.0.0.0/8, ::1); or "any" (everyone, authenticated or not). Empty means any.
	From []string `yaml:"from" json:"from,omitempty"`
	// Paths are path patterns (see PathPattern: /exact, /prefix/*, /glob/*/x, /a/**/b),
	// matched against the normalized path; any may match.
	Paths []string `yaml:"paths" json:"paths,omitempty"`
	// PathRegex are RE2 expressions matched against the whole normalized path (they are
	// anchored); any of them, or of Paths, may match.
	PathRegex []string `yaml:"path_regex" json:"path_regex,omitempty"`
	// Methods are request methods; any may match.
	Methods []string `yaml:"methods" json:"methods,omitempty"`
	// Headers are header conditions; all must match.
	Headers []HeaderMatch `yaml:"headers" json:"headers,omitempty"`
	// Ports are destination (listener) ports; any may match.
	Ports []int `yaml:"ports" json:"ports,omitempty"`
	// Action is "allow" or "deny"; with order first_match also "default": stop here and
	// let Default decide (Consul's meaning of an L7 intention none of whose permissions
	// matched).
	Action string `yaml:"action" json:"action"`
}

// RateLimit is one entry of `policy.rate_limits`: a token bucket for the requests matching
// its conditions (all requests when none is set), one bucket per key value when Key is set.
type RateLimit struct {
	// Name names the limit in decisions, Proxy-Status, logs and metrics. Default
	// "rate_limits[INDEX]".
	Name string `yaml:"name" json:"name,omitempty"`
	// PathPrefix limits requests whose normalized path starts with it.
	PathPrefix string `yaml:"path_prefix" json:"path_prefix,omitempty"`
	// Paths limits requests matching any of these path patterns (as in access rules).
	Paths []string `yaml:"paths" json:"paths,omitempty"`
	// Methods limits requests with one of these methods.
	Methods []string `yaml:"methods" json:"methods,omitempty"`
	// Headers limits requests matching all of these header conditions.
	Headers []HeaderMatch `yaml:"headers" json:"headers,omitempty"`
	// RequestsPerSecond is the bucket's refill rate; it must be positive.
	RequestsPerSecond float64 `yaml:"requests_per_second" json:"requests_per_second"`
	// Burst is the bucket's capacity. Default: RequestsPerSecond rounded up (at least 1).
	Burst int `yaml:"burst" json:"burst,omitempty"`
	// Key is what gets a bucket of its own: "" or "none" (one bucket for all), "source"
	// (the caller's SPIFFE ID; unauthenticated callers share one bucket), "client_ip" (or
	// "source_ip": the connection's source address), or "header:NAME" (the header's first
	// value; requests without it share one bucket).
	Key string `yaml:"key" json:"key,omitempty"`
	// MaxKeys bounds the per-key buckets kept (least recently used evicted first).
	// Default 10000.
	MaxKeys int `yaml:"max_keys" json:"max_keys,omitempty"`
	// Global asks rate_limit_service instead of keeping a local bucket; the limits are in
	// the service's configuration, so RequestsPerSecond, Burst and MaxKeys are not set. The
	// request is counted against the descriptor [{generic_key: NAME}] followed, per Key, by
	// {source_identity: ID}, {remote_address: IP} or {HEADER-NAME: VALUE} (left out when
	// the request has no such value).
	Global bool `yaml:"global" json:"global,omitempty"`
}

// ConnectionRateLimit is `policy.connection_rate_limit`: a token bucket for new
// connections.
type ConnectionRateLimit struct {
	// ConnectionsPerSecond is the refill rate; it must be positive.
	ConnectionsPerSecond float64 `yaml:"connections_per_second" json:"connections_per_second"`
	// Burst is the capacity. Default: ConnectionsPerSecond rounded up (at least 1).
	Burst int `yaml:"burst" json:"burst,omitempty"`
	// Key is "" or "none" (one bucket for the listener) or "client_ip" / "source_ip" (one per
	// source address).
	Key string `yaml:"key" json:"key,omitempty"`
	// MaxKeys bounds the per-address buckets kept. Default 10000.
	MaxKeys int `yaml:"max_keys" json:"max_keys,omitempty"`
}
