// Package consul holds the end-to-end tests of Consul integration: real ferry processes
// (built once by TestMain) discover upstreams from, and register with, a real
// `consul agent -dev` started by discovery/consul/consultest. Backends are HTTP servers
// written in the tests. Every wait is bounded.
package consul

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
)

const (
	readyTimeout = 20 * time.Second
	ioTimeout    = 10 * time.Second
	waitTimeout  = 20 * time.Second
)

var ferryBin string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ferry-consul-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "consul:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "consul: finding the repository root:", err)
		return 1
	}
	ferryBin = filepath.Join(dir, "ferry")
	cmd := exec.Command("go", "build", "-o", ferryBin, "./cmd/ferry")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "consul: go build ./cmd/ferry: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// repoRoot is the directory of the module's go.mod.
func repoRoot() (string, error) {
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			return filepath.Dir(mod), nil
		}
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(file), "..", ".."), nil
}

var (
	portsMu    sync.Mutex
	portsGiven = map[string]bool{}
)

// freeAddr returns 127.0.0.1:PORT for a port that was free a moment ago, never the same
// one twice.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		portsMu.Lock()
		seen := portsGiven[addr]
		portsGiven[addr] = true
		portsMu.Unlock()
		if !seen {
			return addr
		}
	}
	t.Fatal("no free port found")
	return ""
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
	t       *testing.T
	cmd     *exec.Cmd
	admin   string
	logPath string
	done    chan struct{}
}

// runFerry writes config (which must set admin.address to admin) and runs ferry on it
// until the test ends, without waiting for it to be ready.
func runFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "ferry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(ferryBin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ferry: %v", err)
	}
	f := &ferry{t: t, cmd: cmd, admin: admin, logPath: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		f.stop()
		if t.Failed() {
			t.Logf("ferry output:\n%s", f.output())
		}
	})
	return f
}

// startFerry is runFerry, returning once /ready answers 200.
func startFerry(t *testing.T, admin, config string) *ferry {
	t.Helper()
	f := runFerry(t, admin, config)
	f.waitReady()
	return f
}

// stop sends SIGTERM and waits for the process to exit (SIGKILL after 15s).
func (f *ferry) stop() {
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(15 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
	}
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

func (f *ferry) output() string {
	b, err := os.ReadFile(f.logPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

// logHas reports whether a log line contains every one of subs.
func (f *ferry) logHas(subs ...string) bool {
	file, err := os.Open(f.logPath)
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

func (f *ferry) waitReady() {
	f.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-f.done:
			f.t.Fatalf("ferry exited before it was ready:\n%s", f.output())
		default:
		}
		if code, _ := f.ready(); code == http.StatusOK {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, body := f.ready()
	f.t.Fatalf("ferry not ready after %v: %d %s", readyTimeout, code, body)
}

// ready returns /ready's status and body (0 if it cannot be reached).
func (f *ferry) ready() (int, string) {
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get("http://" + f.admin + "/ready")
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
	resp, err := c.Get("http://" + f.admin + "/clusters")
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

// metric returns the value of the first sample of name whose labels contain every one of
// labels (`upstream="api"`), or -1.
func (f *ferry) metric(name string, labels ...string) float64 {
	f.t.Helper()
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get("http://" + f.admin + "/metrics")
	if err != nil {
		f.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

// eventually polls cond every 20ms until it holds, failing t after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", waitTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
