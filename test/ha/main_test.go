// Package ha holds the end-to-end tests of high availability: outlier detection, active
// health checks, retries with budgets and circuit breaking. They build the real ferry
// binary once, run it as a child process with config files written to a temporary
// directory, and talk to it and to backends that fail on command, all on 127.0.0.1.
// Every wait is bounded.
package ha

import (
	"bufio"
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

	"go.uber.org/goleak"
)

const (
	// readyTimeout bounds the wait for a ferry process to answer 200 on /ready.
	readyTimeout = 20 * time.Second
	// ioTimeout bounds every network operation and HTTP request of the tests.
	ioTimeout = 10 * time.Second
	// waitTimeout bounds the waits for a state change (an ejection, a health transition).
	waitTimeout = 20 * time.Second
)

var (
	// ferryBin and backendBin are built by TestMain.
	ferryBin, backendBin string
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ferry-ha-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ha:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ha: finding the repository root:", err)
		return 1
	}
	ferryBin = filepath.Join(dir, "ferry")
	backendBin = filepath.Join(dir, "backend")
	for _, b := range []struct{ out, pkg string }{{ferryBin, "./cmd/ferry"}, {backendBin, "./test/ha/testdata/backend"}} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ha: go build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
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
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", err
	}
	return root, nil
}

// checkLeaks makes t fail if goroutines started during the test outlive it. Call it first.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
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

// ferry is one running ferry process.
type ferry struct {
	t       *testing.T
	cmd     *exec.Cmd
	admin   string
	logPath string
	done    chan struct{}
}

// startFerry writes config (which must set admin.address to admin) and runs ferry on it
// until the test ends; it returns once /ready answers 200.
func startFerry(t *testing.T, admin, config string) *ferry {
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
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-f.done
		}
		if t.Failed() {
			t.Logf("ferry output:\n%s", f.output())
		}
	})
	f.waitReady()
	return f
}

func (f *ferry) output() string {
	b, err := os.ReadFile(f.logPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

func (f *ferry) waitReady() {
	f.t.Helper()
	c := newClient(f.t)
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-f.done:
			f.t.Fatalf("ferry exited before it was ready:\n%s", f.output())
		default:
		}
		if resp, err := c.Get("http://" + f.admin + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.t.Fatalf("ferry not ready after %v:\n%s", readyTimeout, f.output())
}

// logLines returns the lines of ferry's log that contain every one of subs.
func (f *ferry) logLines(subs ...string) []string {
	var out []string
	for _, l := range strings.Split(f.output(), "\n") {
		match := true
		for _, s := range subs {
			if !strings.Contains(l, s) {
				match = false
				break
			}
		}
		if match && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// cluster is one upstream of /clusters, as the tests read it.
type cluster struct {
	Name      string     `json:"name"`
	Available int        `json:"available_endpoints"`
	Panic     bool       `json:"panic"`
	Endpoints []endpoint `json:"endpoints"`
}

type endpoint struct {
	Address        string     `json:"address"`
	Status         string     `json:"status"`
	Health         string     `json:"health"`
	HealthDetail   string     `json:"health_detail"`
	HealthSince    *time.Time `json:"health_since"`
	Outlier        string     `json:"outlier"`
	Ejections      uint64     `json:"ejections"`
	EjectedAt      *time.Time `json:"ejected_at"`
	EjectedUntil   *time.Time `json:"ejected_until"`
	Reason         string     `json:"reason"`
	SuccessRate    *float64   `json:"success_rate"`
	IntervalCalls  uint64     `json:"interval_calls"`
	ActiveRequests int64      `json:"active_requests"`
}

// cluster returns upstream name from /clusters.
func (f *ferry) cluster(name string) cluster {
	f.t.Helper()
	c := newClient(f.t)
	resp, err := c.Get("http://" + f.admin + "/clusters")
	if err != nil {
		f.t.Fatalf("GET /clusters: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Upstreams []cluster `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		f.t.Fatalf("GET /clusters: %v", err)
	}
	for _, u := range body.Upstreams {
		if u.Name == name {
			return u
		}
	}
	f.t.Fatalf("/clusters has no upstream %q", name)
	return cluster{}
}

// endpoint returns one endpoint of upstream name from /clusters.
func (f *ferry) endpoint(name, addr string) endpoint {
	f.t.Helper()
	for _, e := range f.cluster(name).Endpoints {
		if e.Address == addr {
			return e
		}
	}
	f.t.Fatalf("upstream %s has no endpoint %s", name, addr)
	return endpoint{}
}

// metric returns the value of the /metrics sample named name whose labels include every
// one of labels (written name="value"), or -1 if there is none.
func (f *ferry) metric(name string, labels ...string) float64 {
	f.t.Helper()
	c := newClient(f.t)
	resp, err := c.Get("http://" + f.admin + "/metrics")
	if err != nil {
		f.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

// eventually polls cond every 10ms until it holds, or fails t after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newClient returns an HTTP/1.1 client of its own, closed at cleanup.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: ioTimeout}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: ioTimeout}
}

// get sends GET url and returns the status, the body and the Proxy-Status header; a
// transport error is status 0.
func get(c *http.Client, url string) (int, string, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Proxy-Status")
}

// load sends n GETs to url from workers goroutines and returns how many got 200, and the
// first few failures.
func load(c *http.Client, url string, n, workers int) (okCount int, failures []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range workers {
		wg.Go(func() {
			for range next {
				code, body, ps := get(c, url)
				mu.Lock()
				if code == http.StatusOK {
					okCount++
				} else if len(failures) < 5 {
					failures = append(failures, fmt.Sprintf("%d %q %s", code, strings.TrimSpace(body), ps))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return okCount, failures
}
