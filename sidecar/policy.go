package sidecar

import (
	"fmt"
	"net"
	"strconv"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/prometheus/client_golang/prometheus"
)

// policyFor compiles the policy block of cfg, keeping the counters and rate-limit buckets
// of the running policy for the rules and limits that carry over. It returns nil (no
// policy, nothing enforced) when the block sets nothing.
func (s *Sidecar) policyFor(cfg *config.Config) (*policy.Policy, error) {
	if !cfg.HasPolicy() {
		return nil, nil
	}
	p, err := policy.Compile(&cfg.Policy, policy.Options{Prev: s.pol.Load()})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return p, nil
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

// Describe implements prometheus.Collector.
func (policyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descPolicyDecisions }

// Collect implements prometheus.Collector. It reads atomics only.
func (c policyCollector) Collect(ch chan<- prometheus.Metric) {
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
