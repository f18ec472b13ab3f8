package config

import (
	"net"
	"strings"
	"time"
)

// Defaults of the Consul keys.
const (
	// DefaultConsulPassingOnly is upstreams[].consul.passing_only when left out.
	DefaultConsulPassingOnly = true
	// DefaultConsulCheckInterval is discovery.consul.check_interval when left out.
	DefaultConsulCheckInterval = 10 * time.Second
	// DefaultConsulDeregisterDelay is discovery.consul.deregister_delay when left out.
	DefaultConsulDeregisterDelay = time.Second
)

// Discovery is the top-level discovery block: how to reach the discovery services that
// upstreams name.
type Discovery struct {
	// Consul is how to reach the local Consul agent, and whether to register with it.
	// Without this block, upstreams with consul: reach the agent the way the Consul CLI
	// does: CONSUL_HTTP_ADDR and the other CONSUL_* variables, else 127.0.0.1:8500.
	Consul *ConsulDiscovery `yaml:"consul" json:"consul,omitempty"`
}

// ConsulDiscovery is discovery.consul. Every empty string falls back to the CONSUL_*
// environment variable the Consul CLI reads (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME) and then to Consul's default.
type ConsulDiscovery struct {
	// Address is the agent's HTTP API: host:port, http://host:port, https://host:port or
	// unix:///path. Default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `yaml:"address" json:"address,omitempty"`
	// Scheme is http or https (an https:// address implies https).
	Scheme string `yaml:"scheme" json:"scheme,omitempty"`
	// Datacenter is the default datacenter of queries; empty: the agent's own.
	Datacenter string `yaml:"datacenter" json:"datacenter,omitempty"`
	// Token is the ACL token. It is never shown in /config_dump.
	Token string `yaml:"token" json:"-"`
	// TokenFile is a file holding the ACL token (read at start and on reload); not with
	// token.
	TokenFile string `yaml:"token_file" json:"token_file,omitempty"`
	// CAFile, CertFile and KeyFile configure HTTPS to the agent: the CA bundle that signs
	// the agent's certificate, and a client certificate and key (given together).
	CAFile   string `yaml:"ca_file" json:"ca_file,omitempty"`
	CertFile string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file" json:"key_file,omitempty"`
	// TLSServerName is the name the agent's certificate is verified against (default:
	// the host of address).
	TLSServerName string `yaml:"tls_server_name" json:"tls_server_name,omitempty"`

	// Register registers the local application (service, at inbound.target) and Ferry
	// itself (a connect-proxy for it, at inbound.address) with the agent, with health
	// checks, and deregisters both on drain. Needs inbound. Default false.
	Register bool `yaml:"register" json:"register"`
	// ServiceID is the ID of the application's registration; Ferry's own is
	// "<service_id>-sidecar-proxy". Default "<service>-<inbound port>".
	ServiceID string `yaml:"service_id" json:"service_id,omitempty"`
	// ServiceTags are the tags of the application's registration.
	ServiceTags []string `yaml:"service_tags" json:"service_tags"`
	// CheckInterval is the interval of the registered health checks, and how often Ferry
	// makes sure its registration is still in the agent (re-registering after an agent
	// restart). Default 10s.
	CheckInterval Duration `yaml:"check_interval" json:"check_interval"`
	// DeregisterDelay is how long a drain waits after deregistering, before listeners
	// stop accepting, so that peers' blocking queries see the change first. Default 1s.
	DeregisterDelay Duration `yaml:"deregister_delay" json:"deregister_delay"`
	// ConfigKey, if set, is a Consul KV key (e.g. "ferry/web") holding a mesh-wide YAML
	// document with any of outbound, upstreams and policy: each key it sets replaces the
	// file's, and Ferry reloads when the value changes (see ParseWithOverlay). The file
	// must be valid on its own: it is what runs while Consul cannot be reached.
	ConfigKey string `yaml:"config_key" json:"config_key,omitempty"`
}

// ConsulUpstream is upstreams[].consul: the upstream's endpoints are the instances of a
// Consul service, followed with blocking queries.
type ConsulUpstream struct {
	// Service is the Consul service name. Default: the upstream's name.
	Service string `yaml:"service" json:"service"`
	// Tags keeps only instances carrying every one of these tags.
	Tags []string `yaml:"tags" json:"tags"`
	// Datacenter to query; empty: discovery.consul.datacenter, else the agent's own.
	Datacenter string `yaml:"datacenter" json:"datacenter,omitempty"`
	// Namespace (Consul Enterprise); empty: the default namespace.
	Namespace string `yaml:"namespace" json:"namespace,omitempty"`
	// PassingOnly keeps only instances whose checks all pass; with false, instances in
	// warning take traffic with their warning weight. Default true.
	PassingOnly bool `yaml:"passing_only" json:"passing_only"`
	// Connect resolves the service to its Connect sidecar proxies (Ferry sidecars
	// registered with register: true, or any connect-proxy) rather than to the instances
	// themselves.
	Connect bool `yaml:"connect" json:"connect"`
}

// applyConsulDefaults fills in what the file leaves out of the Consul keys.
func applyConsulDefaults(c *Config, l *locator) {
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		cu := u.Consul
		if cu == nil {
			continue
		}
		p := l.upstream(i).with("consul")
		if u.Endpoints == nil {
			u.Endpoints = []Endpoint{} // lists are never nil
		}
		if cu.Service == "" {
			cu.Service = u.Name
		}
		if cu.Tags == nil {
			cu.Tags = []string{}
		}
		if !l.has(p.with("passing_only")) {
			cu.PassingOnly = DefaultConsulPassingOnly
		}
	}
	if c.Discovery == nil || c.Discovery.Consul == nil {
		return
	}
	d, p := c.Discovery.Consul, path{"discovery", "consul"}
	if d.ServiceTags == nil {
		d.ServiceTags = []string{}
	}
	if !l.has(p.with("check_interval")) {
		d.CheckInterval = Duration(DefaultConsulCheckInterval)
	}
	if !l.has(p.with("deregister_delay")) {
		d.DeregisterDelay = Duration(DefaultConsulDeregisterDelay)
	}
}

// checkConsulUpstream checks the consul block of the upstream at p.
func checkConsulUpstream(col *collector, p path, cu *ConsulUpstream) {
	cp := p.with("consul")
	if cu.Service == "" {
		col.add(cp.with("service"), "missing service (the Consul service name)")
	} else if !validName(cu.Service) {
		col.add(cp.with("service"), "invalid service name %q (%s)", cu.Service, nameRule)
	}
	for i, t := range cu.Tags {
		if t == "" || strings.ContainsAny(t, "\x00\r\n") {
			col.add(cp.with("tags", i), "invalid tag %q", t)
		}
	}
	if cu.Datacenter != "" && !validName(cu.Datacenter) {
		col.add(cp.with("datacenter"), "invalid datacenter %q (%s)", cu.Datacenter, nameRule)
	}
	if cu.Namespace != "" && !validName(cu.Namespace) {
		col.add(cp.with("namespace"), "invalid namespace %q (%s)", cu.Namespace, nameRule)
	}
}

// checkDiscovery checks the top-level discovery block.
func checkDiscovery(c *Config, col *collector) {
	if c.Discovery == nil || c.Discovery.Consul == nil {
		return
	}
	d, p := c.Discovery.Consul, path{"discovery", "consul"}
	if d.Address != "" {
		if msg := consulAddressProblem(d.Address); msg != "" {
			col.add(p.with("address"), "invalid address %q: %s", d.Address, msg)
		}
	}
	switch d.Scheme {
	case "", "http", "https":
	default:
		col.add(p.with("scheme"), "unknown scheme %q (want http or https)", d.Scheme)
	}
	if d.Datacenter != "" && !validName(d.Datacenter) {
		col.add(p.with("datacenter"), "invalid datacenter %q (%s)", d.Datacenter, nameRule)
	}
	if d.Token != "" && d.TokenFile != "" {
		col.add(p.with("token_file"), "token and token_file are mutually exclusive")
	}
	if (d.CertFile == "") != (d.KeyFile == "") {
		given := "cert_file"
		if d.CertFile == "" {
			given = "key_file"
		}
		col.add(p.with(given), "cert_file and key_file must be given together")
	}
	for _, f := range []struct{ key, v string }{{"token_file", d.TokenFile}, {"ca_file", d.CAFile},
		{"cert_file", d.CertFile}, {"key_file", d.KeyFile}} {
		if strings.ContainsRune(f.v, 0) {
			col.add(p.with(f.key), "invalid file name %q", f.v)
		}
	}
	if d.Register && c.Inbound == nil {
		col.add(p.with("register"), "register needs an inbound block (the application to register and where peers reach it)")
	}
	if d.ServiceID != "" && !validName(d.ServiceID) {
		col.add(p.with("service_id"), "invalid service_id %q (%s)", d.ServiceID, nameRule)
	}
	for i, t := range d.ServiceTags {
		if t == "" || strings.ContainsAny(t, "\x00\r\n") {
			col.add(p.with("service_tags", i), "invalid tag %q", t)
		}
	}
	if d.CheckInterval < Duration(time.Second) {
		col.add(p.with("check_interval"), "must be at least 1s, got %s", d.CheckInterval)
	}
	notNegative(col, p.with("deregister_delay"), d.DeregisterDelay)
	if k := d.ConfigKey; k != "" && (strings.HasPrefix(k, "/") || strings.HasSuffix(k, "/") ||
		strings.ContainsFunc(k, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ' ' })) {
		col.add(p.with("config_key"), "invalid KV key %q (want a key such as ferry/web: no leading or trailing /, no spaces or control characters)", k)
	}
}

// consulAddressProblem says what is wrong with a Consul agent address, or returns "".
func consulAddressProblem(addr string) string {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" {
			return "missing socket path"
		}
		return ""
	}
	hostport := addr
	for _, s := range []string{"http://", "https://"} {
		if rest, ok := strings.CutPrefix(addr, s); ok {
			hostport = strings.TrimSuffix(rest, "/")
		}
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return "want host:port, http://host:port, https://host:port or unix:///path"
	}
	return addressProblem(hostport, false)
}
