package mtls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/discovery/consul/blocking"
)

// Defaults for ConsulOptions.
const (
	DefaultConsulWaitTime  = 5 * time.Minute
	DefaultConsulRetryBase = 500 * time.Millisecond
	DefaultConsulRetryMax  = 30 * time.Second
)

// consulMinQueryInterval spaces the queries of one watch, so that an agent answering at
// once over and over (a misbehaving index) cannot make a busy loop.
const consulMinQueryInterval = 100 * time.Millisecond

// ConsulCA is what a ConsulSource needs from the Consul agent: its Connect CA roots and
// the leaf certificate of a service, both as blocking queries. *api.Agent implements it.
type ConsulCA interface {
	ConnectCARoots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error)
	ConnectCALeaf(service string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error)
}

var _ ConsulCA = (*api.Agent)(nil)

// ConsulOptions configures a ConsulSource.
type ConsulOptions struct {
	// Agent is the Consul agent's API (required).
	Agent ConsulCA
	// Service is the Consul service name the leaf certificate is issued for (required):
	// the identity is spiffe://<trust domain>/ns/<ns>/dc/<dc>/svc/<Service>.
	Service string
	// TrustDomain, if set, must be the trust domain of Consul's CA: material from a CA of
	// another trust domain is refused (and reported), never published.
	TrustDomain spiffeid.TrustDomain
	// Address names the agent in messages.
	Address string
	// Logger receives updates and errors; nil discards them.
	Logger *slog.Logger
	// WaitTime is how long one blocking query waits (DefaultConsulWaitTime if zero, at
	// most the 10 minutes Consul honours).
	WaitTime time.Duration
	// RetryBase and RetryMax bound the jittered exponential backoff after a failed query
	// (DefaultConsulRetryBase and DefaultConsulRetryMax if zero).
	RetryBase, RetryMax time.Duration
}

// ConsulSource is a Source whose certificate and trust bundle come from Consul Connect's
// CA through the local agent: it follows the agent's leaf certificate for the service and
// its CA roots with blocking queries, and publishes new Material whenever either changes.
// The agent renews the leaf before it expires and re-signs it after a CA rotation; the
// blocking query returns the new one, so rotation needs no restart. The trust bundle is
// every root the agent lists (during a rotation, the new active root and the previous
// ones, so peers still holding leaves of the old root keep verifying); the leaf's chain
// carries the intermediates Consul issues with it (the cross-signed new root after a
// rotation). The trust domain is the roots' TrustDomain.
//
// A combination that does not verify (for example a leaf seen before the roots that sign
// it) is recorded with Store.Fail and not published: the previous material stays until
// the other half arrives. While the agent cannot be reached, queries are retried with
// jittered exponential backoff and the previous material stays in force. All methods are
// safe to call concurrently; Close stops the watches and waits for them.
type ConsulSource struct {
	*Store
	opts   ConsulOptions
	pacing blocking.Pacing
	log    *slog.Logger

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu      sync.Mutex // guards the fields below
	roots   *api.CARootList
	leaf    *api.LeafCert
	lastKey string // leaf serial and root IDs of the last published (or refused) pair
}

var _ Source = (*ConsulSource)(nil)

// NewConsulSource starts following the agent's leaf certificate and CA roots. It fails
// only for invalid options: while the agent does not answer, Current reports why and the
// watches keep retrying.
func NewConsulSource(opts ConsulOptions) (*ConsulSource, error) {
	if opts.Agent == nil {
		return nil, errors.New("mtls: consul source needs a Consul agent")
	}
	if opts.Service == "" {
		return nil, errors.New("mtls: consul source needs a service name")
	}
	if strings.ContainsAny(opts.Service, "/?#") {
		return nil, fmt.Errorf("mtls: consul source: invalid service name %q", opts.Service)
	}
	if opts.Address == "" {
		opts.Address = "the Consul agent"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pacing := blocking.Pacing{WaitTime: opts.WaitTime, RetryBase: opts.RetryBase, RetryMax: opts.RetryMax}.
		WithDefaults(blocking.Pacing{WaitTime: DefaultConsulWaitTime, MinQueryInterval: consulMinQueryInterval,
			RetryBase: DefaultConsulRetryBase, RetryMax: DefaultConsulRetryMax})
	ctx, cancel := context.WithCancel(context.Background())
	c := &ConsulSource{
		Store:  NewStore("consul"),
		opts:   opts,
		pacing: pacing,
		log:    log.With("source", "consul", "service", opts.Service),
		cancel: cancel,
	}
	c.wg.Add(2)
	go c.watch(ctx, "roots", func(q *api.QueryOptions) (uint64, error) {
		roots, meta, err := opts.Agent.ConnectCARoots(q)
		if err == nil && roots == nil {
			err = errors.New("empty answer")
		}
		if err != nil {
			return 0, err
		}
		c.update(func() { c.roots = roots })
		return meta.LastIndex, nil
	})
	go c.watch(ctx, "leaf", func(q *api.QueryOptions) (uint64, error) {
		leaf, meta, err := opts.Agent.ConnectCALeaf(opts.Service, q)
		if err == nil && leaf == nil {
			err = errors.New("empty answer")
		}
		if err != nil {
			return 0, err
		}
		c.update(func() { c.leaf = leaf })
		return meta.LastIndex, nil
	})
	return c, nil
}

// Close stops the watches and waits for them to end. Published material stays available.
func (c *ConsulSource) Close() error {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
	})
	return nil
}

// watch runs the blocking-query loop of one endpoint (what: "leaf" or "roots") until ctx
// is done. query runs one query with q and returns the answer's X-Consul-Index.
func (c *ConsulSource) watch(ctx context.Context, what string, query func(q *api.QueryOptions) (uint64, error)) {
	defer c.wg.Done()
	loop := blocking.NewLoop(c.pacing)
	for loop.Wait(ctx) {
		q, qcancel := loop.Query(ctx, &api.QueryOptions{})
		last, err := query(q)
		qcancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The next query is a fresh read (see blocking.Loop.Failed).
			failures, delay := loop.Failed()
			err = fmt.Errorf("mtls: consul %s query to %s: %w", what, c.opts.Address, err)
			c.Fail(err, time.Now())
			switch {
			case failures > 1:
				c.log.Debug("consul CA query failed again", "query", what, "error", err, "failures", failures, "retry_in", delay)
			case c.hasMaterial():
				c.log.Warn("consul CA query failing; keeping the current certificate", "query", what, "error", err, "retry_in", delay)
			default:
				c.log.Error("cannot reach the Consul agent for certificates; no certificate yet, /ready answers 503 until one arrives",
					"query", what, "agent", c.opts.Address, "error", err, "retry_in", delay)
			}
			if !blocking.Sleep(ctx, delay) {
				return
			}
			continue
		}
		// The next query waits on the answer's index, by Consul's index rules.
		if _, failures := loop.Answered(last); failures > 0 {
			c.log.Info("consul CA answers again", "query", what, "failed_queries", failures)
		}
	}
}

func (c *ConsulSource) hasMaterial() bool {
	_, err := c.Current()
	return err == nil
}

// update applies set (recording a new leaf or new roots) and publishes the material they
// make, if it differs from the last and is valid.
func (c *ConsulSource) update(set func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	set()
	if c.leaf == nil || c.roots == nil {
		return
	}
	ids := make([]string, 0, len(c.roots.Roots))
	for _, r := range c.roots.Roots {
		if r != nil {
			ids = append(ids, r.ID+"@"+fmt.Sprint(r.ModifyIndex))
		}
	}
	slices.Sort(ids)
	key := c.leaf.SerialNumber + "|" + c.leaf.CertPEM + "|" + c.roots.TrustDomain + "|" + strings.Join(ids, ",")
	if key == c.lastKey {
		return
	}
	c.lastKey = key
	now := time.Now()
	m, err := c.material(now)
	if err != nil {
		c.Fail(err, now)
		if c.hasMaterial() {
			c.log.Error("certificate from Consul refused; keeping the current certificate", "error", err)
		} else {
			c.log.Error("certificate from Consul refused; no certificate loaded", "error", err)
		}
		return
	}
	c.Publish(m)
	c.log.Info("certificate loaded from Consul", "spiffe_id", m.ID().String(),
		"serial", FormatSerial(m.Leaf().SerialNumber), "not_after", m.NotAfter(),
		"trust_domain", c.roots.TrustDomain, "roots", len(c.roots.Roots), "active_root", c.roots.ActiveRootID)
}

// material builds Material from the current leaf and roots. Called with c.mu held.
func (c *ConsulSource) material(now time.Time) (*Material, error) {
	td, err := spiffeid.TrustDomainFromString(c.roots.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("mtls: consul CA roots: invalid trust domain %q: %w", c.roots.TrustDomain, err)
	}
	if !c.opts.TrustDomain.IsZero() && c.opts.TrustDomain != td {
		return nil, fmt.Errorf("mtls: consul CA trust domain is %q, not %q as mtls.trust_domain says (remove trust_domain to take Consul's)",
			td, c.opts.TrustDomain)
	}
	var bundle strings.Builder
	for _, r := range c.roots.Roots {
		if r == nil || strings.TrimSpace(r.RootCertPEM) == "" {
			continue
		}
		bundle.WriteString(strings.TrimSpace(r.RootCertPEM))
		bundle.WriteString("\n")
	}
	if bundle.Len() == 0 {
		return nil, errors.New("mtls: consul CA lists no root certificate")
	}
	m, err := ParseMaterial("consul", []byte(c.leaf.CertPEM), []byte(c.leaf.PrivateKeyPEM), []byte(bundle.String()), td, now)
	if err != nil {
		return nil, fmt.Errorf("consul leaf %s (serial %s): %w", c.leaf.Service, c.leaf.SerialNumber, err)
	}
	if s, err := ParseService(m.ID()); err != nil || s.Name != c.opts.Service {
		return nil, fmt.Errorf("mtls: consul leaf identity %s does not name service %q", m.ID(), c.opts.Service)
	}
	return m, nil
}
