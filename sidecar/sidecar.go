// Package sidecar runs Ferry's proxy: it turns a validated config into listeners, upstreams
// and handlers, swaps them in atomically on reload, and drains them on shutdown.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/discovery/static"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/l4"
	"github.com/ferrymesh/ferry/sidecar/l7"
	"github.com/ferrymesh/ferry/sidecar/telemetry"

	"github.com/prometheus/client_golang/prometheus"
)

// inboundUpstream is the internal name of the local application as an upstream.
const inboundUpstream = "inbound|local"

// Options are a Sidecar's dependencies.
type Options struct {
	Logger  *slog.Logger
	Metrics *telemetry.Metrics
	// TracingInstance are attributes that identify this sidecar on its spans, recorded
	// as ferry.sidecar.<key> (see telemetry.NewTracing); nil for none.
	TracingInstance map[string]string
}

// Sidecar is one running proxy. Apply, Drain and Close are serialized internally; the
// request path reads only atomics.
type Sidecar struct {
	log     *slog.Logger
	metrics *telemetry.Metrics

	snap     atomic.Pointer[snapshot]
	draining atomic.Bool

	mu         sync.Mutex // serializes Apply, Drain and Close; never taken per request
	listeners  map[string]*listener
	upstreams  map[string]*upstream
	transports map[string]*l7.Transport
	accessLog  *telemetry.AccessLog
	accessDest string
	tracing    tracingState      // the tracing provider; see tracing.go
	instance   map[string]string // Options.TracingInstance
	retiring   sync.WaitGroup    // old fronts, transports and logs being drained after a reload
	stopping   context.Context   // cancelled at the end of Drain: retiring work stops waiting
	stop       context.CancelFunc
	consul     consulState // the Consul client, watches and registration; see consul.go
	mesh       meshState   // the mTLS certificate source; see tls.go
	// pol is the running inbound policy (nil: none), read by the metrics collector.
	pol atomic.Pointer[policy.Policy]
	// rls is the client of the global rate limit service, nil without one; see
	// ratelimit.go.
	rls *rlsClient
	// caPools are the tls_ca_file pools of tls: simple upstreams; see tls.go.
	caPools caPools
	// handshakeFailures is ferry_tls_handshake_failures_total (see tls.go).
	handshakeFailures *prometheus.CounterVec
	// intentions is the Consul intentions watch of policy.access.source: consul; see policy.go.
	intentions intentionsState
	// ingress is the ingress listeners' certificates; see ingress.go.
	ingress ingressState
}

// snapshot is what one successful Apply put in place: the config and when.
type snapshot struct {
	cfg     *config.Config
	applied time.Time
}

// New returns a Sidecar with nothing running; Apply starts it.
func New(o Options) *Sidecar {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = telemetry.NewMetrics()
	}
	stopping, stop := context.WithCancel(context.Background())
	s := &Sidecar{
		log: o.Logger, metrics: o.Metrics, stopping: stopping, stop: stop, instance: o.TracingInstance,
		listeners:  map[string]*listener{},
		upstreams:  map[string]*upstream{},
		transports: map[string]*l7.Transport{},

		handshakeFailures: newHandshakeFailures(),
	}
	if err := o.Metrics.Registry.Register(s.handshakeFailures); err != nil {
		s.log.Warn("TLS handshake metrics not registered", "error", err)
	}
	if err := o.Metrics.Registry.Register(discoveryCollector{s}); err != nil {
		s.log.Warn("discovery metrics not registered", "error", err)
	}
	if err := o.Metrics.Registry.Register(certCollector{s}); err != nil {
		s.log.Warn("certificate metrics not registered", "error", err)
	}
	if err := o.Metrics.Registry.Register(policyCollector{s}); err != nil {
		s.log.Warn("policy metrics not registered", "error", err)
	}
	if err := o.Metrics.Registry.Register(newIngressCertCollector(s)); err != nil {
		s.log.Warn("ingress certificate metrics not registered", "error", err)
	}
	return s
}

// Config returns the config in use, or nil before the first Apply.
func (s *Sidecar) Config() *config.Config {
	if sn := s.snap.Load(); sn != nil {
		return sn.cfg
	}
	return nil
}

// Ready reports whether the sidecar serves: a config is applied, every upstream has
// received its endpoints, and it is not draining.
func (s *Sidecar) Ready() (bool, string) {
	if s.draining.Load() {
		return false, "draining"
	}
	if s.snap.Load() == nil {
		return false, "no config applied"
	}
	if why := s.certsWaiting(); why != "" {
		return false, why
	}
	if why := s.intentionsWaiting(); why != "" {
		return false, why
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, u := range s.upstreams {
		if !u.ready() {
			if why := s.consulWaiting(name); why != "" {
				return false, why
			}
			return false, fmt.Sprintf("upstream %q has no endpoints yet", name)
		}
	}
	return true, "ready"
}

// desired is one listener as the new config wants it.
type desired struct {
	addr    string
	key     string
	httpOpt l7.ServerOptions
	http    http.Handler
	tcp     *l4.Proxy
	tlsIn   *inboundTLS    // inbound (m)TLS termination; nil for plaintext
	pol     *policy.Policy // inbound: the policy whose connection rate limit applies on accept
}

// Apply makes cfg (already validated) the running config. New listeners are bound first; if
// any cannot be bound, nothing changes and the error says why. Otherwise handlers are swapped
// in atomically: listeners whose address is unchanged keep their socket and their
// connections, new connections and requests use cfg, and removed listeners drain in the
// background for cfg.DrainTimeout.
func (s *Sidecar) Apply(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return errors.New("draining: config not applied")
	}
	err := s.applyLocked(cfg)
	if err != nil {
		s.metrics.ConfigReloads.WithLabelValues("error").Inc()
		return err
	}
	s.metrics.ConfigReloads.WithLabelValues("ok").Inc()
	if old := s.snap.Load(); old != nil {
		s.metrics.ConfigInfo.DeleteLabelValues(old.cfg.Version)
	}
	s.metrics.ConfigInfo.WithLabelValues(cfg.Version).Set(1)
	s.metrics.ConfigTimestamp.SetToCurrentTime()
	s.snap.Store(&snapshot{cfg: cfg, applied: time.Now()})
	return nil
}

func (s *Sidecar) applyLocked(cfg *config.Config) error {
	// 0. The Consul client (the running one while its settings are unchanged).
	cc, err := s.consulClient(cfg)
	if err != nil {
		return err
	}
	// 0b. The mTLS certificate source (the running one while its settings are unchanged)
	// and how each upstream's connections are secured.
	mesh, err := s.meshFor(cfg, cc)
	if err != nil {
		return err
	}
	defer s.settleMesh(mesh)
	upTLS, err := upstreamTLS(cfg, mesh, &s.caPools)
	if err != nil {
		return err
	}
	// 0c. The inbound policy.
	// With policy.access.source: consul, the intentions watch it takes its rules from.
	if err := s.prepareIntentions(cfg, cc); err != nil {
		return err
	}
	defer s.settleIntentions()
	pol, err := s.policyFor(cfg)
	if err != nil {
		return err
	}
	rls, err := s.rateLimitServiceFor(pol)
	if err != nil {
		return err
	}
	defer s.settleRLS(rls)
	// 0d. The ingress listeners' certificates (the running stores while unchanged).
	ingCerts, err := s.ingressCertsFor(cfg)
	if err != nil {
		return err
	}
	defer s.settleIngress(ingCerts)

	// 1. Bind every new address first, so a failure changes nothing.
	fresh := map[string]*listener{}
	var addrs []string
	if cfg.Inbound != nil {
		addrs = append(addrs, cfg.Inbound.Address)
	}
	for _, o := range cfg.Outbound {
		addrs = append(addrs, o.Address)
	}
	addrs = append(addrs, ingressAddrs(cfg)...)
	for _, a := range addrs {
		if s.listeners[a] != nil {
			continue
		}
		l, err := listen(a, s.log, s.metrics.Listener(a))
		if err != nil {
			for _, f := range fresh {
				_ = f.ln.Close()
			}
			return fmt.Errorf("listener %s: %w", a, err)
		}
		fresh[a] = l
	}

	// 2. Access log.
	accessLog, oldLog := s.accessLog, (*telemetry.AccessLog)(nil)
	if accessLogKey(cfg) != s.accessDest {
		al, err := telemetry.OpenAccessLogFormat(cfg.Telemetry.AccessLog, cfg.Telemetry.AccessLogFormat)
		if err != nil {
			for _, f := range fresh {
				_ = f.ln.Close()
			}
			return err
		}
		accessLog, oldLog = al, s.accessLog
	}

	// 2b. Tracing: the running provider unless its config changed.
	tracing, tracingChanged, err := s.tracingFor(cfg)
	if err != nil {
		for _, f := range fresh {
			_ = f.ln.Close()
		}
		if accessLog != s.accessLog {
			_ = accessLog.Close()
		}
		return err
	}

	// 3. Upstreams: policy, resilience and discovery; state per endpoint address is kept.
	specs := map[string]upstreamConfig{}
	for i := range cfg.Upstreams {
		specs[cfg.Upstreams[i].Name] = upstreamConfigOf(&cfg.Upstreams[i])
	}
	if cfg.Inbound != nil {
		specs[inboundUpstream] = upstreamConfig{policy: balancer.RoundRobin,
			endpoints: []discovery.Endpoint{{Address: cfg.Inbound.Target, Weight: 1}}}
	}
	addIngressSpecs(cfg, specs)
	routeRetryBudgets(cfg, specs)
	published := map[string]<-chan struct{}{} // watches (re)started by this Apply
	for name, spec := range specs {
		u := s.upstreams[name]
		if u == nil {
			u = newUpstream(name, s.log, s.metrics)
			s.upstreams[name] = u
		}
		b, err := balancer.New(spec.policy)
		if err != nil {
			return err // unreachable: validation checked the policy
		}
		u.configure(spec, b)
		var src discovery.Source = static.New(map[string][]discovery.Endpoint{name: spec.endpoints})
		key, consulSrc := spec.key(), (*consulSource)(nil)
		if uc := cfg.Upstream(name); uc != nil && uc.Consul != nil {
			cs, k, err := s.consulWatchSource(name, uc.Consul, cc)
			if err != nil {
				return err // unreachable: validation checked the service name
			}
			src, key, consulSrc = cs.src, k, cs
		}
		name := name
		first, restarted := u.watch(src, key, func(err error) {
			s.log.Error("discovery failed", "upstream", name, "error", err)
		})
		if restarted {
			s.setConsulSource(name, consulSrc)
			published[name] = first
		}
	}
	// Static sources publish at once, Consul ones on their first answer. Wait briefly for
	// every watch that (re)started, so that new listeners do not answer 503 and requests
	// after a reload do not go to the endpoints the new config removed.
	firstWait := time.Now().Add(2 * time.Second)
	for name := range specs {
		first, ok := published[name]
		if !ok {
			first = s.upstreams[name].firstSet
		}
		select {
		case <-first:
		case <-time.After(time.Until(firstWait)):
		}
		if why := s.consulWaiting(name); why != "" {
			s.log.Warn("waiting for Consul: /ready answers 503 until every Consul upstream has had its first answer",
				"upstream", name, "reason", why)
		}
	}

	// 4. Handlers for every listener.
	var want []desired
	transports := map[string]*l7.Transport{}
	rb := &routeBuild{s: s, cfg: cfg, upTLS: upTLS, transports: transports}
	ingTables, err := ingressRoutes(cfg, pol)
	if err != nil {
		return err
	}
	if in := cfg.Inbound; in != nil {
		d := desired{addr: in.Address, pol: pol}
		u := s.upstreams[inboundUpstream]
		if in.Protocol == "tcp" {
			d.key = "tcp"
			d.tcp = s.tcpProxy(telemetry.Inbound, cfg.Service, u, in.ConnectTimeout.D(), in.IdleTimeout.D(), accessLog,
				nil, 1, tracing, nil, pol, listenerPort(in.Address))
		} else {
			d.key, d.httpOpt = httpKey(in.Listener, s.log)
			t := s.transport(transports, inboundUpstream, l7.TransportOptions{
				Protocol: in.TargetProtocol, ConnectTimeout: in.ConnectTimeout.D(),
				IdleTimeout: 90 * time.Second, MaxIdleConnsPerHost: 1024})
			rb.local = l7.Target{Name: cfg.Service, Upstream: u, Transport: t, RequestTimeout: in.RequestTimeout.D()}
			routes, err := rb.inboundRouting(pol)
			if err != nil {
				return err
			}
			d.http = l7.NewHandler(l7.Options{
				Direction: telemetry.Inbound, Name: cfg.Service, Upstream: u, Transport: t,
				RequestTimeout: in.RequestTimeout.D(), Metrics: s.metrics.HTTP(telemetry.Inbound, cfg.Service),
				AccessLog: accessLog, Logger: s.log, Tracing: tracing, MTLS: mesh.source(),
				Policy: pol, Port: listenerPort(in.Address), RateLimitService: rls.service(), Routes: routes,
			})
		}
		var tlsKey string
		d.tlsIn, tlsKey = inboundTLSFor(cfg, mesh, in.Protocol == "tcp", s.log)
		if d.tlsIn != nil {
			d.tlsIn.failures = s.handshakeFailures.MustCurryWith(prometheus.Labels{"listener": in.Address})
		}
		d.key += tlsKey
		want = append(want, d)
	}
	for _, o := range cfg.Outbound {
		d := desired{addr: o.Address}
		if o.Upstream == "" { // an http listener with routes only
			routes, err := rb.outboundRouting(&o)
			if err != nil {
				return err
			}
			d.key, d.httpOpt = httpKey(o.Listener, s.log)
			d.http = l7.NewHandler(l7.Options{Direction: telemetry.Outbound, Metrics: s.metrics.HTTP(telemetry.Outbound, ""),
				AccessLog: accessLog, Logger: s.log, Tracing: tracing, Routes: routes})
			want = append(want, d)
			continue
		}
		uc := cfg.Upstream(o.Upstream)
		u := s.upstreams[o.Upstream]
		if o.Protocol == "tcp" {
			d.key = "tcp"
			d.tcp = s.tcpProxy(telemetry.Outbound, o.Upstream, u, uc.ConnectTimeout.D(), o.IdleTimeout.D(), accessLog,
				u.breaker, connectAttempts(uc.Retries), tracing, tcpDial(withIdentities(upTLS[o.Upstream], u)), nil, 0)
		} else {
			d.key, d.httpOpt = httpKey(o.Listener, s.log)
			routes, err := rb.outboundRouting(&o)
			if err != nil {
				return err
			}
			t := s.upstreamTransport(transports, o.Upstream, l7.TransportOptions{
				Protocol: uc.Protocol, ConnectTimeout: uc.ConnectTimeout.D(),
				IdleTimeout: uc.IdleTimeout.D(), MaxIdleConnsPerHost: uc.MaxIdleConnsPerEndpoint, Breaker: u.breaker,
				TLS: withIdentities(upTLS[o.Upstream], u)})
			d.http = l7.NewHandler(l7.Options{
				Direction: telemetry.Outbound, Name: o.Upstream, Upstream: u, Transport: t,
				HashOn: uc.HashOn, RequestTimeout: uc.RequestTimeout.D(),
				Metrics: s.metrics.HTTP(telemetry.Outbound, o.Upstream), AccessLog: accessLog, Logger: s.log,
				Retry: retryPolicy(uc.Retries), Breaker: u.breaker, Tracing: tracing, Routes: routes,
			})
		}
		want = append(want, d)
	}
	want = append(want, s.ingressListeners(cfg, ingressEnv{certs: ingCerts, transports: transports, upTLS: upTLS,
		accessLog: accessLog, tracing: tracing, pol: pol, rls: rls.service(), routes: ingTables, rb: rb})...)

	// 5. Swap. From here on nothing fails.
	drain := cfg.DrainTimeout.D()
	s.commitRLS(rls, drain)
	keep := map[string]bool{}
	for _, d := range want {
		keep[d.addr] = true
		l := s.listeners[d.addr]
		if l == nil {
			l = fresh[d.addr]
			s.listeners[d.addr] = l
		}
		l.pol.Store(d.pol)
		old := l.front.Load()
		if old != nil && old.key == d.key {
			if d.tcp != nil {
				old.tcp.Store(d.tcp)
			} else {
				old.handler.Store(&d.http)
			}
			continue
		}
		var f *front
		if d.tcp != nil {
			f = newTCPFront(d.key, d.tcp)
		} else {
			f = newHTTPFront(d.key, d.httpOpt, d.http, l.metrics, l.ln.Addr())
		}
		f.startTLS(d.tlsIn, l.metrics, l.ln.Addr())
		l.front.Store(f)
		if old == nil {
			go l.serve()
			s.log.Info("listening", "address", d.addr, "protocol", protocolOf(d))
		} else {
			s.retire(drain, old.shutdown)
		}
	}
	for addr, l := range s.listeners {
		if keep[addr] {
			continue
		}
		delete(s.listeners, addr)
		l.close()
		s.log.Info("listener removed; draining its connections", "address", addr, "drain_timeout", drain)
		s.retire(drain, l.front.Load().shutdown)
	}
	for name, u := range s.upstreams {
		if _, ok := specs[name]; !ok {
			delete(s.upstreams, name)
			go func() {
				u.stop()
				// Its gauges go once nothing can set them again, unless a reload brought
				// the name back meanwhile.
				s.mu.Lock()
				if s.upstreams[name] == nil {
					s.metrics.ForgetUpstream(name)
				}
				s.mu.Unlock()
			}()
		}
	}
	for name, t := range s.transports {
		if transports[name] != t {
			s.retire(drain, func(ctx context.Context) { <-ctx.Done(); t.CloseIdleConnections() })
		}
	}
	s.transports = transports
	if oldLog != nil {
		s.retire(drain, func(ctx context.Context) { <-ctx.Done(); _ = oldLog.Close() })
	}
	s.accessLog, s.accessDest = accessLog, accessLogKey(cfg)
	s.forgetConsulSources(specs)
	s.useConsulClient(cc, drain)
	s.consulRegister(cfg, cc.client)
	if tracingChanged {
		s.commitTracing(cfg, tracing, drain)
	}
	s.commitMesh(mesh, drain)
	s.commitIntentions()
	s.commitIngress(ingCerts, drain)
	s.pol.Store(pol)
	return nil
}

// retire runs fn in the background with a context that ends after the drain timeout, or
// when the sidecar itself has finished draining.
func (s *Sidecar) retire(timeout time.Duration, fn func(context.Context)) {
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		ctx, cancel := context.WithTimeout(s.stopping, timeout)
		defer cancel()
		fn(ctx)
	}()
}

// transport returns the pooled transport for an upstream, reusing the running one while its
// options are unchanged so that reloads keep warm connections.
func (s *Sidecar) transport(into map[string]*l7.Transport, name string, o l7.TransportOptions) *l7.Transport {
	t := s.transports[name]
	if t == nil || t.Options() != o {
		t = l7.NewTransport(o)
	}
	into[name] = t
	return t
}

func (s *Sidecar) tcpProxy(direction, name string, u *upstream, connect, idle time.Duration, al *telemetry.AccessLog,
	breaker *circuit.Breaker, attempts int, tracing *telemetry.Tracing, dial dialFunc, pol *policy.Policy, port uint16) *l4.Proxy {
	return l4.New(l4.Options{
		Upstream: name, Picker: u.Picker, Endpoints: u.Endpoints, ConnectTimeout: connect, IdleTimeout: idle,
		ConnectAttempts: attempts, Breaker: breaker,
		Observer: &tcpObserver{direction: direction, m: s.metrics.TCP(direction, name), log: al},
		Logger:   s.log,
		Tracing:  tracing, Direction: direction, Dial: dial, Policy: pol, Port: port,
	})
}

func httpKey(l config.Listener, log *slog.Logger) (string, l7.ServerOptions) {
	o := l7.ServerOptions{ReadHeaderTimeout: l.ReadHeaderTimeout.D(), IdleTimeout: l.IdleTimeout.D(),
		MaxHeaderBytes: l.MaxHeaderBytes, Logger: log}
	return fmt.Sprintf("http/%v/%v/%d", o.ReadHeaderTimeout, o.IdleTimeout, o.MaxHeaderBytes), o
}

func protocolOf(d desired) string {
	if d.tcp != nil {
		return "tcp"
	}
	return "http"
}

// Unready makes /ready answer 503 (draining) while everything keeps serving: used while the
// application started beside Ferry shuts down, so that peers stop sending first.
// With discovery.consul.register, it also deregisters from Consul.
func (s *Sidecar) Unready() {
	s.draining.Store(true)
	s.consulDeregister(context.Background())
}

// Drain stops the sidecar gracefully: /ready turns 503, listeners stop accepting,
// in-flight requests and TCP sessions may finish until ctx is done, then the rest are cut.
func (s *Sidecar) Drain(ctx context.Context) {
	s.draining.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drainConsul(ctx) // peers stop sending before the listeners stop accepting
	var wg sync.WaitGroup
	for addr, l := range s.listeners {
		l.close()
		delete(s.listeners, addr)
		f := l.front.Load()
		wg.Go(func() { f.shutdown(ctx) })
	}
	wg.Wait()
	for name, u := range s.upstreams {
		u.stop()
		delete(s.upstreams, name)
	}
	s.closeIntentions()
	s.closeConsul()
	for _, t := range s.transports {
		t.CloseIdleConnections()
	}
	s.stop()
	s.retiring.Wait()
	_ = s.accessLog.Close()
	s.closeMesh()
	s.closeRLS()
	s.closeIngress()
	if t := s.tracing.cur; t != nil {
		shutdownTracing(t, s)
	}
}

// tcpObserver turns TCP session events into metrics and access-log lines.
type tcpObserver struct {
	direction string
	m         *telemetry.TCPMetrics
	log       *telemetry.AccessLog
}

func (o *tcpObserver) SessionStarted(string) { o.m.Active.Inc() }

func (o *tcpObserver) SessionEnded(upstream string, ss l4.Session) {
	o.m.Active.Dec()
	o.m.Received.Add(float64(ss.BytesIn))
	o.m.Sent.Add(float64(ss.BytesOut))
	errText := ""
	if ss.Err != nil {
		o.m.Failed.Inc()
		errText = ss.Err.Error()
	} else {
		o.m.OK.Inc()
	}
	o.log.TCP(&telemetry.TCPRecord{Start: time.Now().Add(-ss.Duration), Direction: o.direction, Upstream: upstream,
		Endpoint: ss.Endpoint, Downstream: ss.Downstream, BytesIn: ss.BytesIn, BytesOut: ss.BytesOut,
		Duration: ss.Duration, Error: errText, TraceID: ss.TraceID, PeerID: ss.PeerID})
}
