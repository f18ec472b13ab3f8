package consul

// Tests against a real `consul agent -dev` (built by `make deps-consul`), on loopback and
// free ports.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/discovery/consul/consultest"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testLogger logs at debug level into the returned buffer, which is written to the test
// log if the test fails.
func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("source log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient(%+v) = %v", cfg, err)
	}
	t.Cleanup(c.Close)
	return c
}

func newSourceT(t *testing.T, c *Client, opts Options) *Source {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger, _ = testLogger(t)
	}
	src, err := New(c.API(), opts)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return src
}

func register(t *testing.T, c *Client, reg *api.AgentServiceRegistration) {
	t.Helper()
	if err := c.API().Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register %s: %v", reg.ID, err)
	}
}

func instance(id string, port int, tags ...string) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{ID: id, Name: "web", Port: port, Address: "127.0.0.1", Tags: tags}
}

// watcher runs a Watch and records what it publishes.
type watcher struct {
	mu      sync.Mutex
	sets    []*discovery.EndpointSet
	changed chan struct{}
}

func startWatch(t *testing.T, src *Source, upstream string) *watcher {
	t.Helper()
	w := &watcher{changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, upstream, w.update) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch(%s) = %v, want nil", upstream, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Watch(%s) did not return within 5s of cancel", upstream)
		}
	})
	return w
}

func (w *watcher) update(s *discovery.EndpointSet) {
	w.mu.Lock()
	w.sets = append(w.sets, s)
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sets)
}

func (w *watcher) last() *discovery.EndpointSet {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.sets) == 0 {
		return nil
	}
	return w.sets[len(w.sets)-1]
}

// describe renders a set as "addr/weight/identity,..." for comparisons.
func describe(s *discovery.EndpointSet) string {
	if s == nil {
		return "<none published>"
	}
	var parts []string
	for _, e := range s.Endpoints() {
		p := fmt.Sprintf("%s/%d", e.Address, e.Weight)
		if e.Identity != "" {
			p += "/" + e.Identity
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ",")
}

// waitFor waits until the last published set renders as want.
func (w *watcher) waitFor(t *testing.T, timeout time.Duration, want string) *discovery.EndpointSet {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if l := w.last(); l != nil && describe(l) == want {
			return l
		}
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("after %v: endpoints = %q, want %q", timeout, describe(w.last()), want)
		}
	}
}

// checkNoDuplicates fails t if two consecutive publications hold the same endpoints.
func (w *watcher) checkNoDuplicates(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := 1; i < len(w.sets); i++ {
		if w.sets[i].SameEndpoints(w.sets[i-1]) {
			t.Errorf("publication %d repeats publication %d: %s", i, i-1, describe(w.sets[i]))
		}
	}
}

func TestAgentFollowsRegistrations(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	src := newSourceT(t, c, Options{Upstreams: map[string]Upstream{"web": {Service: "web"}}, WaitTime: 30 * time.Second})
	w := startWatch(t, src, "web")
	w.waitFor(t, 10*time.Second, "") // the first answer, empty, is published

	for i := 1; i <= 3; i++ {
		register(t, c, instance(fmt.Sprintf("web-%d", i), 9000+i))
	}
	register(t, c, &api.AgentServiceRegistration{ID: "db-1", Name: "db", Port: 5432})
	w.waitFor(t, 10*time.Second, "127.0.0.1:9001/1,127.0.0.1:9002/1,127.0.0.1:9003/1")

	// The registrations used the rate limiter's burst: wait for it to refill, as it
	// does when a service is quiet. Then the blocking query in flight returns on the
	// change itself, far inside one WaitTime (30s).
	time.Sleep(2*DefaultMinQueryInterval + 100*time.Millisecond)
	start := time.Now()
	if err := c.API().Agent().ServiceDeregister("web-2"); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 10*time.Second, "127.0.0.1:9001/1,127.0.0.1:9003/1")
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("deregistration seen after %v, want it within the blocking round in flight", d)
	}
	t.Logf("deregistration published %v after it was made", time.Since(start))
	// Under churn, changes still arrive at least once per MinQueryInterval.
	start = time.Now()
	if err := c.API().Agent().ServiceDeregister("web-1"); err != nil {
		t.Fatal(err)
	}
	register(t, c, instance("web-5", 9005))
	if err := c.API().Agent().ServiceDeregister("web-3"); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 10*time.Second, "127.0.0.1:9005/1")
	if d := time.Since(start); d > DefaultMinQueryInterval+time.Second {
		t.Errorf("churn settled after %v, want within MinQueryInterval (%v) and a margin", d, DefaultMinQueryInterval)
	}
	w.checkNoDuplicates(t)

	st, ok := src.Status("web")
	if !ok || !st.Ready || st.Stale() || st.Endpoints != 1 || st.Index == 0 || st.LastContact.IsZero() {
		t.Errorf("Status(web) = %+v, %v; want ready, fresh, 1 endpoint, an index", st, ok)
	}
	if got := src.Statuses(); len(got) != 1 || got[0].Upstream != "web" {
		t.Errorf("Statuses() = %+v, want web only", got)
	}
}

func TestAgentHealthChecksAndWeights(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	for i := 1; i <= 3; i++ {
		reg := instance(fmt.Sprintf("web-%d", i), 9000+i)
		reg.Weights = &api.AgentWeights{Passing: 10, Warning: 3}
		reg.Check = &api.AgentServiceCheck{TTL: "10m", Status: api.HealthPassing}
		register(t, c, reg)
	}
	lenient := false
	src := newSourceT(t, c, Options{Upstreams: map[string]Upstream{
		"strict":  {Service: "web"}, // passing_only by default
		"lenient": {Service: "web", PassingOnly: &lenient},
	}})
	strict, relaxed := startWatch(t, src, "strict"), startWatch(t, src, "lenient")
	all := "127.0.0.1:9001/10,127.0.0.1:9002/10,127.0.0.1:9003/10"
	strict.waitFor(t, 10*time.Second, all)
	relaxed.waitFor(t, 10*time.Second, all)

	if err := c.API().Agent().FailTTL("service:web-3", "down"); err != nil {
		t.Fatal(err)
	}
	strict.waitFor(t, 10*time.Second, "127.0.0.1:9001/10,127.0.0.1:9002/10")
	relaxed.waitFor(t, 10*time.Second, "127.0.0.1:9001/10,127.0.0.1:9002/10")

	if err := c.API().Agent().WarnTTL("service:web-2", "slow"); err != nil {
		t.Fatal(err)
	}
	strict.waitFor(t, 10*time.Second, "127.0.0.1:9001/10")
	relaxed.waitFor(t, 10*time.Second, "127.0.0.1:9001/10,127.0.0.1:9002/3")

	if err := c.API().Agent().PassTTL("service:web-3", "back"); err != nil {
		t.Fatal(err)
	}
	strict.waitFor(t, 10*time.Second, "127.0.0.1:9001/10,127.0.0.1:9003/10")
	relaxed.waitFor(t, 10*time.Second, "127.0.0.1:9001/10,127.0.0.1:9002/3,127.0.0.1:9003/10")

	// Maintenance mode takes an instance out whatever passing_only says.
	if err := c.API().Agent().EnableServiceMaintenance("web-1", "deploy"); err != nil {
		t.Fatal(err)
	}
	strict.waitFor(t, 10*time.Second, "127.0.0.1:9003/10")
	relaxed.waitFor(t, 10*time.Second, "127.0.0.1:9002/3,127.0.0.1:9003/10")
	strict.checkNoDuplicates(t)
	relaxed.checkNoDuplicates(t)
}

func TestAgentTags(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	register(t, c, instance("web-1", 9001, "primary"))
	register(t, c, instance("web-2", 9002, "replica"))
	register(t, c, instance("web-3", 9003, "primary", "v2"))
	src := newSourceT(t, c, Options{Upstreams: map[string]Upstream{
		"all":     {Service: "web"},
		"primary": {Service: "web", Tags: []string{"primary"}},
		"v2":      {Service: "web", Tags: []string{"primary", "v2"}},
		"none":    {Service: "web", Tags: []string{"canary"}},
		"default": {Service: "web", Namespace: "default", Datacenter: "dc1"},
	}})
	for upstream, want := range map[string]string{
		"all":     "127.0.0.1:9001/1,127.0.0.1:9002/1,127.0.0.1:9003/1",
		"primary": "127.0.0.1:9001/1,127.0.0.1:9003/1",
		"v2":      "127.0.0.1:9003/1",
		"none":    "",
		"default": "127.0.0.1:9001/1,127.0.0.1:9002/1,127.0.0.1:9003/1",
	} {
		startWatch(t, src, upstream).waitFor(t, 10*time.Second, want)
	}
}

func TestAgentUnchangedAnswersPublishNothing(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	register(t, c, instance("web-1", 9001))
	// A short WaitTime makes blocking queries also time out and return unchanged.
	src := newSourceT(t, c, Options{Upstreams: map[string]Upstream{"web": {Service: "web"}}, WaitTime: 300 * time.Millisecond, MinQueryInterval: 50 * time.Millisecond})
	w := startWatch(t, src, "web")
	w.waitFor(t, 10*time.Second, "127.0.0.1:9001/1")
	st0, _ := src.Status("web")

	// Writes that change Consul's index for web but not its endpoints: re-registering
	// an instance with new metadata.
	for i := range 3 {
		reg := instance("web-1", 9001)
		reg.Meta = map[string]string{"rev": fmt.Sprint(i)}
		register(t, c, reg)
		time.Sleep(100 * time.Millisecond)
	}
	consultest.WaitFor(t, 10*time.Second, func() error {
		if st, _ := src.Status("web"); st.Index <= st0.Index {
			return fmt.Errorf("index still %d", st.Index)
		}
		return nil
	})
	time.Sleep(time.Second) // several timed-out blocking rounds
	if n := w.count(); n != 1 {
		t.Errorf("published %d sets, want 1: unchanged answers must publish nothing", n)
	}
	if st, _ := src.Status("web"); st.Updates != 1 {
		t.Errorf("Status().Updates = %d, want 1", st.Updates)
	}
}

func TestAgentOutageKeepsEndpointsAndCatchesUp(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	register(t, c, instance("web-1", 9001))
	register(t, c, instance("web-2", 9002))
	logger, logs := testLogger(t)
	src := newSourceT(t, c, Options{
		Upstreams: map[string]Upstream{"web": {Service: "web"}},
		Logger:    logger,
		RetryBase: 50 * time.Millisecond,
		RetryMax:  300 * time.Millisecond,
	})
	w := startWatch(t, src, "web")
	w.waitFor(t, 10*time.Second, "127.0.0.1:9001/1,127.0.0.1:9002/1")
	published := w.count()

	agent.Kill()
	consultest.WaitFor(t, 10*time.Second, func() error {
		if st, _ := src.Status("web"); !st.Stale() {
			return fmt.Errorf("not stale yet: %+v", st)
		}
		return nil
	})
	st1, _ := src.Status("web")
	s1 := st1.Staleness(time.Now())
	time.Sleep(time.Second)
	st2, _ := src.Status("web")
	if s2 := st2.Staleness(time.Now()); s2 < s1+900*time.Millisecond {
		t.Errorf("Staleness() = %v a second after %v, want it to grow", s2, s1)
	}
	if st2.ConsecutiveErrors < 2 || !st2.Ready || st2.Endpoints != 2 || st2.LastError == nil {
		t.Errorf("Status() during the outage = %+v, want ready, 2 endpoints, several errors", st2)
	}
	if n := w.count(); n != published {
		t.Errorf("published %d sets during the outage, want none", n-published)
	}
	if got := strings.Count(logs.String(), "level=WARN"); got != 1 {
		t.Errorf("%d warnings during one outage, want 1", got)
	}

	// A new agent on the same address, with a new instance: the watch catches up.
	agent2 := consultest.Start(t, consultest.Options{Ports: &agent.Ports})
	register(t, c, instance("web-3", 9003))
	w.waitFor(t, 10*time.Second, "127.0.0.1:9003/1")
	consultest.WaitFor(t, 5*time.Second, func() error {
		if st, _ := src.Status("web"); st.Stale() {
			return fmt.Errorf("still stale: %+v", st)
		}
		return nil
	})
	if got := strings.Count(logs.String(), "Consul answers again"); got != 1 {
		t.Errorf("%d recovery lines, want 1", got)
	}
	// And follows it from there.
	register(t, c, instance("web-4", 9004))
	w.waitFor(t, 10*time.Second, "127.0.0.1:9003/1,127.0.0.1:9004/1")
	agent2.Stop()
}

func TestAgentFirstStartWithConsulDown(t *testing.T) {
	t.Parallel()
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, Config{Address: fmt.Sprintf("127.0.0.1:%d", ports.HTTP)})
	logger, logs := testLogger(t)
	src := newSourceT(t, c, Options{
		Upstreams: map[string]Upstream{"web": {Service: "web"}},
		Logger:    logger,
		RetryBase: 50 * time.Millisecond,
		RetryMax:  200 * time.Millisecond,
	})
	w := startWatch(t, src, "web")
	time.Sleep(500 * time.Millisecond)
	if n := w.count(); n != 0 {
		t.Fatalf("published %d sets with Consul down, want 0", n)
	}
	st, ok := src.Status("web")
	if !ok || st.Ready || !st.Stale() || st.ConsecutiveErrors < 2 {
		t.Errorf("Status() = %+v, %v; want not ready, stale, retrying", st, ok)
	}
	if !strings.Contains(logs.String(), "no answer from Consul yet") {
		t.Errorf("log has no line saying the upstream waits for Consul:\n%s", logs.String())
	}

	consultest.Start(t, consultest.Options{Ports: &ports})
	register(t, c, instance("web-1", 9001))
	w.waitFor(t, 10*time.Second, "127.0.0.1:9001/1")
}

func TestAgentConnect(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	register(t, c, &api.AgentServiceRegistration{ID: "api-1", Name: "api", Port: 9090, Address: "127.0.0.1"})
	register(t, c, &api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: "api-1-sidecar-proxy", Name: "api-sidecar-proxy",
		Address: "127.0.0.2", Port: 21000,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "api", DestinationServiceID: "api-1", LocalServicePort: 9090},
	})
	register(t, c, &api.AgentServiceRegistration{ID: "api-native", Name: "api", Port: 9443, Address: "127.0.0.3", Connect: &api.AgentServiceConnect{Native: true}})

	roots, _, err := c.API().Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	if roots.TrustDomain == "" {
		t.Fatal("agent CA roots have no trust domain")
	}
	id := "spiffe://" + roots.TrustDomain + "/ns/default/dc/dc1/svc/api"
	src := newSourceT(t, c, Options{Upstreams: map[string]Upstream{
		"mesh":  {Service: "api", Connect: true},
		"plain": {Service: "api"},
	}})
	startWatch(t, src, "mesh").waitFor(t, 10*time.Second, "127.0.0.2:21000/1/"+id+",127.0.0.3:9443/1/"+id)
	startWatch(t, src, "plain").waitFor(t, 10*time.Second, "127.0.0.1:9090/1,127.0.0.3:9443/1")

	// The explicit trust domain overrides the agent's.
	src2 := newSourceT(t, c, Options{Upstreams: map[string]Upstream{"mesh": {Service: "api", Connect: true}}, TrustDomain: "mesh.local"})
	other := "spiffe://mesh.local/ns/default/dc/dc1/svc/api"
	startWatch(t, src2, "mesh").waitFor(t, 10*time.Second, "127.0.0.2:21000/1/"+other+",127.0.0.3:9443/1/"+other)
}

const (
	mgmtToken  = "4f7a1e52-9a43-4c31-9d5b-2a0c6e1e8b11"
	bogusToken = "00000000-0000-4000-8000-000000000000"
)

// TestAgentACLToken runs against an agent with ACLs enabled and default deny. It sets
// environment variables, so it does not run in parallel.
func TestAgentACLToken(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{ACLManagementToken: mgmtToken})
	admin := newClient(t, Config{Address: agent.Addr, Token: mgmtToken})
	for i := 1; i <= 3; i++ {
		register(t, admin, instance(fmt.Sprintf("web-%d", i), 9000+i))
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(mgmtToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	all := "127.0.0.1:9001/1,127.0.0.1:9002/1,127.0.0.1:9003/1"
	ups := map[string]Upstream{"web": {Service: "web"}}

	t.Run("token_file", func(t *testing.T) {
		c := newClient(t, Config{Address: agent.Addr, TokenFile: tokenFile})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, all)
	})
	t.Run("anonymous sees nothing", func(t *testing.T) {
		c := newClient(t, Config{Address: agent.Addr})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, "")
	})
	t.Run("CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", agent.Addr)
		t.Setenv("CONSUL_HTTP_TOKEN", mgmtToken)
		c := newClient(t, Config{})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, all)
	})
	t.Run("CONSUL_HTTP_TOKEN_FILE", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", agent.Addr)
		t.Setenv("CONSUL_HTTP_TOKEN", bogusToken)
		t.Setenv("CONSUL_HTTP_TOKEN_FILE", tokenFile) // wins over CONSUL_HTTP_TOKEN
		c := newClient(t, Config{})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, all)
	})
	t.Run("explicit token_file beats the environment", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1") // nothing listens there
		t.Setenv("CONSUL_HTTP_TOKEN", bogusToken)
		c := newClient(t, Config{Address: agent.Addr, TokenFile: tokenFile})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, all)
	})
	t.Run("explicit token beats the environment", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_TOKEN", bogusToken)
		c := newClient(t, Config{Address: agent.Addr, Token: mgmtToken})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, all)
	})
	t.Run("bogus token: retried, error reported", func(t *testing.T) {
		c := newClient(t, Config{Address: agent.Addr, Token: bogusToken})
		src := newSourceT(t, c, Options{Upstreams: ups, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
		w := startWatch(t, src, "web")
		consultest.WaitFor(t, 10*time.Second, func() error {
			st, _ := src.Status("web")
			if st.ConsecutiveErrors < 2 || st.LastError == nil || !strings.Contains(st.LastError.Error(), "403") {
				return fmt.Errorf("status %+v, want repeated 403s", st)
			}
			return nil
		})
		if n := w.count(); n != 0 {
			t.Errorf("published %d sets with a bogus token, want 0", n)
		}
	})
}

// TestAgentTLS talks HTTPS to an agent that requires client certificates. It sets
// environment variables, so it does not run in parallel.
func TestAgentTLS(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{TLS: true})
	register(t, newClient(t, Config{Address: agent.Addr}), instance("web-1", 9001))
	ups := map[string]Upstream{"web": {Service: "web"}}

	t.Run("explicit", func(t *testing.T) {
		c := newClient(t, Config{Address: agent.HTTPSAddr, Scheme: "https",
			TLS: TLSConfig{CAFile: agent.CAFile, CertFile: agent.ClientCertFile, KeyFile: agent.ClientKeyFile}})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, "127.0.0.1:9001/1")
	})
	t.Run("https URL and server name", func(t *testing.T) {
		c := newClient(t, Config{Address: "https://" + agent.HTTPSAddr,
			TLS: TLSConfig{CAFile: agent.CAFile, CertFile: agent.ClientCertFile, KeyFile: agent.ClientKeyFile, ServerName: "localhost"}})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, "127.0.0.1:9001/1")
	})
	t.Run("environment", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPSAddr)
		t.Setenv("CONSUL_HTTP_SSL", "true")
		t.Setenv("CONSUL_CACERT", agent.CAFile)
		t.Setenv("CONSUL_CLIENT_CERT", agent.ClientCertFile)
		t.Setenv("CONSUL_CLIENT_KEY", agent.ClientKeyFile)
		c := newClient(t, Config{})
		startWatch(t, newSourceT(t, c, Options{Upstreams: ups}), "web").waitFor(t, 10*time.Second, "127.0.0.1:9001/1")
	})
	t.Run("no client certificate", func(t *testing.T) {
		c := newClient(t, Config{Address: "https://" + agent.HTTPSAddr, TLS: TLSConfig{CAFile: agent.CAFile}})
		src := newSourceT(t, c, Options{Upstreams: ups, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
		w := startWatch(t, src, "web")
		consultest.WaitFor(t, 10*time.Second, func() error {
			if st, _ := src.Status("web"); st.ConsecutiveErrors < 2 {
				return fmt.Errorf("status %+v, want repeated TLS failures", st)
			}
			return nil
		})
		if n := w.count(); n != 0 {
			t.Errorf("published %d sets without a client certificate, want 0", n)
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		c := newClient(t, Config{Address: "https://" + agent.HTTPSAddr})
		_, _, err := c.API().Health().Service("web", "", true, nil)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("query without the agent's CA = %v, want a certificate error", err)
		}
	})
}

func TestNewClientErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"token and token_file", Config{Token: "a", TokenFile: empty}, "mutually exclusive"},
		{"missing token_file", Config{TokenFile: filepath.Join(dir, "nope")}, "token_file"},
		{"empty token_file", Config{TokenFile: empty}, "empty"},
		{"bad scheme", Config{Scheme: "ftp"}, "scheme"},
		{"cert without key", Config{TLS: TLSConfig{CertFile: empty}}, "together"},
		{"unknown URL scheme", Config{Address: "ftp://127.0.0.1:8500"}, "ftp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.cfg)
			if err == nil {
				c.Close()
				t.Fatalf("NewClient(%+v) = nil error, want one containing %q", tt.cfg, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewClient(%+v) = %v, want an error containing %q", tt.cfg, err, tt.want)
			}
		})
	}
}
