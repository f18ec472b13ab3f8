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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// Time limits. Waits for something to happen are generous (a noisy 2-core machine running
// the race detector can stall for a while); assertions on outcomes are tight.
const (
	// readyTimeout bounds the wait for a ferry process to answer 200 on /ready.
	readyTimeout = ferrytest.ReadyTimeout
	// ioTimeout bounds every single network operation and HTTP request of the tests.
	ioTimeout = ferrytest.IOTimeout
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
	os.Exit(ferrytest.Main(m, "e2e",
		ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"},
		ferrytest.Build{Out: &appBin, Pkg: "./test/testdata/app"}))
}

// configVersion is the version Ferry gives a config file: the first 12 hex digits of the
// SHA-256 of its bytes.
func configVersion(content string) string {
	sum := sha256.Sum256([]byte(content))
	return hex.EncodeToString(sum[:])[:12]
}

// ferry is one running ferry process.
type ferry struct {
	*ferrytest.Process
	t *testing.T
}

// startFerry starts `ferry run --config cfgPath [-- app...]`; admin is the config's
// admin.address. It does not wait for readiness (see WaitReady). The process is killed at
// cleanup if it is still running, and its output is logged if the test failed.
func startFerry(t *testing.T, cfgPath, admin string, app ...string) *ferry {
	t.Helper()
	return &ferry{Process: ferrytest.Start(t, ferryBin, cfgPath, admin, app...), t: t}
}

// configVersion returns the "version" of /config_dump.
func (f *ferry) configVersion() string {
	f.t.Helper()
	var dump struct {
		Version string `json:"version"`
	}
	getJSON(f.t, f.AdminURL("/config_dump"), &dump)
	return dump.Version
}

// newClient returns an HTTP client of its own (its connections are closed at cleanup) with
// ioTimeout. protocols nil means HTTP/1.1.
func newClient(t *testing.T, protocols *http.Protocols) *http.Client {
	return ferrytest.NewClient(t, 16, protocols)
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
