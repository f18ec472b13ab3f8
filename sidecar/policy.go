package sidecar

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/discovery/consul"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/prometheus/client_golang/prometheus"
)

// policyFor compiles the policy block of cfg, keeping the counters and rate-limit buckets
// of the running policy for the rules and limits that carry over. It returns nil (no
// policy, nothing enforced) when the block sets nothing. With policy.access.source:
// consul the access rules are the latest intention set of the watch prepareIntentions
// chose (none yet: every request is refused as policy.PendingRule).
func (s *Sidecar) policyFor(cfg *config.Config) (*policy.Policy, error) {
	if !cfg.HasPolicy() {
		return nil, nil
	}
	opts := policy.Options{Prev: s.pol.Load()}
	if iw := s.intentions.next; iw != nil {
		opts.Rules = iw.set.Load()
		s.intentions.nextSet = opts.Rules
	}
	p, err := policy.Compile(&cfg.Policy, opts)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}

// intentionsFirstWait bounds how long Apply waits for a new intentions watch's first
// answer before going on with access refused (and /ready 503) until it comes.
const intentionsFirstWait = 2 * time.Second

// intentionsState is the Consul intentions watch of policy.access.source: consul. The
// watch lives across reloads while the source stays consul and its Consul connection,
// service and trust domain are unchanged. Each new intention set recompiles the policy
// and swaps it into the handlers (re-applying the running config), keeping the counters.
type intentionsState struct {
	// Written under Sidecar.mu.
	cur     *intentionWatch // the running watch, nil without source: consul
	next    *intentionWatch // the watch of the config being applied
	nextSet *policy.RuleSet // the set policyFor compiled for it
	// live is cur, for readers that do not take Sidecar.mu (/ready, metrics).
	live atomic.Pointer[intentionWatch]
}

// intentionWatch is one running IntentionWatcher and what it published.
type intentionWatch struct {
	key     string
	address string // of the Consul agent, for messages
	w       *consul.IntentionWatcher
	set     atomic.Pointer[policy.RuleSet] // latest published; nil before the first answer
	applied atomic.Pointer[policy.RuleSet] // the set the running policy was compiled with
	first   chan struct{}                  // closed with the first set
	changed chan struct{}                  // a new set is waiting to be applied
	cancel  context.CancelFunc
	done    chan struct{} // closed when the watcher has returned
}

// prepareIntentions sets s.intentions.next to the watch cfg needs: the running one if its
// key is unchanged, else a new one, started at once and waited for (at most
// intentionsFirstWait) so that a fresh sidecar starts with its intentions. Called under
// s.mu; settleIntentions stops a new watch the Apply did not keep.
func (s *Sidecar) prepareIntentions(cfg *config.Config, cc consulConn) error {
	s.intentions.next, s.intentions.nextSet = nil, nil
	if cfg.Policy.Access.Source != policy.SourceConsul {
		return nil
	}
	if cc.client == nil {
		return fmt.Errorf("policy.access.source: consul: no Consul client") // unreachable: usesConsul
	}
	// Callers are matched in this service's trust domain; with the Connect CA, whose
	// identities carry the Consul cluster's trust domain, in any the CA bundle accepts.
	td := ""
	if m := cfg.MTLS; m != nil && m.Source != config.MTLSSourceConsul {
		td = m.TrustDomain
	}
	if m := cfg.MTLS; m != nil && m.Mode == "permissive" && cfg.Policy.Access.Default != "deny" {
		s.log.Warn("policy.access.source: consul with mtls mode permissive: plaintext callers have no identity, match no " +
			"intention and get the default (allow); set policy.access.default: deny or mtls mode: strict")
	}
	key := cc.key + "|" + cfg.Service + "|" + td
	if cur := s.intentions.cur; cur != nil && cur.key == key {
		s.intentions.next = cur
		return nil
	}
	w, err := consul.NewIntentionWatcher(cc.client.API(), consul.IntentionOptions{Service: cfg.Service, TrustDomain: td, Logger: s.log})
	if err != nil {
		return fmt.Errorf("policy.access.source: consul: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	iw := &intentionWatch{key: key, address: cc.addr, w: w, first: make(chan struct{}), changed: make(chan struct{}, 1),
		cancel: cancel, done: make(chan struct{})}
	var once sync.Once
	go func() {
		defer close(iw.done)
		w.Run(ctx, func(rs *policy.RuleSet) {
			iw.set.Store(rs)
			once.Do(func() { close(iw.first) })
			select {
			case iw.changed <- struct{}{}:
			default:
			}
		})
	}()
	go s.applyIntentionsLoop(ctx, iw)
	t := time.NewTimer(intentionsFirstWait)
	defer t.Stop()
	select {
	case <-iw.first:
	case <-t.C:
		s.log.Warn("waiting for Consul intentions: inbound access is refused (rule "+policy.PendingRule+
			") and /ready answers 503 until Consul answers", "service", cfg.Service, "consul", cc.addr, "waited", intentionsFirstWait)
	}
	s.intentions.next = iw
	return nil
}

// applyIntentionsLoop re-applies the running config whenever iw publishes a set the
// running policy was not compiled with. It never holds s.mu while iw's watcher waits.
func (s *Sidecar) applyIntentionsLoop(ctx context.Context, iw *intentionWatch) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-iw.changed:
		}
		s.mu.Lock()
		cfg := s.Config()
		if s.intentions.cur == iw && !s.draining.Load() && cfg != nil && iw.applied.Load() != iw.set.Load() {
			if err := s.applyLocked(cfg); err != nil {
				s.log.Error("consul intentions: new intention set not applied; the previous one stays in force", "error", err)
			} else if rs := iw.applied.Load(); rs != nil {
				s.log.Info("consul intentions: access policy updated", "version", rs.Version, "rules", len(rs.Rules))
			}
		}
		s.mu.Unlock()
	}
}

// settleIntentions stops the watch prepareIntentions started if the Apply did not keep it.
func (s *Sidecar) settleIntentions() {
	if iw := s.intentions.next; iw != nil && iw != s.intentions.cur {
		iw.cancel()
	}
	s.intentions.next, s.intentions.nextSet = nil, nil
}

// commitIntentions makes the prepared watch the running one (stopping the previous one)
// and records the set the new policy was compiled with. Called under s.mu at the end of
// a successful Apply.
func (s *Sidecar) commitIntentions() {
	iw := s.intentions.next
	if old := s.intentions.cur; old != nil && old != iw {
		old.cancel()
	}
	s.intentions.cur = iw
	s.intentions.live.Store(iw)
	if iw != nil {
		iw.applied.Store(s.intentions.nextSet)
	}
}

// closeIntentions stops the running watch (Drain) and waits for its watcher to return.
func (s *Sidecar) closeIntentions() {
	iw := s.intentions.cur
	s.intentions.cur = nil
	s.intentions.live.Store(nil)
	if iw != nil {
		iw.cancel()
		<-iw.done
	}
}

// intentionsWaiting says why the sidecar is not ready for want of its first intention
// set, or "".
func (s *Sidecar) intentionsWaiting() string {
	iw := s.intentions.live.Load()
	if iw == nil || iw.set.Load() != nil {
		return ""
	}
	why := fmt.Sprintf("waiting for the first answer from Consul about the intentions of %q (at %s); inbound access is refused until then",
		iw.w.Status().Service, iw.address)
	if err := iw.w.Status().LastError; err != nil {
		why += ": " + err.Error()
	}
	return why
}

// listenerPort is the port of a listener address, 0 if it has none.
func listenerPort(addr string) uint16 {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0
	}
	return uint16(n)
}

// policyCollector exports the running policy's per-rule decision counters at scrape
// time. The counters carry over reloads for rules that keep their names.
type policyCollector struct{ s *Sidecar }

var descPolicyDecisions = prometheus.NewDesc("ferry_policy_decisions_total",
	"Policy decisions per rule: kind is normalize, filter, access, rate_limit or connection_rate_limit; "+
		"outcome is allowed, denied, dry_run_denied, limited or error (a failed call to the rate limit service).",
	[]string{"kind", "rule", "outcome"}, nil)

var (
	descIntentionsReady = prometheus.NewDesc("ferry_consul_intentions_ready",
		"1 once the Consul intentions of this service have been received (policy.access.source: consul).", nil, nil)
	descIntentionsStale = prometheus.NewDesc("ferry_consul_intentions_stale_seconds",
		"How long the enforced Consul intentions have gone without confirmation from Consul (0 while it answers).", nil, nil)
	descIntentionsErrors = prometheus.NewDesc("ferry_consul_intentions_errors_total",
		"Failed queries for the Consul intentions of this service (since the watch started).", nil, nil)
	descIntentionsUpdates = prometheus.NewDesc("ferry_consul_intentions_updates_total",
		"Intention sets received from Consul (since the watch started).", nil, nil)
	descIntentionsCount = prometheus.NewDesc("ferry_consul_intentions",
		"Intentions in the set in force.", nil, nil)
)

// Describe implements prometheus.Collector.
func (policyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPolicyDecisions, descIntentionsReady, descIntentionsStale,
		descIntentionsErrors, descIntentionsUpdates, descIntentionsCount} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It reads atomics and the intention watch's
// status only.
func (c policyCollector) Collect(ch chan<- prometheus.Metric) {
	if iw := c.s.intentions.live.Load(); iw != nil {
		st := iw.w.Status()
		ready := 0.0
		if st.Ready {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(descIntentionsReady, prometheus.GaugeValue, ready)
		ch <- prometheus.MustNewConstMetric(descIntentionsStale, prometheus.GaugeValue, st.Staleness(time.Now()).Seconds())
		ch <- prometheus.MustNewConstMetric(descIntentionsErrors, prometheus.CounterValue, float64(st.Errors))
		ch <- prometheus.MustNewConstMetric(descIntentionsUpdates, prometheus.CounterValue, float64(st.Updates))
		ch <- prometheus.MustNewConstMetric(descIntentionsCount, prometheus.GaugeValue, float64(st.Intentions))
	}
	for _, st := range c.s.pol.Load().Stats() {
		kind := st.Kind.String()
		emit := func(outcome string, v uint64) {
			ch <- prometheus.MustNewConstMetric(descPolicyDecisions, prometheus.CounterValue, float64(v), kind, st.Rule, outcome)
		}
		switch st.Kind {
		case policy.KindAccess:
			emit("allowed", st.Allowed)
			emit("denied", st.Denied)
			emit("dry_run_denied", st.DryRunDenied)
		case policy.KindRateLimit, policy.KindConnectionRateLimit:
			emit("allowed", st.Allowed)
			emit("limited", st.Limited)
		default:
			emit("denied", st.Denied)
			if st.DryRunDenied > 0 {
				emit("dry_run_denied", st.DryRunDenied)
			}
			if st.Allowed > 0 {
				emit("allowed", st.Allowed)
			}
			if st.Limited > 0 {
				emit("limited", st.Limited)
			}
		}
		if st.Errors > 0 {
			emit("error", st.Errors)
		}
	}
}
