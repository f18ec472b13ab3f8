package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymesh/ferry/discovery/consul"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/config"
)

// consulState is the sidecar's link to Consul: one client, reused across reloads while
// the connection settings are unchanged; the discovery source of each upstream whose
// watch runs on Consul; and the registration of the local service.
type consulState struct {
	// Written under Sidecar.mu (Apply, Drain); mu guards them for the readers that do not
	// take Sidecar.mu (metrics scrapes, /clusters, /ready).
	mu        sync.Mutex
	clientKey string
	client    *consul.Client
	sources   map[string]*consulSource // upstream name → source of its running watch
	reg       *consul.Registrar
	regKey    string
	regIDs    []string
	regDelay  time.Duration
}

// consulSource is the source of one upstream's Consul watch.
type consulSource struct {
	src     *consul.Source
	service string
	address string
}

// consulClientKey identifies the connection settings of cfg (the token file's content
// included, so that a reload after the token was rotated builds a new client).
func consulClientKey(d *config.ConsulDiscovery) string {
	if d == nil {
		return "env"
	}
	tok := ""
	if d.TokenFile != "" {
		data, err := os.ReadFile(d.TokenFile)
		sum := sha256.Sum256(data)
		tok = hex.EncodeToString(sum[:8]) + fmt.Sprint(err)
	}
	return fmt.Sprint(d.Address, "|", d.Scheme, "|", d.Datacenter, "|", d.Token, "|", d.TokenFile, "|", tok, "|",
		d.CAFile, "|", d.CertFile, "|", d.KeyFile, "|", d.TLSServerName)
}

// usesConsul reports whether cfg needs a Consul client.
func usesConsul(cfg *config.Config) bool {
	if cfg.Discovery != nil && cfg.Discovery.Consul != nil && cfg.Discovery.Consul.Register {
		return true
	}
	if cfg.Policy.Access.Source == policy.SourceConsul {
		return true
	}
	if cfg.MTLS != nil && cfg.MTLS.Source == config.MTLSSourceConsul {
		return true
	}
	for i := range cfg.Upstreams {
		if cfg.Upstreams[i].Consul != nil {
			return true
		}
	}
	return false
}

// consulConn is a client with the key of its settings and the agent's address (for
// messages).
type consulConn struct {
	client *consul.Client
	key    string
	addr   string
}

// consulClient returns the client cfg asks for: the running one if its settings are
// unchanged, else a new one (the old one is closed once the reload's watches have moved
// on). It is called under s.mu before anything changes, so an error changes nothing.
func (s *Sidecar) consulClient(cfg *config.Config) (consulConn, error) {
	if !usesConsul(cfg) {
		return consulConn{}, nil
	}
	var d *config.ConsulDiscovery
	if cfg.Discovery != nil {
		d = cfg.Discovery.Consul
	}
	key := consulClientKey(d)
	addr := os.Getenv("CONSUL_HTTP_ADDR")
	if d != nil && d.Address != "" {
		addr = d.Address
	}
	if addr == "" {
		addr = "127.0.0.1:8500"
	}
	s.consul.mu.Lock()
	cur, curKey := s.consul.client, s.consul.clientKey
	s.consul.mu.Unlock()
	if cur != nil && curKey == key {
		return consulConn{cur, key, addr}, nil
	}
	cc := consul.Config{}
	if d != nil {
		cc = consul.Config{Address: d.Address, Scheme: d.Scheme, Datacenter: d.Datacenter, Token: d.Token,
			TokenFile: d.TokenFile, TLS: consul.TLSConfig{CAFile: d.CAFile, CertFile: d.CertFile, KeyFile: d.KeyFile,
				ServerName: d.TLSServerName}}
	}
	c, err := consul.NewClient(cc)
	if err != nil {
		return consulConn{}, fmt.Errorf("discovery.consul: %w", err)
	}
	return consulConn{c, key, addr}, nil
}

// useConsulClient makes c the running client, closing the previous one after the drain
// timeout (its watches were restarted on c).
func (s *Sidecar) useConsulClient(cc consulConn, drain time.Duration) {
	c := cc.client
	s.consul.mu.Lock()
	old := s.consul.client
	s.consul.client, s.consul.clientKey = c, cc.key
	s.consul.mu.Unlock()
	if old != nil && old != c {
		s.retire(drain, func(ctx context.Context) { <-ctx.Done(); old.Close() })
	}
}

// consulWatchSource builds the discovery source of an upstream with consul: and the key
// of its watch: the same key keeps the running watch, so only the upstreams whose Consul
// settings (or connection) changed are restarted.
func (s *Sidecar) consulWatchSource(name string, cu *config.ConsulUpstream, cc consulConn) (*consulSource, string, error) {
	passing := cu.PassingOnly
	up := consul.Upstream{Service: cu.Service, Tags: cu.Tags, Datacenter: cu.Datacenter, Namespace: cu.Namespace,
		PassingOnly: &passing, Connect: cu.Connect}
	src, err := consul.New(cc.client.API(), consul.Options{Upstreams: map[string]consul.Upstream{name: up}, Logger: s.log})
	if err != nil {
		return nil, "", err
	}
	key := fmt.Sprintf("consul|%s|%q|%q|%q|%q|%v|%v", cc.key, up.Service, up.Tags, up.Datacenter, up.Namespace, passing, up.Connect)
	return &consulSource{src: src, service: cu.Service, address: cc.addr}, key, nil
}

// setConsulSource records the source of name's running watch (nil: not Consul).
func (s *Sidecar) setConsulSource(name string, cs *consulSource) {
	s.consul.mu.Lock()
	defer s.consul.mu.Unlock()
	if cs == nil {
		delete(s.consul.sources, name)
		return
	}
	if s.consul.sources == nil {
		s.consul.sources = map[string]*consulSource{}
	}
	s.consul.sources[name] = cs
}

// consulStatus returns the state of name's Consul watch, if it has one.
func (s *Sidecar) consulStatus(name string) (consul.Status, *consulSource, bool) {
	s.consul.mu.Lock()
	cs := s.consul.sources[name]
	s.consul.mu.Unlock()
	if cs == nil {
		return consul.Status{}, nil, false
	}
	st, ok := cs.src.Status(name)
	if !ok {
		st = consul.Status{Upstream: name, Service: cs.service}
	}
	return st, cs, true
}

// consulWaiting says why name is not ready if it waits for Consul, or returns "".
func (s *Sidecar) consulWaiting(name string) string {
	st, cs, ok := s.consulStatus(name)
	if !ok || st.Ready {
		return ""
	}
	why := fmt.Sprintf("upstream %q is waiting for its first answer from Consul (service %q at %s)", name, cs.service, cs.address)
	if st.LastError != nil {
		why += ": " + st.LastError.Error()
	}
	return why
}

// consulRegistration builds the registrations of the local application and of Ferry as
// its connect-proxy, following Consul's sidecar model.
func consulRegistration(cfg *config.Config) []*api.AgentServiceRegistration {
	d, in := cfg.Discovery.Consul, cfg.Inbound
	inHost, inPortS, _ := net.SplitHostPort(in.Address)
	inPort, _ := strconv.Atoi(inPortS)
	appHost, appPortS, _ := net.SplitHostPort(in.Target)
	appPort, _ := strconv.Atoi(appPortS)
	if ip, err := netip.ParseAddr(inHost); inHost == "" || err == nil && ip.IsUnspecified() {
		inHost = "" // listening everywhere: the agent uses its node's address
	}
	id := d.ServiceID
	if id == "" {
		id = cfg.Service + "-" + inPortS
	}
	interval := d.CheckInterval.D().String()
	timeout := min(d.CheckInterval.D(), 5*time.Second).String()
	adminHost, adminPort, _ := net.SplitHostPort(cfg.Admin.Address)
	if ip, err := netip.ParseAddr(adminHost); adminHost == "" || err == nil && ip.IsUnspecified() {
		adminHost = "127.0.0.1"
	}
	app := &api.AgentServiceRegistration{
		ID: id, Name: cfg.Service, Tags: d.ServiceTags, Address: appHost, Port: appPort,
		Meta: map[string]string{"ferry_sidecar": id + "-sidecar-proxy"},
		Checks: api.AgentServiceChecks{{
			CheckID: "service:" + id + ":app", Name: "application " + in.Target,
			TCP: in.Target, Interval: interval, Timeout: timeout,
		}},
	}
	var ups []api.Upstream
	for _, o := range cfg.Outbound {
		u := cfg.Upstream(o.Upstream)
		if u == nil || u.Consul == nil {
			continue
		}
		h, p, _ := net.SplitHostPort(o.Address)
		port, _ := strconv.Atoi(p)
		ups = append(ups, api.Upstream{DestinationType: api.UpstreamDestTypeService, DestinationName: u.Consul.Service,
			DestinationNamespace: u.Consul.Namespace, Datacenter: u.Consul.Datacenter, LocalBindAddress: h, LocalBindPort: port})
	}
	proxy := &api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: id + "-sidecar-proxy", Name: cfg.Service + "-sidecar-proxy",
		Address: inHost, Port: inPort, Meta: map[string]string{"proxy": "ferry"},
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: cfg.Service, DestinationServiceID: id,
			LocalServiceAddress: appHost, LocalServicePort: appPort, Upstreams: ups},
		Checks: api.AgentServiceChecks{
			{CheckID: "service:" + id + "-sidecar-proxy:ready", Name: "ferry /ready",
				HTTP: "http://" + net.JoinHostPort(adminHost, adminPort) + "/ready", Interval: interval, Timeout: timeout,
				Status: api.HealthCritical},
			{CheckID: "service:" + id + "-sidecar-proxy:alias", Name: "application " + cfg.Service, AliasService: id},
		},
	}
	return []*api.AgentServiceRegistration{app, proxy}
}

// consulRegister starts, replaces or stops the registration cfg asks for. Called under
// s.mu once the new config is in place.
func (s *Sidecar) consulRegister(cfg *config.Config, c *consul.Client) {
	var d *config.ConsulDiscovery
	if cfg.Discovery != nil {
		d = cfg.Discovery.Consul
	}
	var regs []*api.AgentServiceRegistration
	key := ""
	if d != nil && d.Register && cfg.Inbound != nil && c != nil {
		regs = consulRegistration(cfg)
		data, _ := json.Marshal(regs) // plain data: cannot fail
		key = fmt.Sprintf("%p|%d|%s", c, d.CheckInterval, data)
	}
	ids := make([]string, 0, len(regs))
	for _, r := range regs {
		ids = append(ids, r.ID)
	}
	s.consul.mu.Lock()
	old, oldKey, oldIDs := s.consul.reg, s.consul.regKey, s.consul.regIDs
	s.consul.mu.Unlock()
	if key == oldKey {
		return
	}
	if old != nil {
		if key != "" && slices.Equal(ids, oldIDs) {
			old.Stop() // the new registration replaces the old one under the same IDs
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := old.Deregister(ctx); err != nil {
				s.log.Warn("consul deregistration failed", "error", err)
			}
			cancel()
		}
	}
	var reg *consul.Registrar
	if key != "" {
		r, err := consul.NewRegistrar(c.API(), regs, d.CheckInterval.D(), s.log)
		if err != nil {
			s.log.Error("consul registration", "error", err) // unreachable: IDs and names are set
		} else {
			reg = r
			reg.Start()
		}
	}
	s.consul.mu.Lock()
	s.consul.reg, s.consul.regKey, s.consul.regIDs = reg, key, ids
	if d != nil {
		s.consul.regDelay = d.DeregisterDelay.D()
	}
	s.consul.mu.Unlock()
}

// consulDeregister removes the registration from Consul, so that peers stop sending
// here, and reports whether there was one. Safe to call more than once.
func (s *Sidecar) consulDeregister(ctx context.Context) bool {
	s.consul.mu.Lock()
	reg := s.consul.reg
	s.consul.mu.Unlock()
	if reg == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := reg.Deregister(ctx); err != nil {
		s.log.Warn("consul deregistration failed; peers learn of the drain from the failing /ready check", "error", err)
		return false
	}
	return true
}

// drainConsul deregisters from Consul before the listeners stop accepting, then waits
// discovery.consul.deregister_delay (bounded by ctx) so peers see the change first.
func (s *Sidecar) drainConsul(ctx context.Context) {
	if !s.consulDeregister(ctx) {
		return
	}
	s.consul.mu.Lock()
	delay := s.consul.regDelay
	s.consul.mu.Unlock()
	if delay <= 0 {
		return
	}
	s.log.Info("deregistered from consul; waiting before closing listeners", "deregister_delay", delay)
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// discoveryCollector exports the state of the Consul watches at scrape time.
type discoveryCollector struct{ s *Sidecar }

var (
	descDiscoveryReady = prometheus.NewDesc("ferry_discovery_ready",
		"1 once the upstream's discovery source has answered at least once.", []string{"upstream", "source"}, nil)
	descDiscoveryStale = prometheus.NewDesc("ferry_discovery_stale_seconds",
		"How long the upstream's endpoints have gone without confirmation from the discovery source (0 while it answers).",
		[]string{"upstream", "source"}, nil)
	descDiscoveryLastContact = prometheus.NewDesc("ferry_discovery_last_contact_timestamp_seconds",
		"When the discovery source last answered for the upstream (Unix time).", []string{"upstream", "source"}, nil)
	descDiscoveryErrors = prometheus.NewDesc("ferry_discovery_errors_total",
		"Failed discovery queries for the upstream (since its watch started).", []string{"upstream", "source"}, nil)
	descDiscoveryConsecutive = prometheus.NewDesc("ferry_discovery_consecutive_errors",
		"Failed discovery queries for the upstream since its last answer.", []string{"upstream", "source"}, nil)
	descDiscoveryUpdates = prometheus.NewDesc("ferry_discovery_updates_total",
		"Endpoint sets published for the upstream by its discovery source (since its watch started).", []string{"upstream", "source"}, nil)
	descConsulRegistered = prometheus.NewDesc("ferry_consul_registered",
		"1 while the service and its sidecar are registered with the Consul agent (register: true).", nil, nil)
)

// Describe implements prometheus.Collector.
func (discoveryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDiscoveryReady, descDiscoveryStale, descDiscoveryLastContact,
		descDiscoveryErrors, descDiscoveryConsecutive, descDiscoveryUpdates, descConsulRegistered} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It takes no lock a request takes.
func (c discoveryCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.consul.mu.Lock()
	srcs := make(map[string]*consulSource, len(s.consul.sources))
	for n, cs := range s.consul.sources {
		srcs[n] = cs
	}
	reg := s.consul.reg
	s.consul.mu.Unlock()
	now := time.Now()
	for name, cs := range srcs {
		st, ok := cs.src.Status(name)
		if !ok {
			continue
		}
		ready := 0.0
		if st.Ready {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(descDiscoveryReady, prometheus.GaugeValue, ready, name, "consul")
		ch <- prometheus.MustNewConstMetric(descDiscoveryStale, prometheus.GaugeValue, st.Staleness(now).Seconds(), name, "consul")
		if !st.LastContact.IsZero() {
			ch <- prometheus.MustNewConstMetric(descDiscoveryLastContact, prometheus.GaugeValue,
				float64(st.LastContact.UnixNano())/1e9, name, "consul")
		}
		ch <- prometheus.MustNewConstMetric(descDiscoveryErrors, prometheus.CounterValue, float64(st.Errors), name, "consul")
		ch <- prometheus.MustNewConstMetric(descDiscoveryConsecutive, prometheus.GaugeValue, float64(st.ConsecutiveErrors), name, "consul")
		ch <- prometheus.MustNewConstMetric(descDiscoveryUpdates, prometheus.CounterValue, float64(st.Updates), name, "consul")
	}
	if reg != nil {
		v := 0.0
		if reg.Registered() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descConsulRegistered, prometheus.GaugeValue, v)
	}
}

// DiscoveryStatus is an upstream's discovery source in /clusters.
type DiscoveryStatus struct {
	// Source is "static" or "consul".
	Source string `json:"source"`
	// The rest is set for Consul: the service watched, whether it has answered, the
	// last X-Consul-Index, when it last answered and published, and, while queries fail,
	// since when the endpoints are stale.
	Service           string     `json:"service,omitempty"`
	Ready             bool       `json:"ready"`
	Index             uint64     `json:"index,omitempty"`
	LastContact       *time.Time `json:"last_contact,omitempty"`
	LastUpdate        *time.Time `json:"last_update,omitempty"`
	StaleSince        *time.Time `json:"stale_since,omitempty"`
	StaleSeconds      float64    `json:"stale_seconds"`
	Errors            uint64     `json:"errors"`
	ConsecutiveErrors uint64     `json:"consecutive_errors"`
	LastError         string     `json:"last_error,omitempty"`
}

// discoveryStatus returns name's discovery state for /clusters.
func (s *Sidecar) discoveryStatus(name string, ready bool) *DiscoveryStatus {
	st, _, ok := s.consulStatus(name)
	if !ok {
		return &DiscoveryStatus{Source: "static", Ready: ready}
	}
	ds := &DiscoveryStatus{Source: "consul", Service: st.Service, Ready: st.Ready, Index: st.Index,
		StaleSeconds: st.Staleness(time.Now()).Seconds(), Errors: st.Errors, ConsecutiveErrors: st.ConsecutiveErrors}
	tp := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	ds.LastContact, ds.LastUpdate, ds.StaleSince = tp(st.LastContact), tp(st.LastUpdate), tp(st.StaleSince)
	if st.LastError != nil {
		ds.LastError = st.LastError.Error()
	}
	return ds
}

// forgetConsulSources drops the sources of upstreams the config no longer has.
func (s *Sidecar) forgetConsulSources(specs map[string]upstreamConfig) {
	s.consul.mu.Lock()
	defer s.consul.mu.Unlock()
	for name := range s.consul.sources {
		if _, ok := specs[name]; !ok {
			delete(s.consul.sources, name)
		}
	}
}

// closeConsul closes the client's idle connections once every watch has stopped.
func (s *Sidecar) closeConsul() {
	s.consul.mu.Lock()
	c := s.consul.client
	s.consul.sources = nil
	s.consul.mu.Unlock()
	if c != nil {
		c.Close()
	}
}
