package sidecar

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/ratelimit"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/l7"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// Timings of the ingress certificate watch.
const (
	// ingressCertPoll is how often the certificate files are re-stat'ed in case a change
	// notification was missed.
	ingressCertPoll = 5 * time.Second
	// ingressCertDebounce is the wait after a change notification before reading, so
	// that a certificate and its key written one after the other are read once.
	ingressCertDebounce = 100 * time.Millisecond
)

// ingressCipherSuites are the TLS 1.2 suites an ingress listener accepts: ECDHE key
// exchange (forward secrecy) with AEAD ciphers only, so no CBC and no RSA key exchange.
// TLS 1.3 suites are not configurable in crypto/tls and are all AEAD.
var ingressCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ingressUpstream is the internal upstream name of an ingress listener's target.
func ingressUpstream(addr string) string { return "ingress|" + addr }

// ingressState is the sidecar's ingress certificate stores, one per ingress listener.
// cur is changed by Apply (under Sidecar.mu); live is what /certs, the status page and the
// metrics read.
type ingressState struct {
	cur  map[string]*ingressCerts // by listener address
	live atomic.Pointer[[]*ingressCerts]
	// pickers hold, per listener address, the store handshakes read: fronts keep the
	// picker, so a change of certificate files does not replace the front (and close
	// its idle connections).
	pickers map[string]*certPicker
}

// certPicker is what an ingress listener's TLS config reads its certificates from: the
// listener's current store, swapped by Apply. GetCertificate is safe for concurrent use.
type certPicker struct{ cur atomic.Pointer[ingressCerts] }

// GetCertificate is tls.Config.GetCertificate: the current store's certificate for the
// client's SNI.
func (p *certPicker) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return p.cur.Load().GetCertificate(hello)
}

// serverConfig returns the TLS server config of an ingress listener: certificates by SNI,
// at least minVersion, ECDHE+AEAD suites on TLS 1.2, and ALPN h2 and http/1.1 for HTTP.
func (p *certPicker) serverConfig(minVersion uint16, http bool) *tls.Config {
	tc := &tls.Config{MinVersion: minVersion, CipherSuites: ingressCipherSuites, GetCertificate: p.GetCertificate}
	if http {
		tc.NextProtos = []string{"h2", "http/1.1"}
	}
	return tc
}

// ingressPicker returns the picker of the listener at addr, making it on first use, and
// points it at certs. Called by Apply under Sidecar.mu once nothing can fail any more.
func (s *Sidecar) ingressPicker(addr string, certs *ingressCerts) *certPicker {
	if s.ingress.pickers == nil {
		s.ingress.pickers = map[string]*certPicker{}
	}
	p := s.ingress.pickers[addr]
	if p == nil {
		p = &certPicker{}
		s.ingress.pickers[addr] = p
	}
	p.cur.Store(certs)
	return p
}

// ingressCerts is one ingress listener's certificates: loaded from their files, re-read
// when the files change, and chosen per handshake by SNI. A change that does not load
// (missing file, key not matching) keeps that certificate's previous version and is
// logged. GetCertificate and info are safe for concurrent use.
type ingressCerts struct {
	addr  string
	key   string // the files, in order: a store is reused while they are unchanged
	files []config.IngressCertificate
	log   *slog.Logger

	set      atomic.Pointer[certSet]
	updates  atomic.Uint64 // certificate sets published
	failures atomic.Uint64 // reloads that kept a previous certificate

	watch *mtls.FileWatcher

	mu   sync.Mutex // serializes reloads; guards errs
	errs []string   // per certificate: why its last reload failed, or ""
}

// certSet is one immutable generation of an ingress listener's certificates.
type certSet struct {
	certs []*tls.Certificate          // as listed; the first is the default
	exact map[string]*tls.Certificate // lower-case DNS name → certificate
	wild  map[string]*tls.Certificate // "example.com" for a SAN "*.example.com"
}

func newCertSet(certs []*tls.Certificate) *certSet {
	s := &certSet{certs: certs, exact: map[string]*tls.Certificate{}, wild: map[string]*tls.Certificate{}}
	for _, c := range certs {
		for _, n := range c.Leaf.DNSNames {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			into := s.exact
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				n, into = rest, s.wild
			}
			if _, dup := into[n]; !dup { // the first certificate listed wins
				into[n] = c
			}
		}
	}
	return s
}

// pick returns the certificate for SNI name: an exact DNS name, else a wildcard one
// level up, else the default.
func (s *certSet) pick(name string) *tls.Certificate {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name != "" {
		if c := s.exact[name]; c != nil {
			return c
		}
		if _, parent, ok := strings.Cut(name, "."); ok {
			if c := s.wild[parent]; c != nil {
				return c
			}
		}
	}
	return s.certs[0]
}

// ingressKey identifies a store by its listener and files.
func ingressKey(in *config.Ingress) string {
	var b strings.Builder
	b.WriteString(in.Address)
	for _, c := range in.Certificates {
		fmt.Fprintf(&b, "|%s|%s", c.CertFile, c.KeyFile)
	}
	return b.String()
}

// newIngressCerts loads every certificate of in and starts watching their files. It fails
// if any does not load.
func newIngressCerts(in *config.Ingress, log *slog.Logger) (*ingressCerts, error) {
	c := &ingressCerts{addr: in.Address, key: ingressKey(in), files: slices.Clone(in.Certificates),
		log: log.With("ingress", in.Address), errs: make([]string, len(in.Certificates))}
	// The watcher is set up before the files are read, so that a change made meanwhile
	// is reported once it starts. It fails only with polling disabled, which it is not.
	w, err := mtls.NewFileWatcher(mtls.FileWatchOptions{Paths: c.paths, PollInterval: ingressCertPoll,
		Debounce: ingressCertDebounce, Logger: c.log})
	if err != nil {
		return nil, fmt.Errorf("ingress %s: %w", in.Address, err)
	}
	certs := make([]*tls.Certificate, len(c.files))
	for i, f := range c.files {
		cert, err := config.LoadIngressCertificate(f)
		if err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("ingress %s: certificates[%d]: %w", in.Address, i, err)
		}
		certs[i] = cert
	}
	c.publish(certs, "start")
	c.watch = w
	w.Start(c.reload)
	return c, nil
}

// paths lists every file: certificate, key, certificate, key...
func (c *ingressCerts) paths() []string {
	out := make([]string, 0, 2*len(c.files))
	for _, f := range c.files {
		out = append(out, f.CertFile, f.KeyFile)
	}
	return out
}

// reload reads every certificate again. One that does not load keeps its previous
// version; the new set is published if anything changed.
func (c *ingressCerts) reload(why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.set.Load()
	next := slices.Clone(cur.certs)
	changed := false
	for i, f := range c.files {
		cert, err := config.LoadIngressCertificate(f)
		if err != nil {
			if c.errs[i] != err.Error() {
				c.failures.Add(1)
				c.log.Error("ingress certificate reload failed; keeping the previous certificate",
					"trigger", why, "cert_file", f.CertFile, "key_file", f.KeyFile, "error", err)
			}
			c.errs[i] = err.Error()
			continue
		}
		c.errs[i] = ""
		if !sameChain(cert, cur.certs[i]) {
			next[i], changed = cert, true
		}
	}
	if changed {
		c.publish(next, why)
	}
}

// sameChain reports whether a and b hold the same certificates.
func sameChain(a, b *tls.Certificate) bool {
	return slices.EqualFunc(a.Certificate, b.Certificate, bytes.Equal)
}

// publish makes certs the set new handshakes use.
func (c *ingressCerts) publish(certs []*tls.Certificate, why string) {
	c.set.Store(newCertSet(certs))
	c.updates.Add(1)
	for i, cert := range certs {
		c.log.Info("ingress certificate loaded", "trigger", why, "cert_file", c.files[i].CertFile,
			"subject", cert.Leaf.Subject.String(), "dns_names", cert.Leaf.DNSNames,
			"serial", mtls.FormatSerial(cert.Leaf.SerialNumber), "not_after", cert.Leaf.NotAfter)
	}
}

// GetCertificate is tls.Config.GetCertificate: the certificate for the client's SNI.
// Safe for concurrent use; a map lookup on the current set.
func (c *ingressCerts) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.set.Load().pick(hello.ServerName), nil
}

// close stops watching the files. Certificates already handed out stay usable.
func (c *ingressCerts) close() {
	_ = c.watch.Close()
}

// IngressCertInfo is one ingress certificate in /certs.
type IngressCertInfo struct {
	// Listener is the ingress listener's address.
	Listener string `json:"listener"`
	// Default is true for the certificate served for an unknown or absent SNI.
	Default  bool     `json:"default"`
	CertFile string   `json:"cert_file"`
	KeyFile  string   `json:"key_file"`
	Subject  string   `json:"subject"`
	DNSNames []string `json:"dns_names"`
	Serial   string   `json:"serial"`
	NotAfter string   `json:"not_after"`
	// SecondsToExpiry is negative once the certificate has expired.
	SecondsToExpiry float64 `json:"seconds_to_expiry"`
	// Error is why the files' last reload failed (the certificate shown stays in use).
	Error string `json:"error,omitempty"`
}

// info describes the certificates in use.
func (c *ingressCerts) info(now time.Time) []IngressCertInfo {
	c.mu.Lock()
	errs := slices.Clone(c.errs)
	c.mu.Unlock()
	set := c.set.Load()
	out := make([]IngressCertInfo, len(set.certs))
	for i, cert := range set.certs {
		leaf := cert.Leaf
		out[i] = IngressCertInfo{Listener: c.addr, Default: i == 0, CertFile: c.files[i].CertFile,
			KeyFile: c.files[i].KeyFile, Subject: leaf.Subject.String(), DNSNames: slices.Clone(leaf.DNSNames),
			Serial: mtls.FormatSerial(leaf.SerialNumber), NotAfter: leaf.NotAfter.UTC().Format(time.RFC3339),
			SecondsToExpiry: leaf.NotAfter.Sub(now).Seconds(), Error: errs[i]}
		if out[i].DNSNames == nil {
			out[i].DNSNames = []string{}
		}
	}
	return out
}

// IngressCerts describes the certificates of every ingress listener, by listener address
// and then as listed. Safe for concurrent use.
func (s *Sidecar) IngressCerts() []IngressCertInfo {
	out := []IngressCertInfo{}
	if live := s.ingress.live.Load(); live != nil {
		now := time.Now()
		for _, c := range *live {
			out = append(out, c.info(now)...)
		}
	}
	return out
}

// ingressCertsFor returns the certificate store of every ingress listener of cfg, by
// address: the running one while its listener and files are unchanged, a new one
// otherwise. New ones are kept only if commitIngress is called; settleIngress closes them
// otherwise.
func (s *Sidecar) ingressCertsFor(cfg *config.Config) (map[string]*ingressCerts, error) {
	out := make(map[string]*ingressCerts, len(cfg.Ingress))
	for i := range cfg.Ingress {
		in := &cfg.Ingress[i]
		if cur := s.ingress.cur[in.Address]; cur != nil && cur.key == ingressKey(in) {
			out[in.Address] = cur
			continue
		}
		c, err := newIngressCerts(in, s.log)
		if err != nil {
			s.settleIngress(out)
			return nil, err
		}
		out[in.Address] = c
	}
	return out, nil
}

// settleIngress closes the stores of m that Apply did not commit.
func (s *Sidecar) settleIngress(m map[string]*ingressCerts) {
	for addr, c := range m {
		if s.ingress.cur[addr] != c {
			c.close()
		}
	}
}

// commitIngress makes m the running stores; those it replaces stop watching their files
// once connections have had the drain timeout to finish their handshakes.
func (s *Sidecar) commitIngress(m map[string]*ingressCerts, drain time.Duration) {
	for addr, old := range s.ingress.cur {
		if m[addr] != old {
			s.retire(drain, func(ctx context.Context) { <-ctx.Done(); old.close() })
		}
	}
	s.ingress.cur = m
	for addr := range s.ingress.pickers {
		if m[addr] == nil {
			delete(s.ingress.pickers, addr)
		}
	}
	live := make([]*ingressCerts, 0, len(m))
	for _, c := range m {
		live = append(live, c)
	}
	slices.SortFunc(live, func(a, b *ingressCerts) int { return strings.Compare(a.addr, b.addr) })
	s.ingress.live.Store(&live)
}

// closeIngress stops every store at the end of Drain.
func (s *Sidecar) closeIngress() {
	for _, c := range s.ingress.cur {
		c.close()
	}
	s.ingress.cur = nil
}

// ingressAddrs lists the addresses of cfg's ingress listeners.
func ingressAddrs(cfg *config.Config) []string {
	out := make([]string, 0, len(cfg.Ingress))
	for _, in := range cfg.Ingress {
		out = append(out, in.Address)
	}
	return out
}

// addIngressSpecs adds the local application behind each ingress listener with a target
// as an upstream of its own.
func addIngressSpecs(cfg *config.Config, specs map[string]upstreamConfig) {
	for _, in := range cfg.Ingress {
		if in.Target != "" {
			specs[ingressUpstream(in.Address)] = upstreamConfig{policy: balancer.RoundRobin,
				endpoints: []discovery.Endpoint{{Address: in.Target, Weight: 1}}}
		}
	}
}

// ingressEnv is what building the ingress listeners' handlers needs from Apply.
type ingressEnv struct {
	certs      map[string]*ingressCerts
	transports map[string]*l7.Transport
	upTLS      map[string]l7.UpstreamTLS
	accessLog  *telemetry.AccessLog
	tracing    *telemetry.Tracing
	pol        *policy.Policy
	rls        *ratelimit.Service      // the policy's global rate limit service, nil without one
	routes     map[string]*route.Table // compiled routes by listener address (ingressRoutes)
	rb         *routeBuild             // resolves the routes' upstreams
}

// ingressListeners returns the desired state of every ingress listener of cfg (pointing
// each listener's certificate picker at its new store: call it once nothing can fail): TLS
// termination with its certificates, then the inbound policy and the proxy to its target
// or upstream, with direction "ingress" in metrics, logs and spans.
func (s *Sidecar) ingressListeners(cfg *config.Config, env ingressEnv) []desired {
	out := make([]desired, 0, len(cfg.Ingress))
	for i := range cfg.Ingress {
		in := &cfg.Ingress[i]
		picker := s.ingressPicker(in.Address, env.certs[in.Address])
		minVersion, _ := in.TLSVersion() // validated
		d := desired{addr: in.Address, pol: env.pol}
		port := listenerPort(in.Address)
		name, upName := cfg.Service, ingressUpstream(in.Address)
		var uc *config.Upstream
		if in.Upstream != "" {
			uc = cfg.Upstream(in.Upstream)
			name, upName = in.Upstream, in.Upstream
		}
		u := s.upstreams[upName]
		tcp := in.Protocol == config.ProtocolTCP
		switch {
		case tcp && uc == nil:
			d.key = "tcp"
			d.tcp = s.tcpProxy(telemetry.Ingress, name, u, in.ConnectTimeout.D(), in.IdleTimeout.D(), env.accessLog,
				nil, 1, env.tracing, nil, env.pol, port)
		case tcp:
			d.key = "tcp"
			d.tcp = s.tcpProxy(telemetry.Ingress, name, u, uc.ConnectTimeout.D(), in.IdleTimeout.D(), env.accessLog,
				u.breaker, connectAttempts(uc.Retries), env.tracing, tcpDial(withIdentities(env.upTLS[uc.Name], u)), env.pol, port)
		default:
			d.key, d.httpOpt = httpKey(in.Listener, s.log)
			o := l7.Options{Direction: telemetry.Ingress, Name: name, Upstream: u,
				RequestTimeout: in.RequestTimeout.D(), Metrics: s.metrics.HTTP(telemetry.Ingress, name),
				AccessLog: env.accessLog, Logger: s.log, Tracing: env.tracing, Policy: env.pol, Port: port,
				RateLimitService: env.rls}
			to := l7.TransportOptions{Protocol: in.TargetProtocol, ConnectTimeout: in.ConnectTimeout.D(),
				IdleTimeout: 90 * time.Second, MaxIdleConnsPerHost: 1024}
			if uc != nil {
				to = l7.TransportOptions{Protocol: uc.Protocol, ConnectTimeout: uc.ConnectTimeout.D(),
					IdleTimeout: uc.IdleTimeout.D(), MaxIdleConnsPerHost: uc.MaxIdleConnsPerEndpoint, Breaker: u.breaker,
					TLS: withIdentities(env.upTLS[uc.Name], u)}
				o.HashOn, o.RequestTimeout, o.Retry, o.Breaker = uc.HashOn, uc.RequestTimeout.D(), retryPolicy(uc.Retries), u.breaker
			}
			// The ingress listener's own pool, even for an upstream that outbound
			// listeners call too: the pools' options may differ, and the upstream's
			// circuit breaker counts the connections of both.
			o.Transport = s.transport(env.transports, ingressUpstream(in.Address), to)
			if tbl := env.routes[in.Address]; tbl != nil {
				// A route naming no upstream, and a request no route takes, go where
				// the listener itself sends.
				rb := *env.rb
				rb.local = l7.Target{Name: name, Upstream: u, Transport: o.Transport, HashOn: o.HashOn,
					RequestTimeout: o.RequestTimeout, Retry: o.Retry, Breaker: o.Breaker}
				o.Routes = rb.routingOf(tbl, telemetry.Ingress)
			}
			d.http = edgeHeaders{l7.NewHandler(o)}
		}
		d.tlsIn = &inboundTLS{mode: mtls.ModeStrict, config: picker.serverConfig(minVersion, !tcp), kind: "TLS",
			handshake: in.ReadHeaderTimeout.D(), log: s.log,
			failures: s.handshakeFailures.MustCurryWith(prometheus.Labels{"listener": in.Address})}
		d.key += fmt.Sprintf("/ingress-%s-%p", in.MinVersion, picker)
		out = append(out, d)
	}
	return out
}

// edgeHeaders prepares a request from outside the mesh: the caller reached Ferry over
// TLS, so X-Forwarded-Proto is https whatever it sent, and an X-Forwarded-Client-Cert it
// sent is forged by definition and removed. X-Forwarded-For is appended to by the l7
// handler. Safe for concurrent use.
type edgeHeaders struct{ next http.Handler }

func (h edgeHeaders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Header.Del(mtls.XFCCHeader)
	r.Header["X-Forwarded-Proto"] = []string{"https"}
	h.next.ServeHTTP(w, r)
}

// ingressCertCollector exports the ingress certificates' expiry as
// ferry_mtls_certificate_expiry_seconds{source="ingress",role="ingress",spiffe_id="",serial},
// the same metric as the mesh certificates' (see mtls.Collector), so that one alert
// covers both; and ferry_ingress_certificate_updates_total and
// ferry_ingress_certificate_update_failures_total per listener. It describes nothing
// (an unchecked collector), because the expiry metric's descriptor belongs to
// certCollector. Safe for concurrent use.
type ingressCertCollector struct {
	s        *Sidecar
	expiry   *prometheus.Desc
	updates  *prometheus.Desc
	failures *prometheus.Desc
}

var _ prometheus.Collector = (*ingressCertCollector)(nil)

func newIngressCertCollector(s *Sidecar) *ingressCertCollector {
	return &ingressCertCollector{s: s,
		// Name, help and labels must stay those of mtls.Collector's expiry metric: the
		// registry refuses a family whose metrics disagree.
		expiry: prometheus.NewDesc("ferry_mtls_certificate_expiry_seconds",
			"Seconds until the certificate expires (negative once expired).",
			[]string{"source", "role", "spiffe_id", "serial"}, nil),
		updates: prometheus.NewDesc("ferry_ingress_certificate_updates_total",
			"Certificate sets published by an ingress listener's files (initial load and rotations).",
			[]string{"listener"}, nil),
		failures: prometheus.NewDesc("ferry_ingress_certificate_update_failures_total",
			"Ingress certificate reloads that failed; the previous certificate stayed in force.",
			[]string{"listener"}, nil),
	}
}

// Describe sends nothing: see ingressCertCollector.
func (c *ingressCertCollector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *ingressCertCollector) Collect(ch chan<- prometheus.Metric) {
	live := c.s.ingress.live.Load()
	if live == nil {
		return
	}
	now := time.Now()
	// One sample per serial: the serial is the only label telling ingress certificates
	// apart, and two samples with the same labels would fail the whole scrape. A
	// certificate shared by two listeners is one sample; two certificates with the same
	// serial (different issuers) report the one expiring first.
	expiry := map[string]float64{}
	for _, ic := range *live {
		for _, info := range ic.info(now) {
			if cur, ok := expiry[info.Serial]; !ok || info.SecondsToExpiry < cur {
				expiry[info.Serial] = info.SecondsToExpiry
			}
		}
		ch <- prometheus.MustNewConstMetric(c.updates, prometheus.CounterValue, float64(ic.updates.Load()), ic.addr)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(ic.failures.Load()), ic.addr)
	}
	for serial, secs := range expiry {
		ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, secs, "ingress", "ingress", "", serial)
	}
}
