// Package health runs active health checks against the endpoints of an upstream: an HTTP
// request expecting given statuses, a TCP connect, or the gRPC health-checking protocol
// (grpc.health.v1). Each endpoint is checked on its own goroutine every interval plus a
// random jitter, with a timeout; after unhealthy_threshold failed checks in a row it is
// marked unhealthy and after healthy_threshold passed checks in a row healthy again. The
// result is published into the endpoint's balancer.EndpointState, where the picker builder,
// retries and the admin page read it, and the upstream is asked to rebuild its picker.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// Check protocols.
const (
	HTTP = "http"
	TCP  = "tcp"
	GRPC = "grpc"
)

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Min, Max int }

// DefaultExpectedStatuses returns what an HTTP check expects when the config names no
// statuses: 200-299.
func DefaultExpectedStatuses() []StatusRange { return []StatusRange{{200, 299}} }

// Config is how the endpoints of one upstream are checked. Compare Configs with Equal.
type Config struct {
	// Protocol is HTTP, TCP or GRPC.
	Protocol string
	// Path is the HTTP request path, e.g. /healthz.
	Path string
	// ExpectedStatuses are the HTTP statuses that pass; empty means 200-299.
	ExpectedStatuses []StatusRange
	// Service is the service name sent in a gRPC health check ("" is the whole server).
	Service string
	// Interval is the time between the end of a check and the start of the next, before
	// jitter. It must be positive (a value that is not stands for a second).
	Interval time.Duration
	// Jitter is the largest random delay added to each interval, so that sidecars do not
	// check in lockstep.
	Jitter time.Duration
	// Timeout bounds one check.
	Timeout time.Duration
	// HealthyThreshold is how many checks in a row must pass to mark an unhealthy endpoint
	// healthy. An endpoint not judged yet is marked healthy by its first passed check.
	HealthyThreshold int
	// UnhealthyThreshold is how many checks in a row must fail to mark an endpoint
	// unhealthy.
	UnhealthyThreshold int
}

// Equal reports whether c and o configure the same checks.
func (c Config) Equal(o Config) bool {
	return c.Protocol == o.Protocol && c.Path == o.Path && c.Service == o.Service &&
		c.Interval == o.Interval && c.Jitter == o.Jitter && c.Timeout == o.Timeout &&
		c.HealthyThreshold == o.HealthyThreshold && c.UnhealthyThreshold == o.UnhealthyThreshold &&
		slices.Equal(c.ExpectedStatuses, o.ExpectedStatuses)
}

// Event is a change of an endpoint's health.
type Event struct {
	Upstream string
	Address  string
	From, To balancer.Health
	// Detail says why, e.g. "3 failed checks in a row: status 503".
	Detail string
}

// Options configures a Checker.
type Options struct {
	// Upstream names the upstream in events, logs and the HTTP check's Host header.
	Upstream string
	Config   Config
	// OnChange is called after an endpoint's health changed in a way that matters to the
	// picker (to or from unhealthy), from the endpoint's check goroutine. It must not block:
	// the upstream typically makes a non-blocking send to its rebuild goroutine.
	OnChange func()
	// OnEvent, if not nil, is called for every change of health (to count it). It must not
	// block.
	OnEvent func(Event)
	// Logger receives one structured line per change; nil discards them.
	Logger *slog.Logger
	// Probe, if not nil, replaces the protocol's check (tests). It must honour ctx.
	Probe func(ctx context.Context, address string) error
}

// Checker checks the endpoints of one upstream. Its methods are safe for concurrent use and
// never block on a check in progress, except Stop.
type Checker struct {
	o      Options
	cfg    Config
	log    *slog.Logger
	client *http.Client // HTTP checks

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	targets map[string]*target
}

// target is one checked endpoint. Its counters belong to its goroutine.
type target struct {
	addr   string
	state  *balancer.EndpointState
	cancel context.CancelFunc
	passes int // checks passed in a row
	fails  int // checks failed in a row
}

// New returns a Checker with no endpoints; SetEndpoints starts checking.
func New(o Options) *Checker {
	c := &Checker{o: o, cfg: o.Config, log: o.Logger, targets: map[string]*target{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.o.OnChange == nil {
		c.o.OnChange = func() {}
	}
	if len(c.cfg.ExpectedStatuses) == 0 {
		c.cfg.ExpectedStatuses = DefaultExpectedStatuses()
	}
	if c.cfg.Interval <= 0 {
		c.cfg.Interval = time.Second
	}
	if c.cfg.Timeout <= 0 {
		c.cfg.Timeout = c.cfg.Interval
	}
	c.cfg.HealthyThreshold = max(c.cfg.HealthyThreshold, 1)
	c.cfg.UnhealthyThreshold = max(c.cfg.UnhealthyThreshold, 1)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if c.cfg.Protocol == HTTP && o.Probe == nil {
		c.client = &http.Client{
			Transport: &http.Transport{
				Proxy:               nil,
				DisableCompression:  true,
				MaxIdleConnsPerHost: 1,
				IdleConnTimeout:     2*c.cfg.Interval + c.cfg.Jitter + time.Second,
			},
			// A redirect is an answer: its status is judged, not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c
}

// Config returns the configuration the Checker runs with.
func (c *Checker) Config() Config { return c.o.Config }

// SetEndpoints makes states (by address) the endpoints to check: checks start at once for
// new addresses and stop for removed ones. It does not wait for checks in progress.
func (c *Checker) SetEndpoints(states map[string]*balancer.EndpointState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx.Err() != nil {
		return
	}
	for addr, tg := range c.targets {
		if states[addr] != tg.state {
			tg.cancel()
			delete(c.targets, addr)
		}
	}
	for addr, st := range states {
		if c.targets[addr] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(c.ctx)
		tg := &target{addr: addr, state: st, cancel: cancel}
		c.targets[addr] = tg
		c.wg.Go(func() { c.loop(ctx, tg) })
	}
}

// Stop ends every check, waits for the goroutines, and clears the health the Checker
// published, as if the endpoints had never been checked; the caller rebuilds its picker
// afterwards.
func (c *Checker) Stop() {
	c.mu.Lock()
	c.cancel()
	targets := c.targets
	c.targets = map[string]*target{}
	c.mu.Unlock()
	c.wg.Wait()
	for _, tg := range targets {
		tg.state.SetHealthStatus(nil)
	}
	if c.client != nil {
		c.client.CloseIdleConnections()
	}
}

// loop checks one endpoint until ctx is done.
func (c *Checker) loop(ctx context.Context, tg *target) {
	probe := c.o.Probe
	if probe == nil {
		var closeProbe func()
		probe, closeProbe = c.newProbe()
		defer closeProbe()
	}
	// The first check comes at once, spread by the jitter.
	t := time.NewTimer(c.jitter())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		err := probe(pctx, tg.addr)
		if err == nil && pctx.Err() != nil {
			err = pctx.Err() // a probe that ignored its deadline still fails it
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("timed out after %v", c.cfg.Timeout)
		}
		c.record(tg, err)
		t.Reset(c.cfg.Interval + c.jitter())
	}
}

func (c *Checker) jitter() time.Duration {
	if c.cfg.Jitter <= 0 {
		return 0
	}
	return rand.N(c.cfg.Jitter + 1)
}

// record applies one check result to the endpoint's health.
func (c *Checker) record(tg *target, err error) {
	from := tg.state.Health()
	to := from
	var detail string
	if err == nil {
		tg.fails = 0
		tg.passes++
		if from == balancer.HealthUnknown || from == balancer.HealthUnhealthy && tg.passes >= c.cfg.HealthyThreshold {
			to = balancer.HealthHealthy
			detail = fmt.Sprintf("%d passed check(s) in a row", tg.passes)
		}
	} else {
		tg.passes = 0
		tg.fails++
		if from != balancer.HealthUnhealthy && tg.fails >= c.cfg.UnhealthyThreshold {
			to = balancer.HealthUnhealthy
			detail = fmt.Sprintf("%d failed check(s) in a row: %v", tg.fails, err)
		}
	}
	if to == from {
		return
	}
	tg.state.SetHealthStatus(&balancer.HealthStatus{Health: to, Since: time.Now(), Detail: detail})
	e := Event{Upstream: c.o.Upstream, Address: tg.addr, From: from, To: to, Detail: detail}
	level := slog.LevelInfo
	if to == balancer.HealthUnhealthy {
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "health check state changed", "upstream", e.Upstream, "endpoint", e.Address,
		"from", from.String(), "to", to.String(), "detail", detail, "protocol", c.cfg.Protocol)
	if c.o.OnEvent != nil {
		c.o.OnEvent(e)
	}
	if from == balancer.HealthUnhealthy || to == balancer.HealthUnhealthy {
		c.o.OnChange()
	}
}

// newProbe returns the check for the configured protocol and a function releasing what it
// holds; both are used by one goroutine.
func (c *Checker) newProbe() (probe func(context.Context, string) error, closeProbe func()) {
	switch c.cfg.Protocol {
	case HTTP:
		return c.probeHTTP, func() {}
	case GRPC:
		g := &grpcProbe{service: c.cfg.Service}
		return g.probe, g.close
	default:
		return probeTCP, func() {}
	}
}

// probeHTTP sends GET path to the endpoint and judges the status.
func (c *Checker) probeHTTP(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+c.cfg.Path, nil)
	if err != nil {
		return err
	}
	// As Envoy: the Host is the upstream's name.
	req.Host = c.o.Upstream
	req.Header.Set("User-Agent", "ferry-health-check")
	resp, err := c.client.Do(req)
	if err != nil {
		return rootCause(err)
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10) // so that the connection is reused
	resp.Body.Close()
	for _, r := range c.cfg.ExpectedStatuses {
		if resp.StatusCode >= r.Min && resp.StatusCode <= r.Max {
			return nil
		}
	}
	return fmt.Errorf("status %d", resp.StatusCode)
}

// probeTCP connects to the endpoint and closes the connection.
func probeTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return rootCause(err)
	}
	return conn.Close()
}

// grpcProbe runs grpc.health.v1 Check calls over a connection it keeps between checks. After
// a failure it starts a new connection for the next check, so that gRPC's reconnect backoff
// never delays noticing that an endpoint is back.
type grpcProbe struct {
	service string
	conn    *grpc.ClientConn
}

func (g *grpcProbe) probe(ctx context.Context, addr string) error {
	if g.conn == nil {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		g.conn = conn
	}
	resp, err := healthpb.NewHealthClient(g.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: g.service})
	if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		err = fmt.Errorf("status %s", resp.GetStatus())
	}
	if err != nil {
		g.close()
	}
	return err
}

func (g *grpcProbe) close() {
	if g.conn != nil {
		_ = g.conn.Close()
		g.conn = nil
	}
}

// rootCause strips the wrapping of net and url errors down to what happened ("connection
// refused").
func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
