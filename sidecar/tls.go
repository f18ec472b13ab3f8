package sidecar

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/l7"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// maxExpiryWarning is how long before its certificate expires the sidecar starts warning,
// at most: certificates living less than three times as long are warned about in their
// last third.
const maxExpiryWarning = 24 * time.Hour

// consulReloadWait bounds how long a reload that replaces a Consul certificate source
// waits for the new source's first certificate.
const consulReloadWait = 10 * time.Second

// meshState is the sidecar's mTLS certificate source. cur is changed by Apply (under
// Sidecar.mu); live is what /ready, /certs and the metrics read.
type meshState struct {
	cur  *meshTLS
	live atomic.Pointer[meshTLS]
}

// meshTLS is one certificate source with the settings it was built from. It is shared by
// every config whose mtls source settings are the same, so a reload keeps it.
type meshTLS struct {
	key  string
	src  mtls.Source
	td   spiffeid.TrustDomain // zero for source consul without a pinned trust domain
	stop context.CancelFunc   // ends the expiry watch
	// consul is set for source consul: upstream identities take Consul's form, with the
	// trust domain and datacenter of the current certificate.
	consul bool
}

// source returns the certificate source, nil without mTLS.
func (m *meshTLS) source() mtls.Source {
	if m == nil {
		return nil
	}
	return m.src
}

// meshFor returns the certificate source cfg asks for: the running one while its settings
// are unchanged, a new one otherwise (nil without an mtls block). A new one is used only
// if commitMesh is called; settleMesh closes it otherwise. cc is the Consul client
// (source consul).
func (s *Sidecar) meshFor(cfg *config.Config, cc consulConn) (*meshTLS, error) {
	mc := cfg.MTLS
	if mc == nil {
		return nil, nil
	}
	key := fmt.Sprintf("%s|%s|%s|%s|%s|%s|%s", mc.Source, mc.TrustDomain, cfg.Service, mc.CertFile, mc.KeyFile, mc.CAFile, mc.Dir)
	consulCA := mc.Source == config.MTLSSourceConsul
	if consulCA {
		key += fmt.Sprintf("|%s|%s|%p", mc.ConsulService, cc.key, cc.client)
	}
	sdsCA := mc.Source == config.MTLSSourceSDS && mc.SDS != nil
	if sdsCA {
		key += fmt.Sprintf("|%q|%q|%q", mc.SDS.Address, mc.SDS.CertName, mc.SDS.ValidationName)
	}
	if cur := s.mesh.cur; cur != nil && cur.key == key {
		return cur, nil
	}
	var td spiffeid.TrustDomain
	var err error
	if !consulCA || mc.TrustDomain != "" {
		if td, err = mtls.ParseTrustDomain(mc.TrustDomain); err != nil {
			return nil, err
		}
	}
	var src mtls.Source
	switch mc.Source {
	case config.MTLSSourceFiles:
		src, err = mtls.NewFileSource(mtls.FileOptions{CertFile: mc.CertFile, KeyFile: mc.KeyFile, CAFile: mc.CAFile,
			TrustDomain: td, Logger: s.log})
	case config.MTLSSourceDev:
		src, err = mtls.NewDevSource(mtls.DevOptions{Dir: mc.Dir, Service: cfg.Service, TrustDomain: td, Logger: s.log})
	case config.MTLSSourceConsul:
		if cc.client == nil {
			return nil, errors.New("mtls: source consul needs a Consul client") // unreachable: usesConsul
		}
		svc := mc.ConsulService
		if svc == "" {
			svc = cfg.Service
		}
		src, err = mtls.NewConsulSource(mtls.ConsulOptions{Agent: cc.client.API().Agent(), Service: svc,
			TrustDomain: td, Address: cc.addr, Logger: s.log})
	case config.MTLSSourceSDS:
		if !sdsCA {
			return nil, errors.New("mtls: source sds needs an sds block") // unreachable: validation
		}
		nodeID := cfg.Service
		if id, err := mtls.ServiceID(td, cfg.Service); err == nil {
			nodeID = id.String()
		}
		src, err = mtls.NewSDSSource(mtls.SDSOptions{Address: mc.SDS.Address, CertName: mc.SDS.CertName,
			ValidationName: mc.SDS.ValidationName, NodeID: nodeID, NodeCluster: cfg.Service, TrustDomain: td, Logger: s.log})
	default:
		err = fmt.Errorf("mtls source %q is not available", mc.Source)
	}
	if err != nil {
		return nil, fmt.Errorf("mtls: %w", err)
	}
	if consulCA && s.mesh.cur != nil {
		// A reload replaces a running source: give the new one a moment to load its first
		// certificate, so that handshakes do not fail once it is swapped in.
		wctx, cancel := context.WithTimeout(context.Background(), consulReloadWait)
		if _, err := mtls.Wait(wctx, src); err != nil {
			s.log.Warn("the new Consul certificate source has no certificate yet; applying the config anyway",
				"agent", cc.addr, "error", err)
		}
		cancel()
	}
	if sdsCA && s.mesh.cur != nil {
		// As for Consul: a reload replacing a running source waits a moment for the new
		// one's first certificate.
		wctx, cancel := context.WithTimeout(context.Background(), consulReloadWait)
		if _, err := mtls.Wait(wctx, src); err != nil {
			s.log.Warn("the new SDS certificate source has no certificate yet; applying the config anyway",
				"sds_address", mc.SDS.Address, "error", err)
		}
		cancel()
	}
	ctx, stop := context.WithCancel(context.Background())
	if sdsCA {
		// SPIRE's and Istio's agents rotate by 50 to 80% of the lifetime: warn once less
		// than a tenth is left, sized once the first certificate shows the lifetime.
		if _, err := src.Current(); err != nil {
			s.log.Info("waiting for the first certificate from the SDS server: /ready answers 503 until it arrives",
				"sds_address", mc.SDS.Address, "cert_name", mc.SDS.CertName, "validation_name", mc.SDS.ValidationName)
		}
		go func() {
			m, err := mtls.Wait(ctx, src)
			if err != nil {
				return
			}
			mtls.WatchExpiry(ctx, src, s.log, min(maxExpiryWarning, m.NotAfter().Sub(m.Leaf().NotBefore)/10))
		}()
		return &meshTLS{key: key, src: src, td: td, stop: stop}, nil
	}
	if consulCA {
		// Consul renews the leaf itself, by 90% of its lifetime at the latest: warn only
		// when the renewal is overdue, sized once the first leaf shows the lifetime.
		s.log.Info("waiting for the first certificate from Consul: /ready answers 503 until it arrives",
			"agent", cc.addr, "consul_service", mc.ConsulService)
		go func() {
			m, err := mtls.Wait(ctx, src)
			if err != nil {
				return
			}
			mtls.WatchExpiry(ctx, src, s.log, min(maxExpiryWarning, m.NotAfter().Sub(m.Leaf().NotBefore)/20))
		}()
		return &meshTLS{key: key, src: src, td: td, stop: stop, consul: true}, nil
	}
	warn := maxExpiryWarning
	if m, err := src.Current(); err == nil {
		warn = min(warn, m.NotAfter().Sub(m.Leaf().NotBefore)/3)
	} else {
		s.log.Error("no valid certificate loaded yet: /ready answers 503 until one is", "source", mc.Source, "error", err)
	}
	go mtls.WatchExpiry(ctx, src, s.log, warn)
	return &meshTLS{key: key, src: src, td: td, stop: stop}, nil
}

// settleMesh closes m if Apply did not commit it.
func (s *Sidecar) settleMesh(m *meshTLS) {
	if m != nil && m != s.mesh.cur {
		m.close()
	}
}

// commitMesh makes m the sidecar's source; the previous one is closed once connections
// built with it have had the drain timeout to finish their handshakes.
func (s *Sidecar) commitMesh(m *meshTLS, drain time.Duration) {
	old := s.mesh.cur
	s.mesh.cur = m
	s.mesh.live.Store(m)
	if old != nil && old != m {
		s.retire(drain, func(ctx context.Context) { <-ctx.Done(); old.close() })
	}
}

// closeMesh closes the source at the end of Drain.
func (s *Sidecar) closeMesh() {
	if m := s.mesh.cur; m != nil {
		s.mesh.cur = nil
		m.close()
	}
}

func (m *meshTLS) close() {
	m.stop()
	_ = m.src.Close()
}

// certsWaiting says why the sidecar is not ready for want of a certificate, or "".
func (s *Sidecar) certsWaiting() string {
	m := s.mesh.live.Load()
	if m == nil {
		return ""
	}
	cur, err := m.src.Current()
	if err != nil {
		return "no valid certificate loaded: " + err.Error()
	}
	if err := cur.Valid(time.Now()); err != nil {
		return "no valid certificate loaded: " + err.Error()
	}
	return ""
}

// upstreamTLS returns how each upstream's connections are secured, loading the CA files of
// tls: simple upstreams. Mesh entries learn the identities discovery gives endpoints from
// withIdentities.
func upstreamTLS(cfg *config.Config, m *meshTLS, pools *caPools) (map[string]l7.UpstreamTLS, error) {
	out := make(map[string]l7.UpstreamTLS, len(cfg.Upstreams))
	for i := range cfg.Upstreams {
		uc := &cfg.Upstreams[i]
		switch uc.TLS {
		case config.UpstreamTLSMesh:
			if m == nil {
				return nil, fmt.Errorf("upstream %q: tls mesh needs an mtls block", uc.Name)
			}
			if m.consul && uc.Identity == "" {
				out[uc.Name] = l7.UpstreamTLS{Source: m.src, Identities: newConsulIdentity(m.src, uc)}
				continue
			}
			want, err := mtls.ExpectedID(m.td, uc.Name, uc.Identity)
			if err != nil {
				return nil, fmt.Errorf("upstream %q: %w", uc.Name, err)
			}
			out[uc.Name] = l7.UpstreamTLS{Source: m.src, Expected: want}
		case config.UpstreamTLSSimple:
			t := l7.UpstreamTLS{Simple: true, ServerName: uc.TLSServerName}
			if uc.TLSCAFile != "" {
				pool, err := pools.load(uc.TLSCAFile)
				if err != nil {
					return nil, fmt.Errorf("upstream %q: %w", uc.Name, err)
				}
				t.RootCAs = pool
			}
			out[uc.Name] = t
		}
	}
	return out, nil
}

// caPools are the CA pools of tls: simple upstreams' tls_ca_file, kept across reloads:
// a reload that finds a file's content unchanged gets the same *x509.CertPool, so the
// upstream's l7.UpstreamTLS compares equal and its transport, with its pooled
// connections, is kept. Used under the Sidecar's lock only.
type caPools struct {
	byFile map[string]caPool
}

type caPool struct {
	sum  [sha256.Size]byte
	pool *x509.CertPool
}

// load reads file and returns its pool: the one loaded before while the content is the
// same, a new one otherwise.
func (c *caPools) load(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tls_ca_file: %w", err)
	}
	sum := sha256.Sum256(pem)
	if p, ok := c.byFile[file]; ok && p.sum == sum {
		return p.pool, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls_ca_file %s: no PEM certificate", file)
	}
	if c.byFile == nil {
		c.byFile = map[string]caPool{}
	}
	c.byFile[file] = caPool{sum: sum, pool: pool}
	return pool, nil
}

// dialFunc is l4.Options.Dial.
type dialFunc = func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error)

// withIdentities makes t (mesh TLS) verify the identity discovery gives each of u's
// endpoints, when it gives one; t's own lookup (source consul) answers for the others.
func withIdentities(t l7.UpstreamTLS, u *upstream) l7.UpstreamTLS {
	if t.Source != nil && u != nil {
		if t.Identities != nil {
			t.Identities = identityChain{u, t.Identities}
		} else {
			t.Identities = u
		}
	}
	return t
}

// identityChain asks first, then second; the first identity given wins. It is a
// comparable value (transport options are compared to keep pools across reloads).
type identityChain struct{ first, second l7.IdentityLookup }

// IdentityOf implements l7.IdentityLookup. Safe for concurrent use.
func (c identityChain) IdentityOf(addr string) string {
	if id := c.first.IdentityOf(addr); id != "" {
		return id
	}
	return c.second.IdentityOf(addr)
}

// consulIdentity is the expected identity of an upstream's endpoints with source consul
// and no configured identity: Consul's spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>, with
// the trust domain of the current certificate, the upstream's Consul namespace (default
// "default") and datacenter (default: this sidecar's, from its own certificate), and its
// Consul service name (default: the upstream's name). It follows the certificate as it
// rotates (it is computed per dial, which a handshake dwarfs). A comparable value, so that
// an unchanged upstream keeps its transport across reloads. Safe for concurrent use.
type consulIdentity struct {
	src             mtls.Source
	service, ns, dc string
}

func newConsulIdentity(src mtls.Source, uc *config.Upstream) consulIdentity {
	c := consulIdentity{src: src, service: uc.Name, ns: "default"}
	if cu := uc.Consul; cu != nil {
		c.service = cu.Service
		if cu.Namespace != "" {
			c.ns = cu.Namespace
		}
		c.dc = cu.Datacenter
	}
	return c
}

// IdentityOf implements l7.IdentityLookup: the same identity for every address, "" while
// no certificate is loaded (the handshake then fails for want of one anyway).
func (c consulIdentity) IdentityOf(string) string {
	m, err := c.src.Current()
	if err != nil {
		return ""
	}
	dc := c.dc
	if dc == "" {
		own, err := mtls.ParseService(m.ID())
		if err != nil || own.Datacenter == "" {
			return "" // unreachable: ConsulSource publishes Consul identities only
		}
		dc = own.Datacenter
	}
	id, err := mtls.ConsulServiceID(m.ID().TrustDomain(), c.ns, dc, c.service)
	if err != nil {
		return ""
	}
	return id.String()
}

// tcpDial returns the l4 dial function of a TCP upstream secured by t (mTLS or TLS, no
// ALPN), nil for plaintext. l4 bounds ctx with the connect timeout, which so covers the
// handshake too.
func tcpDial(t l7.UpstreamTLS) dialFunc {
	if !t.Enabled() {
		return nil
	}
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	return func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) { return t.Dial(ctx, d, ep.Address) }
}

// identities is an upstream's map of endpoint address to the SPIFFE ID discovery expects of
// it; only endpoints whose discovery names one are in it.
type identities = map[string]string

// setIdentities records the identities discovery gave set's endpoints.
func (u *upstream) setIdentities(set *discovery.EndpointSet) {
	var ids identities
	for _, e := range set.Endpoints() {
		if e.Identity != "" {
			if ids == nil {
				ids = identities{}
			}
			ids[e.Address] = e.Identity
		}
	}
	if ids == nil && u.identities.Load() == nil {
		return
	}
	u.identities.Store(&ids)
}

// IdentityOf implements l7.IdentityLookup: the SPIFFE ID discovery expects of the endpoint
// at addr, or "". Safe for concurrent use; one atomic load.
func (u *upstream) IdentityOf(addr string) string {
	if p := u.identities.Load(); p != nil {
		return (*p)[addr]
	}
	return ""
}

// inboundTLS is how the inbound listener terminates TLS: the mode and the server config.
type inboundTLS struct {
	mode      mtls.Mode
	config    *tls.Config
	handshake time.Duration // bounds each handshake
	log       *slog.Logger
	// failures counts refused handshakes by reason; nil counts nothing.
	failures *prometheus.CounterVec
	// kind names the listener's TLS in replies and logs: "mTLS" (the inbound; the
	// zero value) or "TLS" (an ingress, which asks for no client certificate).
	kind string
}

// listenerName is "an mTLS listener" or "a TLS listener", for replies.
func (in *inboundTLS) listenerName() string {
	if in.tlsKind() == "mTLS" {
		return "an mTLS listener"
	}
	return "a " + in.tlsKind() + " listener"
}

// tlsKind is in.kind, "mTLS" by default.
func (in *inboundTLS) tlsKind() string {
	if in.kind == "" {
		return "mTLS"
	}
	return in.kind
}

// Reasons of ferry_tls_handshake_failures_total.
const (
	handshakePlaintext = "plaintext"        // a plaintext request to an mTLS-only listener
	handshakePeerCert  = "peer_certificate" // no, an untrusted, expired or unauthorized certificate
	handshakeTimeout   = "timeout"          // not completed within the listener's read_header_timeout
	handshakeProtocol  = "protocol"         // any other failure (bad version, no shared cipher, reset)
)

// newHandshakeFailures is ferry_tls_handshake_failures_total, by listener and reason.
func newHandshakeFailures() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_tls_handshake_failures_total",
		Help: "TLS handshakes refused on a listener, by reason: plaintext, peer_certificate, timeout or protocol.",
	}, []string{"listener", "reason"})
}

// failed counts a refused handshake.
func (in *inboundTLS) failed(reason string) {
	if in.failures != nil {
		in.failures.WithLabelValues(reason).Inc()
	}
}

// inboundTLSFor returns the inbound termination for cfg (nil: plaintext) and the part of
// the front key it sets: a change of mode or source builds a new front.
func inboundTLSFor(cfg *config.Config, m *meshTLS, tcp bool, log *slog.Logger) (*inboundTLS, string) {
	if m == nil || cfg.Inbound == nil {
		return nil, ""
	}
	mode, err := mtls.ParseMode(cfg.MTLS.Mode)
	if err != nil || mode == mtls.ModeDisabled {
		return nil, "/mtls-disabled"
	}
	sc := mtls.ServerConfig(m.src, nil)
	if tcp {
		sc.NextProtos = nil
	}
	return &inboundTLS{mode: mode, config: sc, handshake: cfg.Inbound.ReadHeaderTimeout.D(), log: log},
		fmt.Sprintf("/mtls-%s-%p", mode, m)
}

// tlsLayer terminates TLS in front of a front: the listener's accept loop pushes raw
// connections into raw; mtls.WrapListener (strict or permissive) turns them into *tls.Conn
// (or, permissive, plaintext connections); the handshake runs on its own goroutine,
// bounded, and the decrypted connection goes to the front (for HTTP, wrapped in the
// framing guard, which so scans plaintext).
type tlsLayer struct {
	in      *inboundTLS
	raw     *chanListener
	ln      net.Listener
	f       *front
	m       telemetry.ListenerMetrics
	pending sync.WaitGroup // accept loop and handshakes in progress
}

// startTLS puts a TLS layer in front of f; nil in leaves f plaintext.
func (f *front) startTLS(in *inboundTLS, m telemetry.ListenerMetrics, addr net.Addr) {
	if in == nil {
		return
	}
	raw := newChanListener(addr)
	ln, err := mtls.WrapListener(raw, in.mode, in.config)
	if err != nil {
		ln = tls.NewListener(raw, in.config) // unreachable: the mode was parsed
	}
	t := &tlsLayer{in: in, raw: raw, ln: ln, f: f, m: m}
	f.tlsIn = t
	t.pending.Add(1)
	go t.accept()
}

func (t *tlsLayer) accept() {
	defer t.pending.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		tc, ok := c.(*tls.Conn)
		if !ok {
			t.deliver(c) // permissive: plaintext
			continue
		}
		t.pending.Add(1)
		go func() {
			defer t.pending.Done()
			t.handshake(tc)
		}()
	}
}

func (t *tlsLayer) deliver(c net.Conn) {
	if !t.f.serveDecrypted(c, t.m) {
		_ = c.Close()
	}
}

// handshake completes the server handshake of c and hands it on, or refuses it: a
// plaintext HTTP request gets a 400 with Proxy-Status, anything else a closed connection.
func (t *tlsLayer) handshake(c *tls.Conn) {
	ctx := context.Background()
	if t.in.handshake > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.in.handshake)
		defer cancel()
	}
	err := c.HandshakeContext(ctx)
	if err == nil {
		t.deliver(c)
		return
	}
	var rhe tls.RecordHeaderError
	var pe *mtls.PeerError
	switch {
	case errors.As(err, &rhe) && rhe.Conn != nil && looksLikeHTTP(rhe.RecordHeader):
		body := "client sent a plaintext request to " + t.in.listenerName() + "\n"
		_, _ = fmt.Fprintf(rhe.Conn, "HTTP/1.1 400 Bad Request\r\nProxy-Status: %s; error=tls_protocol_error; details=%q\r\n"+
			"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			l7.ProxyName, "plaintext request to "+t.in.listenerName(), len(body), body)
		_ = rhe.Conn.Close()
		t.in.failed(handshakePlaintext)
		t.in.log.Info(t.in.tlsKind()+" handshake refused: plaintext request", "downstream", c.RemoteAddr().String())
	case errors.As(err, &pe):
		t.in.failed(handshakePeerCert)
		t.in.log.Info(t.in.tlsKind()+" handshake refused: peer certificate", "downstream", c.RemoteAddr().String(), "details", pe.Details())
	case errors.Is(err, context.DeadlineExceeded):
		t.in.failed(handshakeTimeout)
		t.in.log.Debug(t.in.tlsKind()+" handshake timed out", "downstream", c.RemoteAddr().String(), "timeout", t.in.handshake)
	default:
		t.in.failed(handshakeProtocol)
		t.in.log.Debug(t.in.tlsKind()+" handshake failed", "downstream", c.RemoteAddr().String(), "error", err)
	}
	_ = c.Close()
}

// close stops the layer: no more connections are accepted, and handshakes in progress end
// (bounded by the handshake timeout) before it returns.
func (t *tlsLayer) close() {
	_ = t.ln.Close()
	_ = t.raw.Close()
	t.pending.Wait()
}

// looksLikeHTTP reports whether a TLS record header is the start of a plaintext HTTP
// request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE", "PRI *":
		return true
	}
	return false
}

// serveConn hands c to the front, through its TLS layer if it has one; false means the
// front is shutting down and took nothing.
func (f *front) serveConn(c net.Conn, m telemetry.ListenerMetrics) bool {
	if f.srv != nil {
		c = l7.WithRawIO(c) // HTTP only: TCP sessions splice between *net.TCPConns
	}
	if f.tlsIn != nil {
		return f.tlsIn.raw.push(c)
	}
	return f.serveDecrypted(c, m)
}

// CertsStatus is the /certs admin answer.
type CertsStatus struct {
	// Enabled is false when the config has no mtls block.
	Enabled bool `json:"enabled"`
	// SPIFFEID is this sidecar's identity, from its current certificate.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Valid is true while a certificate is loaded and within its validity period.
	Valid bool   `json:"valid"`
	Error string `json:"error,omitempty"`
	// Status is the source's refresh history.
	Status *mtls.Status `json:"status,omitempty"`
	// Certificates describes the leaf, its chain and the trust bundle.
	Certificates []mtls.CertInfo `json:"certificates"`
	// Ingress describes the ingress listeners' server certificates (see ingress.go).
	Ingress []IngressCertInfo `json:"ingress"`
}

func (s *Sidecar) serveCerts(w http.ResponseWriter, _ *http.Request) {
	out := CertsStatus{Certificates: []mtls.CertInfo{}, Ingress: s.IngressCerts()}
	if m := s.mesh.live.Load(); m != nil {
		out.Enabled = true
		st := m.src.Status()
		out.Status = &st
		cur, err := m.src.Current()
		if err == nil {
			now := time.Now()
			out.SPIFFEID = cur.ID().String()
			out.Certificates = cur.Info(now)
			err = cur.Valid(now)
		}
		out.Valid = err == nil
		if err != nil {
			out.Error = err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
	_ = bw.Flush()
}

// certCollector exports the metrics of the sidecar's current certificate source (see
// mtls.Collector): ferry_mtls_certificate_expiry_seconds and friends.
type certCollector struct{ s *Sidecar }

var _ prometheus.Collector = certCollector{}

func (c certCollector) Describe(ch chan<- *prometheus.Desc) { mtls.NewCollector().Describe(ch) }

func (c certCollector) Collect(ch chan<- prometheus.Metric) {
	if m := c.s.mesh.live.Load(); m != nil {
		mtls.NewCollector(m.src).Collect(ch)
	}
}
