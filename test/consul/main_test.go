// Package consul holds the end-to-end tests of Consul integration: real ferry processes
// (built once by TestMain) discover upstreams from, and register with, a real
// `consul agent -dev` started by discovery/consul/consultest. Backends are HTTP servers
// written in the tests. Every wait is bounded.
package consul

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

const (
	ioTimeout   = ferrytest.IOTimeout
	waitTimeout = 20 * time.Second
)

var ferryBin string

func TestMain(m *testing.M) {
	os.Exit(ferrytest.Main(m, "consul", ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"}))
}

// backend is an HTTP server answering every request with its name.
type backend struct {
	name string
	addr string
	port int
	mu   sync.Mutex
	n    int
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// startBackend runs a backend until the test ends.
func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b.mu.Lock()
		b.n++
		b.mu.Unlock()
		_, _ = io.WriteString(w, name)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

// ferry is one running ferry process.
type ferry struct {
	*ferrytest.Process
	t *testing.T
}

// runFerry writes config (which must set admin.address to admin) and runs ferry on it
// until the test ends (SIGTERM, then SIGKILL after 15s), without waiting for it to be
// ready.
func runFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", config)
	o := ferrytest.Options{Env: cleanEnv(), Grace: 15 * time.Second}
	return &ferry{Process: ferrytest.StartWith(t, o, ferryBin, cfg, admin), t: t}
}

// startFerry is runFerry, returning once /ready answers 200.
func startFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	f := runFerry(t, admin, config)
	f.WaitReady()
	return f
}

// cleanEnv is the environment without CONSUL_* variables, so ferry uses only its config.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	return env
}

// logHas reports whether a log line contains every one of subs.
func (f *ferry) logHas(subs ...string) bool {
	file, err := os.Open(f.LogPath())
	if err != nil {
		return false
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		for _, s := range subs {
			if !strings.Contains(sc.Text(), s) {
				continue next
			}
		}
		return true
	}
	return false
}

// ready returns /ready's status and body (0 if it cannot be reached).
func (f *ferry) ready() (int, string) {
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get(f.AdminURL("/ready"))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// discovery is the discovery part of an upstream in /clusters.
type discovery struct {
	Source            string     `json:"source"`
	Service           string     `json:"service"`
	Ready             bool       `json:"ready"`
	LastContact       *time.Time `json:"last_contact"`
	StaleSince        *time.Time `json:"stale_since"`
	ConsecutiveErrors uint64     `json:"consecutive_errors"`
}

// clusterDiscovery returns upstream's discovery state from /clusters.
func (f *ferry) clusterDiscovery(upstream string) discovery {
	f.t.Helper()
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get(f.AdminURL("/clusters"))
	if err != nil {
		f.t.Fatalf("GET /clusters: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Upstreams []struct {
			Name      string     `json:"name"`
			Discovery *discovery `json:"discovery"`
		} `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		f.t.Fatalf("decoding /clusters: %v", err)
	}
	for _, u := range body.Upstreams {
		if u.Name == upstream && u.Discovery != nil {
			return *u.Discovery
		}
	}
	f.t.Fatalf("/clusters has no discovery state for %q", upstream)
	return discovery{}
}

// eventually polls cond every 20ms until it holds, failing t after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ferrytest.Eventually(t, waitTimeout, cond, func() string { return what })
}

// get sends one GET and returns its status and body ("" and the error on failure).
func get(c *http.Client, url string) (int, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}

// seen sends n requests and returns how many each body got.
func seen(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	c := &http.Client{Timeout: ioTimeout}
	defer c.CloseIdleConnections()
	got := map[string]int{}
	for range n {
		code, body := get(c, url)
		if code != http.StatusOK {
			body = fmt.Sprintf("status %d: %s", code, body)
		}
		got[body]++
	}
	return got
}

// consulClient returns an API client for agent.
func consulClient(t *testing.T, agent *consultest.Agent) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = agent.Addr
	cfg.Token = agent.Token
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// register registers b as an instance of service, with an optional TTL check.
func register(t *testing.T, c *api.Client, service string, b *backend, ttl bool) {
	t.Helper()
	reg := &api.AgentServiceRegistration{ID: b.name, Name: service, Address: "127.0.0.1", Port: b.port}
	if ttl {
		reg.Check = &api.AgentServiceCheck{CheckID: "ttl-" + b.name, TTL: "1m", Status: api.HealthPassing}
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatalf("registering %s: %v", b.name, err)
	}
}
