package sidecar

import (
	"reflect"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/l7"
)

func TestRouteRetry(t *testing.T) {
	on := func(names ...string) l7.RetryOn {
		o, err := l7.ParseRetryOn(names)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	base := &l7.RetryPolicy{Retries: 2, On: on("reset"), StatusCodes: []int{409}, PerTryTimeout: time.Second,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, BufferLimit: 1024}
	tests := []struct {
		name  string
		base  *l7.RetryPolicy
		route *route.Retries
		want  *l7.RetryPolicy
	}{
		{"no route retries keeps the upstream's", base, nil, base},
		{"none at all", nil, nil, nil},
		{"attempts 0 turns retries off", base, &route.Retries{Attempts: 0}, nil},
		{"route overrides attempts, on and per_try_timeout", base,
			&route.Retries{Attempts: 3, On: []string{"5xx", "retriable-status-codes"}, PerTryTimeout: policy.Duration(200 * time.Millisecond)},
			&l7.RetryPolicy{Retries: 3, On: on("5xx", "retriable-status-codes"), StatusCodes: []int{409}, PerTryTimeout: 200 * time.Millisecond,
				BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, BufferLimit: 1024}},
		{"empty on keeps the upstream's conditions", base, &route.Retries{Attempts: 1},
			&l7.RetryPolicy{Retries: 1, On: on("reset"), StatusCodes: []int{409},
				BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, BufferLimit: 1024}},
		{"an upstream without retries takes the defaults", nil, &route.Retries{Attempts: 2},
			&l7.RetryPolicy{Retries: 2, On: on(config.DefaultRetryOn()...), BackoffBase: config.DefaultRetryBackoffBase,
				BackoffMax: 10 * config.DefaultRetryBackoffBase, BufferLimit: config.DefaultRetryBufferLimit}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := routeRetry(tc.base, tc.route); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("routeRetry() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRouteRetryBudgets(t *testing.T) {
	cfg := &config.Config{
		Inbound: &config.Inbound{Routes: []route.Route{{Name: "local", Retries: &route.Retries{Attempts: 1}}}},
		Outbound: []config.Outbound{{Routes: []route.Route{
			{Name: "a", Upstream: "plain", Retries: &route.Retries{Attempts: 1}},
			{Name: "b", Upstream: "own", Retries: &route.Retries{Attempts: 1}},
			{Name: "c", Upstream: "off", Retries: &route.Retries{Attempts: 0}},
		}}},
		Upstreams: []config.Upstream{{Name: "plain"}, {Name: "own", Retries: &config.Retries{BudgetPercent: 0}}, {Name: "off"}},
	}
	specs := map[string]upstreamConfig{"plain": {}, "own": {}, "off": {}, inboundUpstream: {}}
	routeRetryBudgets(cfg, specs)
	for name, want := range map[string]float64{"plain": config.DefaultRetryBudgetPercent, "own": 0, "off": 0,
		inboundUpstream: config.DefaultRetryBudgetPercent} {
		if got := specs[name].limits.BudgetPercent; got != want {
			t.Errorf("%s: limits.BudgetPercent = %v, want %v", name, got, want)
		}
	}
}
