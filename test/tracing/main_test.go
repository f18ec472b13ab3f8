// Package tracing holds the end-to-end tests of tracing and metrics: they build the real
// ferry binary once, run two ferry processes (A with the caller, B with the application)
// against a real Jaeger all-in-one (sidecar/telemetry/jaegertest; built by `make
// deps-jaeger`), and check the traces in Jaeger's query API and the counters on /metrics.
// Everything listens on 127.0.0.1 and every wait is bounded.
package tracing

import (
	"bufio"
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
)

const (
	// readyTimeout bounds the wait for a ferry process to answer 200 on /ready.
	readyTimeout = 20 * time.Second
	// ioTimeout bounds every network operation and HTTP request of the tests.
	ioTimeout = 10 * time.Second
	// waitTimeout bounds the waits for spans to reach Jaeger and counters to move.
	waitTimeout = 30 * time.Second
	// exitTimeout bounds the wait for a ferry process to exit once told to.
	exitTimeout = 20 * time.Second
)

// ferryBin is the ferry binary built by TestMain.
var ferryBin string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ferry-tracing-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tracing:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tracing: finding the repository root:", err)
		return 1
	}
	ferryBin = filepath.Join(dir, "ferry")
	cmd := exec.Command("go", "build", "-o", ferryBin, "./cmd/ferry")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "tracing: go build ./cmd/ferry: %v\n%s", err, out)
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

// freeAddr returns 127.0.0.1:PORT for a port that was free a moment ago; ports are never
// handed out twice.
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
	t        *testing.T
	cmd      *exec.Cmd
	admin    string
	logPath  string
	done     chan struct{}
	exitCode int
}

// startFerry writes config to a file, starts `ferry run` on it and waits until /ready
// answers 200. The process is killed at cleanup if it still runs; its output is logged
// if the test failed.
func startFerry(t *testing.T, name, admin, config string) *ferry {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, name+".log")
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
		f.exitCode = cmd.ProcessState.ExitCode()
		close(f.done)
	}()
	t.Cleanup(func() {
		select {
		case <-f.done:
		default:
			_ = cmd.Process.Kill()
			<-f.done
		}
		if t.Failed() {
			t.Logf("ferry %s output:\n%s", name, f.output())
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
	c := &http.Client{Timeout: ioTimeout}
	deadline := time.Now().Add(readyTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-f.done:
			f.t.Fatalf("ferry exited with code %d before it was ready", f.exitCode)
		default:
		}
		resp, err := c.Get("http://" + f.admin + "/ready")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.t.Fatalf("ferry not ready after %v: last /ready: %s", readyTimeout, last)
}

// stop sends SIGTERM and returns how long the process took to exit, failing the test if
// it does not exit 0 within exitTimeout.
func (f *ferry) stop() time.Duration {
	f.t.Helper()
	start := time.Now()
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		f.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-f.done:
	case <-time.After(exitTimeout):
		f.t.Fatalf("ferry did not exit within %v of SIGTERM", exitTimeout)
	}
	if f.exitCode != 0 {
		f.t.Errorf("ferry exit code = %d, want 0", f.exitCode)
	}
	return time.Since(start)
}

// sample is one line of /metrics.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metrics returns the samples of /metrics.
func (f *ferry) metrics() []sample {
	f.t.Helper()
	c := &http.Client{Timeout: ioTimeout}
	resp, err := c.Get("http://" + f.admin + "/metrics")
	if err != nil {
		f.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	ss, err := parseMetrics(resp.Body)
	if err != nil {
		f.t.Fatalf("parsing /metrics: %v", err)
	}
	return ss
}

// sum adds up the samples named name whose labels include labels.
func sum(ss []sample, name string, labels map[string]string) (total float64, found bool) {
	for _, s := range ss {
		if s.name != name {
			continue
		}
		match := true
		for k, v := range labels {
			if s.labels[k] != v {
				match = false
				break
			}
		}
		if match {
			total += s.value
			found = true
		}
	}
	return total, found
}

func parseMetrics(r io.Reader) ([]sample, error) {
	var out []sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s := sample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("bad line %q", line)
		}
		s.name = line[:i]
		rest := line[i:]
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				return nil, fmt.Errorf("line %q: unterminated labels", line)
			}
			for kv := range strings.SplitSeq(rest[1:end], ",") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					continue
				}
				s.labels[k] = strings.Trim(v, `"`)
			}
			rest = rest[end+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("line %q: no value", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: %v", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out, sc.Err()
}
