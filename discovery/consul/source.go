package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/discovery/consul/blocking"
)

// Defaults for Options.
const (
	DefaultWaitTime         = time.Minute
	DefaultMinQueryInterval = time.Second
	DefaultRetryBase        = 250 * time.Millisecond
	DefaultRetryMax         = 10 * time.Second
)

// pacing returns the timings of a blocking-query loop of this package: the given ones,
// with the Default* values for those that are zero.
func pacing(waitTime, minQueryInterval, retryBase, retryMax time.Duration) blocking.Pacing {
	return blocking.Pacing{WaitTime: waitTime, MinQueryInterval: minQueryInterval, RetryBase: retryBase, RetryMax: retryMax}.
		WithDefaults(blocking.Pacing{WaitTime: DefaultWaitTime, MinQueryInterval: DefaultMinQueryInterval,
			RetryBase: DefaultRetryBase, RetryMax: DefaultRetryMax})
}

// Upstream says which Consul service feeds one upstream.
type Upstream struct {
	// Service is the Consul service name. Required.
	Service string
	// Tags keeps only instances that carry every one of these tags.
	Tags []string
	// Datacenter to query; empty means the client's default (the agent's own).
	Datacenter string
	// Namespace (Consul Enterprise); empty or "default" means the default namespace,
	// the only one Consul CE has.
	Namespace string
	// PassingOnly keeps only instances whose checks all pass (Consul's ?passing filter).
	// nil means true. With false, instances in warning stay with their Weights.Warning;
	// critical ones and those in maintenance are still left out.
	PassingOnly *bool
	// Connect resolves the service to its Connect sidecar proxies (and Connect-native
	// instances) through /v1/health/connect, and sets each endpoint's Identity to the
	// service's SPIFFE ID. Set it for upstreams reached over mesh mTLS.
	Connect bool
}

func (u Upstream) passingOnly() bool { return u.PassingOnly == nil || *u.PassingOnly }

// namespace is the ns query parameter: "default" is left out, since it is what Consul
// Enterprise assumes and Consul CE refuses any ns parameter.
func (u Upstream) namespace() string {
	if u.Namespace == "default" {
		return ""
	}
	return u.Namespace
}

// Options configure a Source. Zero durations take the Default* values.
type Options struct {
	// Upstreams maps upstream names (as passed to Watch) to their Consul services.
	Upstreams map[string]Upstream
	// Logger receives one warning when an upstream's queries start failing, one info line
	// when they recover, and debug lines for every change. nil discards.
	Logger *slog.Logger
	// WaitTime is how long one blocking query may wait for a change (at most 10m).
	WaitTime time.Duration
	// MinQueryInterval rate-limits each upstream's query loop, as Consul asks of
	// blocking-query clients: a token bucket with a burst of 2 refilled once per
	// interval, so quiet upstreams see changes at once and churning ones are polled.
	MinQueryInterval time.Duration
	// RetryBase and RetryMax bound the jittered exponential backoff after a failed query.
	RetryBase time.Duration
	RetryMax  time.Duration
	// TrustDomain overrides the SPIFFE trust domain of Connect identities; empty means
	// the one of the agent's Connect CA roots.
	TrustDomain string
	// OnStatus, if set, is called after every query of every upstream with that
	// upstream's status, from the upstream's Watch goroutine. It must not block.
	OnStatus func(Status)
}

// Status is the state of one upstream's Consul watch, for metrics, logs and admin pages.
type Status struct {
	// Upstream and Service name what is watched.
	Upstream string
	Service  string
	// Ready is true once a set has been published.
	Ready bool
	// Endpoints is the size of the last published set.
	Endpoints int
	// Index is the last X-Consul-Index seen.
	Index uint64
	// LastContact is when Consul last answered a query for this upstream.
	LastContact time.Time
	// LastUpdate is when a set was last published.
	LastUpdate time.Time
	// Updates counts published sets.
	Updates uint64
	// Errors counts failed queries; ConsecutiveErrors those since the last answer.
	Errors            uint64
	ConsecutiveErrors uint64
	// LastError is the error of the last failed query (kept after recovery).
	LastError error
	// StaleSince is when the current run of failures began; zero while Consul answers.
	// While it is set, the published endpoints are the last known ones and may be stale.
	StaleSince time.Time
}

// Stale reports whether the last query failed, so the endpoints may be out of date.
func (s Status) Stale() bool { return !s.StaleSince.IsZero() }

// Staleness is how long the endpoints have gone without confirmation from Consul:
// 0 while Consul answers, else the time since the current run of failures began.
func (s Status) Staleness(now time.Time) time.Duration {
	if s.StaleSince.IsZero() {
		return 0
	}
	return now.Sub(s.StaleSince)
}

// consulAPI is the part of the Consul API the source consumes.
type consulAPI interface {
	ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
	ConnectMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
	ConnectCARoots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error)
}

// apiClient adapts *api.Client to consulAPI.
type apiClient struct{ c *api.Client }

func (a apiClient) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return a.c.Health().ServiceMultipleTags(service, tags, passingOnly, q)
}

func (a apiClient) ConnectMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return a.c.Health().ConnectMultipleTags(service, tags, passingOnly, q)
}

func (a apiClient) ConnectCARoots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
	return a.c.Agent().ConnectCARoots(q)
}

// Source publishes the endpoints of Consul services, one blocking-query loop per watched
// upstream. It is safe for concurrent use; several upstreams are watched at once by
// calling Watch from several goroutines.
type Source struct {
	api    consulAPI
	opts   Options
	pacing blocking.Pacing
	log    *slog.Logger

	mu          sync.Mutex
	trustDomain string
	watches     map[string]*watchState
}

var _ discovery.Source = (*Source)(nil)

// New returns a source that queries Consul through client (see Client.API). It validates
// opts but does not contact Consul.
func New(client *api.Client, opts Options) (*Source, error) {
	if client == nil {
		return nil, errors.New("consul: nil client")
	}
	return newSource(apiClient{client}, opts)
}

func newSource(c consulAPI, opts Options) (*Source, error) {
	for name, up := range opts.Upstreams {
		if up.Service == "" {
			return nil, fmt.Errorf("consul: upstream %q: service is required", name)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Source{api: c, opts: opts, log: log, watches: make(map[string]*watchState),
		pacing: pacing(opts.WaitTime, opts.MinQueryInterval, opts.RetryBase, opts.RetryMax)}, nil
}

// Status returns the state of the most recent Watch of upstream, and false if upstream
// has not been watched (or its Watch has returned).
func (s *Source) Status(upstream string) (Status, bool) {
	s.mu.Lock()
	w := s.watches[upstream]
	s.mu.Unlock()
	if w == nil {
		return Status{}, false
	}
	return w.get(), true
}

// Statuses returns the state of every upstream being watched, sorted by upstream name.
func (s *Source) Statuses() []Status {
	s.mu.Lock()
	ws := make([]*watchState, 0, len(s.watches))
	for _, w := range s.watches {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	out := make([]Status, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.get())
	}
	slices.SortFunc(out, func(a, b Status) int { return cmp.Compare(a.Upstream, b.Upstream) })
	return out
}

// Watch runs the blocking-query loop of upstream until ctx is done, calling update with
// the first answer and then with every answer whose endpoints differ from the last
// published ones. While Consul cannot be reached it publishes nothing (the last set
// stays in use), retries with jittered exponential backoff and reports the staleness
// through Status; the first answer after an outage is a fresh, non-blocking read. On a
// first start with Consul down it keeps retrying, so update is first called when Consul
// answers. Watch returns an error at once only if upstream is not configured.
func (s *Source) Watch(ctx context.Context, upstream string, update func(*discovery.EndpointSet)) error {
	up, ok := s.opts.Upstreams[upstream]
	if !ok {
		return fmt.Errorf("consul discovery: upstream %q is not configured", upstream)
	}
	w := &watchState{st: Status{Upstream: upstream, Service: up.Service}}
	s.mu.Lock()
	s.watches[upstream] = w
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.watches[upstream] == w {
			delete(s.watches, upstream)
		}
		s.mu.Unlock()
	}()

	log := s.log.With("upstream", upstream, "service", up.Service)
	loop := blocking.NewLoop(s.pacing)
	var last *discovery.EndpointSet
	for loop.Wait(ctx) {
		entries, meta, td, err := s.query(ctx, up, loop)
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		if err != nil {
			// The next query is a fresh read (see blocking.Loop.Failed).
			failures, delay := loop.Failed()
			st := w.update(func(st *Status) {
				st.Errors++
				st.ConsecutiveErrors++
				st.LastError = err
				if st.StaleSince.IsZero() {
					st.StaleSince = now
				}
			})
			switch {
			case failures > 1:
				log.Debug("consul discovery: query failed again", "error", err, "failures", failures, "retry_in", delay)
			case last == nil:
				log.Warn("consul discovery: no answer from Consul yet; the upstream stays not ready while retrying", "error", err, "retry_in", delay)
			default:
				log.Warn("consul discovery: Consul query failing; keeping the last known endpoints", "error", err, "endpoints", last.Len(), "index", st.Index, "retry_in", delay)
			}
			s.notify(st)
			if !blocking.Sleep(ctx, delay) {
				return nil
			}
			continue
		}

		// The next query waits on the answer's index, by Consul's index rules.
		changed, failures := loop.Answered(meta.LastIndex)
		if failures > 0 {
			prev := w.get()
			log.Info("consul discovery: Consul answers again", "outage", now.Sub(prev.StaleSince).Round(time.Millisecond), "failed_queries", failures)
		}
		var published *discovery.EndpointSet
		if changed || last == nil {
			// The version is "<X-Consul-Index>-<publication number>": unique within the
			// Watch even when a new agent's index repeats an old one.
			version := strconv.FormatUint(meta.LastIndex, 10) + "-" + strconv.FormatUint(w.get().Updates+1, 10)
			set := discovery.NewEndpointSet(upstream, version, endpoints(up, entries, td))
			if last == nil || !last.SameEndpoints(set) {
				published = set
			}
		}
		st := w.update(func(st *Status) {
			st.Index = meta.LastIndex
			st.LastContact = now
			st.ConsecutiveErrors = 0
			st.StaleSince = time.Time{}
			if published != nil {
				st.Ready = true
				st.Endpoints = published.Len()
				st.LastUpdate = now
				st.Updates++
			}
		})
		if published != nil {
			log.Debug("consul discovery: endpoints changed", "endpoints", published.Len(), "index", meta.LastIndex)
			last = published
			update(published)
		}
		s.notify(st)
	}
	return nil
}

// query runs the next query of loop (blocking, unless its index is 0): a health query
// for up. For Connect upstreams it also returns the trust domain of the identities.
func (s *Source) query(ctx context.Context, up Upstream, loop *blocking.Loop) ([]*api.ServiceEntry, *api.QueryMeta, string, error) {
	q, cancel := loop.Query(ctx, &api.QueryOptions{
		Datacenter: up.Datacenter,
		Namespace:  up.namespace(),
		AllowStale: true, // any server answers: discovery keeps working without a leader
	})
	defer cancel()
	if !up.Connect {
		entries, meta, err := s.api.ServiceMultipleTags(up.Service, up.Tags, up.passingOnly(), q)
		return entries, meta, "", err
	}
	td, err := s.connectTrustDomain(q.Context())
	if err != nil {
		return nil, nil, "", err
	}
	entries, meta, err := s.api.ConnectMultipleTags(up.Service, up.Tags, up.passingOnly(), q)
	return entries, meta, td, err
}

// connectTrustDomain returns the trust domain of Connect identities, asking the agent
// for its CA roots the first time.
func (s *Source) connectTrustDomain(ctx context.Context) (string, error) {
	if s.opts.TrustDomain != "" {
		return s.opts.TrustDomain, nil
	}
	s.mu.Lock()
	td := s.trustDomain
	s.mu.Unlock()
	if td != "" {
		return td, nil
	}
	roots, _, err := s.api.ConnectCARoots((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("connect CA roots: %w", err)
	}
	if roots == nil || roots.TrustDomain == "" {
		return "", errors.New("connect CA roots: no trust domain (is Connect enabled on the agent?)")
	}
	s.mu.Lock()
	s.trustDomain = roots.TrustDomain
	s.mu.Unlock()
	return roots.TrustDomain, nil
}

// endpoints turns health entries into endpoints: address from the service (or its node),
// weight from the service's weights for its aggregated check status, and for Connect the
// SPIFFE ID of the destination service in trustDomain.
func endpoints(up Upstream, entries []*api.ServiceEntry, trustDomain string) []discovery.Endpoint {
	eps := make([]discovery.Endpoint, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil || e.Service.Port <= 0 {
			continue
		}
		w := e.Service.Weights
		if w.Passing == 0 && w.Warning == 0 {
			w = api.AgentWeights{Passing: 1, Warning: 1} // Consul's defaults
		}
		var weight int
		switch e.Checks.AggregatedStatus() {
		case api.HealthPassing:
			weight = w.Passing
		case api.HealthWarning:
			if up.passingOnly() {
				continue
			}
			weight = w.Warning
		default: // critical, maintenance, unknown
			continue
		}
		if weight <= 0 {
			continue // the operator asked for no traffic in this state
		}
		host := e.Service.Address
		if host == "" && e.Node != nil {
			host = e.Node.Address
		}
		if host == "" {
			continue
		}
		ep := discovery.Endpoint{
			Address: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Weight:  uint32(min(weight, 1<<31)),
		}
		if up.Connect {
			dc := up.Datacenter
			if e.Node != nil && e.Node.Datacenter != "" {
				dc = e.Node.Datacenter
			}
			ep.Identity = SpiffeID(trustDomain, e.Service.Partition, e.Service.Namespace, dc, up.Service)
		}
		eps = append(eps, ep)
	}
	return eps
}

// SpiffeID is the SPIFFE ID Consul Connect gives to the certificates of service in the
// given trust domain, partition, namespace and datacenter:
// spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>, with /ap/<partition> before /ns
// for a partition other than the default. Empty partition and namespace mean "default".
func SpiffeID(trustDomain, partition, namespace, datacenter, service string) string {
	if namespace == "" {
		namespace = "default"
	}
	ap := ""
	if partition != "" && partition != "default" {
		ap = "/ap/" + partition
	}
	return "spiffe://" + trustDomain + ap + "/ns/" + namespace + "/dc/" + datacenter + "/svc/" + service
}

// notify hands st to the OnStatus observer, if any.
func (s *Source) notify(st Status) {
	if s.opts.OnStatus != nil {
		s.opts.OnStatus(st)
	}
}

// watchState is the Status of one Watch, written by its goroutine and read by Status.
type watchState struct {
	mu sync.Mutex
	st Status
}

func (w *watchState) get() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

func (w *watchState) update(f func(*Status)) Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.st)
	return w.st
}
