// Package test holds Ferry's end-to-end tests: they build the real ferry binary once, run
// it as a child process with config files written to a temporary directory, and talk to it
// and to backends started in the test process, all on 127.0.0.1.
package test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
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

// Time limits. Waits for something to happen are generous (a noisy 2-core machine running
// the race detector can stall for a while); assertions on outcomes are tight.
const (
	// readyTimeout bounds the wait for a ferry process to answer 200 on /ready.
	readyTimeout = 20 * time.Second
	// ioTimeout bounds every single network operation and HTTP request of the tests.
	ioTimeout = 10 * time.Second
	// exitTimeout bounds the wait for a ferry process to exit once it has been told to.
	exitTimeout = 15 * time.Second
)

var (
	// ferryBin is the ferry binary built by TestMain.
	ferryBin string
	// appBin is the helper application (testdata/app) built by TestMain, used as the app
	// that `ferry run -- APP` supervises.
	appBin string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ferry-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: finding the repository root:", err)
		return 1
	}
	ferryBin = filepath.Join(dir, "ferry")
	appBin = filepath.Join(dir, "app")
	for _, b := range []struct{ out, pkg string }{{ferryBin, "./cmd/ferry"}, {appBin, "./test/testdata/app"}} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// repoRoot is the directory of the module's go.mod: from `go env GOMOD`, or failing that
// the parent of this file's directory.
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
	root := filepath.Dir(filepath.Dir(file))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", err
	}
	return root, nil
}

// checkLeaks makes t fail if goroutines started during the test outlive it. Call it first
// in a test, so that its check runs after every other cleanup.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// freeAddr returns 127.0.0.1:PORT for a port that was free a moment ago: it listens on
// port 0, notes the port and closes the listener. Ports are never handed out twice.
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

var (
	portsMu    sync.Mutex
	portsGiven = map[string]bool{}
)

// writeConfig writes a config file named name into dir and returns its path.
func writeConfig(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// configVersion is the version Ferry gives a config file: the first 12 hex digits of the
// SHA-256 of its bytes.
func configVersion(content string) string {
	sum := sha256.Sum256([]byte(content))
	return hex.EncodeToString(sum[:])[:12]
}

// ferry is one running ferry process.
type ferry struct {
	t       *testing.T
	cmd     *exec.Cmd
	admin   string // admin host:port
	logPath string // stdout and stderr of the process (and of its app)
	started time.Time

	done     chan struct{} // closed when the process has exited
	exitCode int           // valid after done
}

// startFerry starts `ferry run --config cfgPath [-- app...]`; admin is the config's
// admin.address. It does not wait for readiness (see waitReady). The process is killed at
// cleanup if it is still running, and its output is logged if the test failed.
func startFerry(t *testing.T, cfgPath, admin string, app ...string) *ferry {
	t.Helper()
	args := []string{"run", "--config", cfgPath}
	if len(app) > 0 {
		args = append(append(args, "--"), app...)
	}
	logPath := filepath.Join(t.TempDir(), "ferry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(ferryBin, args...)
	// Files, not pipes: no copying goroutines, and an app that outlives a killed ferry
	// cannot hold up Wait.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// If the test binary dies, ferry dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ferry: %v", err)
	}
	f := &ferry{t: t, cmd: cmd, admin: admin, logPath: logPath, started: time.Now(), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.exitCode = cmd.ProcessState.ExitCode()
		if err != nil && f.exitCode == -1 {
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				f.exitCode = 128 + int(ws.Signal())
			}
		}
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
			t.Logf("ferry output (%s):\n%s", cfgPath, f.output())
		}
	})
	return f
}

// output returns everything the process (and its app) wrote so far.
func (f *ferry) output() string {
	b, err := os.ReadFile(f.logPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

// exited reports whether the process has exited.
func (f *ferry) exited() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process.
func (f *ferry) signal(sig os.Signal) {
	f.t.Helper()
	if err := f.cmd.Process.Signal(sig); err != nil {
		f.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits up to timeout for the process to exit and returns its exit code.
func (f *ferry) wait(timeout time.Duration) int {
	f.t.Helper()
	select {
	case <-f.done:
		return f.exitCode
	case <-time.After(timeout):
		f.t.Fatalf("ferry did not exit within %v", timeout)
		return -1
	}
}

// adminURL is the URL of an admin endpoint.
func (f *ferry) adminURL(path string) string { return "http://" + f.admin + path }

// waitReady waits until /ready answers 200.
func (f *ferry) waitReady() {
	f.t.Helper()
	c := newClient(f.t, nil)
	deadline := time.Now().Add(readyTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		if f.exited() {
			f.t.Fatalf("ferry exited with code %d before it was ready", f.exitCode)
		}
		resp, err := c.Get(f.adminURL("/ready"))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.t.Fatalf("ferry not ready after %v: last /ready: %s", readyTimeout, last)
}

// configVersion returns the "version" of /config_dump.
func (f *ferry) configVersion() string {
	f.t.Helper()
	var dump struct {
		Version string `json:"version"`
	}
	getJSON(f.t, f.adminURL("/config_dump"), &dump)
	return dump.Version
}

// metrics returns the samples of /metrics.
func (f *ferry) metrics() []sample {
	f.t.Helper()
	c := newClient(f.t, nil)
	resp, err := c.Get(f.adminURL("/metrics"))
	if err != nil {
		f.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	ss, err := parseMetrics(resp.Body)
	if err != nil {
		f.t.Fatalf("parsing /metrics: %v", err)
	}
	return ss
}

// metric returns the value of the sample with the given name and exactly the given labels,
// and whether there is one.
func (f *ferry) metric(name string, labels map[string]string) (float64, bool) {
	f.t.Helper()
	return findSample(f.metrics(), name, labels)
}

// eventually polls cond every 20ms until it returns true, or fails t with msg() once
// timeout has passed.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newClient returns an HTTP client of its own (its connections are closed at cleanup) with
// ioTimeout. protocols nil means HTTP/1.1.
func newClient(t *testing.T, protocols *http.Protocols) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: ioTimeout}).DialContext,
		MaxIdleConnsPerHost: 16,
		Protocols:           protocols,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: ioTimeout}
}

// h2cProtocols is HTTP/2 with prior knowledge over cleartext, and nothing else.
func h2cProtocols() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// response is what a test looks at in an HTTP response.
type response struct {
	status int
	header http.Header
	body   string
	proto  string
}

// do sends a request and reads the whole response; a transport error fails t.
func do(t *testing.T, c *http.Client, method, url string, header http.Header, body string) response {
	t.Helper()
	r, err := tryDo(c, method, url, header, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func tryDo(c *http.Client, method, url string, header http.Header, body string) (response, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return response{}, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("reading body: %w", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b), proto: resp.Proto}, nil
}

// getJSON GETs url and decodes its JSON body into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	c := newClient(t, nil)
	r := do(t, c, http.MethodGet, url, nil, "")
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", url, r.status, r.body)
	}
	if err := json.Unmarshal([]byte(r.body), v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, r.body)
	}
}

// rawExchange writes req on a new connection to addr and reads one response.
func rawExchange(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write: %v", err)
	}
	return readRawResponse(t, bufio.NewReader(c))
}

// readRawResponse reads one HTTP/1.1 response and its body from br.
func readRawResponse(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return resp, string(b)
}

// dialRefused reports whether a new TCP connection to addr is refused.
func dialRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	_ = c.Close()
	return false
}

// sample is one line of Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics parses the Prometheus text format: comments are skipped, every other line
// is `name{label="value",...} value [timestamp]`.
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
		rest := line
		if i := strings.IndexAny(line, "{ "); i < 0 {
			return nil, fmt.Errorf("bad line %q", line)
		} else {
			s.name, rest = line[:i], line[i:]
		}
		if rest[0] == '{' {
			var err error
			rest, err = parseLabels(rest[1:], s.labels)
			if err != nil {
				return nil, fmt.Errorf("line %q: %v", line, err)
			}
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

// parseLabels parses `a="x",b="y"}` into into and returns what follows the closing brace.
func parseLabels(s string, into map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " ,")
		if s == "" {
			return "", errors.New("unterminated labels")
		}
		if s[0] == '}' {
			return s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return "", errors.New("bad label")
		}
		name := s[:eq]
		s = s[eq+2:]
		var val strings.Builder
		i := 0
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		if i >= len(s) {
			return "", errors.New("unterminated label value")
		}
		into[name] = val.String()
		s = s[i+1:]
	}
}

// findSample returns the value of the sample named name whose labels are exactly labels.
func findSample(ss []sample, name string, labels map[string]string) (float64, bool) {
	for _, s := range ss {
		if s.name != name || len(s.labels) != len(labels) {
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
			return s.value, true
		}
	}
	return 0, false
}

// lines returns the non-empty lines of s.
func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// countLines returns how many lines of s contain sub.
func countLines(s, sub string) int {
	n := 0
	for _, l := range lines(s) {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}
