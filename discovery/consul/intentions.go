package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/blocking"
	"github.com/ferrymesh/ferry/policy"
)

// IntentionOptions configure an IntentionWatcher. Zero durations take the Default* values
// of Options.
type IntentionOptions struct {
	// Service is the destination whose intentions are followed (this sidecar's service).
	// Required.
	Service string
	// TrustDomain is the SPIFFE trust domain of the callers' identities; empty matches
	// callers of any trust domain the mTLS layer accepts.
	TrustDomain string
	// Logger receives a warning when queries start failing, an info line when they
	// recover, and an info line for every new intention set. nil discards.
	Logger *slog.Logger
	// WaitTime, MinQueryInterval, RetryBase and RetryMax are as in Options.
	WaitTime         time.Duration
	MinQueryInterval time.Duration
	RetryBase        time.Duration
	RetryMax         time.Duration
}

// IntentionStatus is the state of an IntentionWatcher, for metrics, logs and /ready.
type IntentionStatus struct {
	// Service is the destination watched.
	Service string
	// Ready is true once a rule set has been published.
	Ready bool
	// Intentions is the number of intentions in the last published set.
	Intentions int
	// Index is the last X-Consul-Index seen.
	Index uint64
	// LastContact is when Consul last answered; LastUpdate when a set was last published.
	LastContact, LastUpdate time.Time
	// Updates counts published sets.
	Updates uint64
	// Errors counts failed queries; ConsecutiveErrors those since the last answer.
	Errors, ConsecutiveErrors uint64
	// LastError is the error of the last failed query (kept after recovery).
	LastError error
	// StaleSince is when the current run of failures began; zero while Consul answers.
	// While it is set the published rules are the last known ones.
	StaleSince time.Time
}

// Staleness is how long the intentions have gone without confirmation from Consul: 0
// while Consul answers.
func (s IntentionStatus) Staleness(now time.Time) time.Duration {
	if s.StaleSince.IsZero() {
		return 0
	}
	return now.Sub(s.StaleSince)
}

// intentionsAPI is the part of the Consul API the watcher consumes.
type intentionsAPI interface {
	IntentionMatch(args *api.IntentionMatch, q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error)
	ConfigEntry(kind, name string, q *api.QueryOptions) (api.ConfigEntry, *api.QueryMeta, error)
}

// intentionsClient adapts *api.Client to intentionsAPI.
type intentionsClient struct{ c *api.Client }

func (a intentionsClient) IntentionMatch(args *api.IntentionMatch, q *api.QueryOptions) (map[string][]*api.Intention, *api.QueryMeta, error) {
	return a.c.Connect().IntentionMatch(args, q)
}

func (a intentionsClient) ConfigEntry(kind, name string, q *api.QueryOptions) (api.ConfigEntry, *api.QueryMeta, error) {
	return a.c.ConfigEntries().Get(kind, name, q)
}

// JWTRule is the one rule of the set published while the destination's service-intentions
// entry requires a JWT of every request: Ferry does not verify JWTs, so it refuses all
// (failing closed) rather than let in what Consul would not.
const JWTRule = "intentions:jwt-unsupported"

// IntentionWatcher follows the intentions whose destination is one service with blocking
// queries on Consul's intention match endpoint, and publishes them as policy rules
// (IntentionRules). When the service's service-intentions entry requires a JWT of every
// request, the published set is the single deny rule JWTRule instead. Status is safe to
// call concurrently with Run.
type IntentionWatcher struct {
	api    intentionsAPI
	opts   IntentionOptions
	pacing blocking.Pacing
	log    *slog.Logger

	mu sync.Mutex
	st IntentionStatus
}

// NewIntentionWatcher returns a watcher of opts.Service's intentions through client. It
// does not contact Consul.
func NewIntentionWatcher(client *api.Client, opts IntentionOptions) (*IntentionWatcher, error) {
	if client == nil {
		return nil, errors.New("consul intentions: nil client")
	}
	return newIntentionWatcher(intentionsClient{client}, opts)
}

func newIntentionWatcher(c intentionsAPI, opts IntentionOptions) (*IntentionWatcher, error) {
	if opts.Service == "" {
		return nil, errors.New("consul intentions: service is required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &IntentionWatcher{api: c, opts: opts, log: log, st: IntentionStatus{Service: opts.Service},
		pacing: pacing(opts.WaitTime, opts.MinQueryInterval, opts.RetryBase, opts.RetryMax)}, nil
}

// Status returns the watcher's state.
func (w *IntentionWatcher) Status() IntentionStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

func (w *IntentionWatcher) update(f func(*IntentionStatus)) IntentionStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.st)
	return w.st
}

// Run follows the intentions until ctx is done. It calls update (from Run's goroutine)
// with the first answer and then with every answer whose translated rules differ from the
// last published ones; the RuleSet it passes is never modified afterwards. While Consul
// cannot be reached it publishes nothing (the last set stays in force), retries with
// jittered exponential backoff and reports the staleness through Status. Run is meant to
// be called once.
func (w *IntentionWatcher) Run(ctx context.Context, update func(*policy.RuleSet)) {
	log := w.log.With("service", w.opts.Service)
	loop := blocking.NewLoop(w.pacing)
	var last *policy.RuleSet
	for loop.Wait(ctx) {
		ixns, meta, jwt, err := w.query(ctx, loop)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil {
			// The next query is a fresh read (see blocking.Loop.Failed).
			failures, delay := loop.Failed()
			w.update(func(st *IntentionStatus) {
				st.Errors++
				st.ConsecutiveErrors++
				st.LastError = err
				if st.StaleSince.IsZero() {
					st.StaleSince = now
				}
			})
			switch {
			case failures > 1:
				log.Debug("consul intentions: query failed again", "error", err, "failures", failures, "retry_in", delay)
			case last == nil:
				log.Warn("consul intentions: no answer from Consul yet; access stays refused while retrying", "error", err, "retry_in", delay)
			default:
				log.Warn("consul intentions: Consul query failing; enforcing the last known intentions", "error", err,
					"intentions", len(last.Rules), "retry_in", delay)
			}
			if !blocking.Sleep(ctx, delay) {
				return
			}
			continue
		}
		// The next query waits on the answer's index, by Consul's index rules.
		changed, failures := loop.Answered(meta.LastIndex)
		if failures > 0 {
			log.Info("consul intentions: Consul answers again", "outage", now.Sub(w.Status().StaleSince).Round(time.Millisecond),
				"failed_queries", failures)
		}
		var published *policy.RuleSet
		if changed || last == nil {
			rules, notes := IntentionRules(ixns, w.opts.TrustDomain)
			if jwt {
				rules = []policy.Rule{{Name: JWTRule, Action: "deny"}}
				notes = append(notes, "the service-intentions entry of "+w.opts.Service+" requires a JWT, which Ferry does not verify: every request is refused")
			}
			if last == nil || !reflect.DeepEqual(last.Rules, rules) {
				published = &policy.RuleSet{Version: strconv.FormatUint(meta.LastIndex, 10), Rules: rules}
				for _, n := range notes {
					log.Warn("consul intentions: "+n, "index", meta.LastIndex)
				}
			}
		}
		w.update(func(st *IntentionStatus) {
			st.Index = meta.LastIndex
			st.LastContact = now
			st.ConsecutiveErrors = 0
			st.StaleSince = time.Time{}
			if published != nil {
				st.Ready = true
				st.Intentions = len(ixns)
				st.LastUpdate = now
				st.Updates++
			}
		})
		if published != nil {
			log.Info("consul intentions: new intention set", "intentions", len(ixns), "rules", len(published.Rules), "index", meta.LastIndex)
			last = published
			update(published)
		}
	}
}

// query runs the next query of loop (blocking, unless its index is 0): an intention
// match query and, when it brings a new index, a read of the destination's
// service-intentions entry for a JWT requirement (which the match answer does not carry).
func (w *IntentionWatcher) query(ctx context.Context, loop *blocking.Loop) ([]*api.Intention, *api.QueryMeta, bool, error) {
	q, cancel := loop.Query(ctx, &api.QueryOptions{AllowStale: true})
	defer cancel()
	index := q.WaitIndex
	m, meta, err := w.api.IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination, Names: []string{w.opts.Service}}, q)
	if err != nil {
		return nil, nil, false, fmt.Errorf("intention match: %w", err)
	}
	if index != 0 && meta.LastIndex == index {
		return m[w.opts.Service], meta, false, nil // unchanged: the rules are not rebuilt
	}
	e, _, err := w.api.ConfigEntry(api.ServiceIntentions, w.opts.Service, (&api.QueryOptions{AllowStale: true}).WithContext(q.Context()))
	var se api.StatusError
	switch {
	case errors.As(err, &se) && se.Code == 404:
		return m[w.opts.Service], meta, false, nil
	case err != nil:
		return nil, nil, false, fmt.Errorf("service-intentions entry: %w", err)
	}
	ie, _ := e.(*api.ServiceIntentionsConfigEntry)
	return m[w.opts.Service], meta, ie != nil && ie.JWT != nil, nil
}

// IntentionRules translates the intentions of one destination into access rules
// evaluated first match (policy.OrderFirstMatch), highest precedence first (intentions
// are stably sorted by Precedence, so Consul's own order breaks ties).
//
// An L4 intention becomes one rule "intention:SRC->DST" with its action. An L7 one becomes
// a rule per permission, "intention:SRC->DST:permissions[i]", followed by
// "intention:SRC->DST" with action "default": a request from SRC that no permission
// matches gets the default decision and lower-precedence intentions do not apply to it,
// as in Consul. The source service (a name or "*", in a namespace and partition) matches
// callers whose SPIFFE ID is Consul's spiffe://TD/ns/NS/dc/DC/svc/NAME or, in the default
// namespace, spiffe://TD/svc/NAME; TD is trustDomain, or any when empty.
//
// What cannot be enforced here fails closed, and the returned notes say so: a permission
// requiring a JWT denies, and an intention whose conditions do not compile denies its
// source altogether. Intentions from peered clusters, sameness groups or non-Consul
// sources are left out (their callers cannot have an identity of this trust domain).
func IntentionRules(ixns []*api.Intention, trustDomain string) (rules []policy.Rule, notes []string) {
	sorted := slices.Clone(ixns)
	slices.SortStableFunc(sorted, func(a, b *api.Intention) int { return b.Precedence - a.Precedence })
	rules = []policy.Rule{}
	names := map[string]bool{}
	for _, ix := range sorted {
		if ix == nil {
			continue
		}
		name := intentionName(ix)
		if ix.SourcePeer != "" || ix.SourceSamenessGroup != "" || ix.SourceType != "" && ix.SourceType != api.IntentionSourceConsul {
			notes = append(notes, fmt.Sprintf("%s: source peer, sameness group or type not supported; intention ignored", name))
			continue
		}
		for n := 2; names[name]; n++ {
			name = intentionName(ix) + "#" + strconv.Itoa(n)
		}
		names[name] = true
		from := sourceIDs(ix, trustDomain)
		var rs []policy.Rule
		if len(ix.Permissions) == 0 {
			rs = []policy.Rule{{Name: name, From: from, Action: string(ix.Action)}}
		} else {
			for i, perm := range ix.Permissions {
				if perm == nil {
					continue
				}
				r := policy.Rule{Name: name + ":permissions[" + strconv.Itoa(i) + "]", From: from, Action: string(perm.Action)}
				if perm.JWT != nil {
					notes = append(notes, fmt.Sprintf("%s: JWT requirements are not supported; the permission denies", r.Name))
					r.Action = "deny"
				}
				if h := perm.HTTP; h != nil {
					r.Paths, r.PathRegex = pathConditions(h)
					r.Methods = h.Methods
					for _, hp := range h.Header {
						r.Headers = append(r.Headers, headerCondition(hp))
					}
				}
				rs = append(rs, r)
			}
			rs = append(rs, policy.Rule{Name: name, From: from, Action: "default"})
		}
		if err := checkRules(rs); err != nil {
			notes = append(notes, fmt.Sprintf("%s cannot be enforced (%v); it denies its source", name, err))
			rs = []policy.Rule{{Name: name, From: from, Action: "deny"}}
		}
		rules = append(rules, rs...)
	}
	return rules, notes
}

// intentionName is "intention:SRC->DST", with NS/ before a name outside the default
// namespace.
func intentionName(ix *api.Intention) string {
	qual := func(ns, name string) string {
		if ns == "" || ns == "default" {
			return name
		}
		return ns + "/" + name
	}
	return "intention:" + qual(ix.SourceNS, ix.SourceName) + "->" + qual(ix.DestinationNS, ix.DestinationName)
}

// sourceIDs are the SPIFFE ID patterns of ix's source.
func sourceIDs(ix *api.Intention, td string) []string {
	if td == "" {
		td = "*"
	}
	ns := ix.SourceNS
	if ns == "" {
		ns = "default"
	}
	ap := ""
	if ix.SourcePartition != "" && ix.SourcePartition != "default" {
		ap = "/ap/" + ix.SourcePartition
	}
	ids := []string{"spiffe://" + td + ap + "/ns/" + ns + "/dc/*/svc/" + ix.SourceName}
	if ap == "" && (ns == "default" || ns == "*") {
		ids = append(ids, "spiffe://"+td+"/svc/"+ix.SourceName)
	}
	return ids
}

// pathConditions translates an L7 permission's path match: exact and prefix become path
// patterns when they hold no character patterns give a meaning to, regular expressions
// otherwise.
func pathConditions(h *api.IntentionHTTPPermission) (paths, regex []string) {
	plain := func(p string) bool { return strings.HasPrefix(p, "/") && !strings.ContainsAny(p, "*;%") }
	switch {
	case h.PathExact != "" && plain(h.PathExact):
		paths = []string{h.PathExact}
	case h.PathExact != "":
		regex = []string{regexp.QuoteMeta(h.PathExact)}
	case h.PathPrefix != "" && plain(h.PathPrefix):
		paths = []string{h.PathPrefix + "*"}
	case h.PathPrefix != "":
		regex = []string{regexp.QuoteMeta(h.PathPrefix) + ".*"}
	case h.PathRegex != "":
		regex = []string{h.PathRegex}
	}
	return paths, regex
}

// headerCondition translates an L7 permission's header match.
func headerCondition(hp api.IntentionHTTPHeaderPermission) policy.HeaderMatch {
	m := policy.HeaderMatch{Name: hp.Name, Invert: hp.Invert}
	switch {
	case hp.Present:
		m.Present = true
	case hp.Exact != "":
		exact := hp.Exact
		m.Exact = &exact
	case hp.Prefix != "":
		m.Prefix = hp.Prefix
	case hp.Suffix != "":
		m.Suffix = hp.Suffix
	case hp.Regex != "":
		m.Regex = hp.Regex
	}
	return m
}

// checkRules reports whether rs compile as first_match access rules.
func checkRules(rs []policy.Rule) error {
	c := policy.Config{Access: policy.Access{Order: policy.OrderFirstMatch, Default: "deny", Rules: rs}}
	if errs := c.Validate(); len(errs) > 0 {
		return errs[0]
	}
	return nil
}
