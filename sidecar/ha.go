package sidecar

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/health"
	"github.com/ferrymesh/ferry/sidecar/l7"
	"github.com/ferrymesh/ferry/sidecar/outlier"
)

// upstreamConfigOf translates a validated config upstream into what the upstream acts on.
func upstreamConfigOf(u *config.Upstream) upstreamConfig {
	eps := make([]discovery.Endpoint, 0, len(u.Endpoints))
	for _, e := range u.Endpoints {
		eps = append(eps, discovery.Endpoint{Address: e.Address, Weight: e.Weight})
	}
	c := upstreamConfig{policy: u.LB, endpoints: eps, panicThreshold: u.HealthyPanicThreshold}
	cb := u.CircuitBreaker
	c.limits = circuit.Limits{MaxConnections: int64(cb.MaxConnections), MaxPending: int64(cb.MaxPending),
		MaxRequests: int64(cb.MaxRequests), MaxRetries: int64(cb.MaxRetries)}
	if r := u.Retries; r != nil {
		c.limits.BudgetPercent = r.BudgetPercent
		c.limits.MinRetryConcurrency = int64(r.MinRetryConcurrency)
	}
	if od := u.OutlierDetection; od != nil {
		oc := &outlier.Config{Interval: od.Interval.D(), BaseEjectionTime: od.BaseEjectionTime.D(),
			MaxEjectionTime: od.MaxEjectionTime.D(), MaxEjectionPercent: od.MaxEjectionPercent,
			Consecutive5xx: uint32(od.Consecutive5xx), ConsecutiveGatewayFailure: uint32(od.ConsecutiveGatewayFailure)}
		// enforcing: 0 turns a detector off.
		if sr := od.SuccessRate; sr != nil && sr.Enforcing > 0 {
			oc.SuccessRate = &outlier.SuccessRateConfig{MinimumHosts: sr.MinimumHosts, RequestVolume: uint64(sr.RequestVolume),
				StdevFactor: sr.StdevFactor, Enforcing: sr.Enforcing}
		}
		if fp := od.FailurePercentage; fp != nil && fp.Enforcing > 0 {
			oc.FailurePercentage = &outlier.FailurePercentageConfig{Threshold: fp.Threshold, MinimumHosts: fp.MinimumHosts,
				RequestVolume: uint64(fp.RequestVolume), Enforcing: fp.Enforcing}
		}
		c.outlier = oc
	}
	if hc := u.HealthCheck; hc != nil {
		h := &health.Config{Interval: hc.Interval.D(), Jitter: hc.IntervalJitter.D(), Timeout: hc.Timeout.D(),
			HealthyThreshold: hc.HealthyThreshold, UnhealthyThreshold: hc.UnhealthyThreshold}
		switch {
		case hc.HTTP != "":
			h.Protocol, h.Path = health.HTTP, hc.HTTP
			for _, r := range hc.ExpectedStatuses {
				h.ExpectedStatuses = append(h.ExpectedStatuses, health.StatusRange{Min: r.Min, Max: r.Max})
			}
		case hc.GRPC != nil:
			h.Protocol, h.Service = health.GRPC, *hc.GRPC
		default:
			h.Protocol = health.TCP
		}
		c.health = h
	}
	return c
}

// key identifies the upstream's discovery source: an unchanged key keeps the watch.
func (c upstreamConfig) key() string {
	eps := slices.Clone(c.endpoints)
	slices.SortFunc(eps, func(a, b discovery.Endpoint) int { return strings.Compare(a.Address, b.Address) })
	return fmt.Sprint("static", eps)
}

// retryPolicy translates a validated retries block; nil without one.
func retryPolicy(r *config.Retries) *l7.RetryPolicy {
	if r == nil {
		return nil
	}
	on, err := l7.ParseRetryOn(r.On)
	if err != nil {
		panic(err) // unreachable: validation checked every condition
	}
	return &l7.RetryPolicy{Retries: r.Attempts, On: on, StatusCodes: r.RetriableStatusCodes,
		PerTryTimeout: r.PerTryTimeout.D(), BackoffBase: r.Backoff.Base.D(), BackoffMax: r.Backoff.Max.D(),
		BufferLimit: r.BufferLimit}
}

// connectAttempts is how many endpoints a TCP session may try to connect to: one, plus the
// retries when they cover connect failures.
func connectAttempts(r *config.Retries) int {
	if r == nil {
		return 1
	}
	for _, c := range r.On {
		switch c {
		case config.RetryConnectFailure, config.RetryReset, config.RetryGatewayError, config.Retry5xx:
			return 1 + r.Attempts
		}
	}
	return 1
}
