// Package ferrytest is the harness shared by Ferry's end-to-end test packages: it builds
// the ferry binary (and helper programs) once per package, hands out free ports, runs
// ferry processes with their output captured to a file, waits for them to be ready and
// reads their admin endpoints (/ready, /metrics).
package ferrytest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const (
	// ReadyTimeout bounds the wait for a ferry process to answer 200 on /ready.
	ReadyTimeout = 20 * time.Second
	// IOTimeout bounds every network operation and HTTP request of the helpers.
	IOTimeout = 10 * time.Second
)

// Build names a package to compile in Main and where to store the binary's path.
type Build struct {
	// Out receives the path of the built binary.
	Out *string
	// Pkg is the package, relative to the module root (e.g. "./cmd/ferry").
	Pkg string
}

// Main compiles every one of builds into a temporary directory, runs the tests and
// returns the exit code for os.Exit; the directory is removed afterwards. name prefixes
// error messages and the directory's name.
func Main(m *testing.M, name string, builds ...Build) int {
	dir, err := os.MkdirTemp("", "ferry-"+name+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+": finding the repository root:", err)
		return 1
	}
	for _, b := range builds {
		out := filepath.Join(dir, filepath.Base(b.Pkg))
		cmd := exec.Command("go", "build", "-o", out, b.Pkg)
		cmd.Dir = root
		if outb, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: go build %s: %v\n%s", name, b.Pkg, err, outb)
			return 1
		}
		*b.Out = out
	}
	return m.Run()
}

// RepoRoot is the directory of the module's go.mod: from `go env GOMOD`, or failing that
// two levels above this file's directory.
func RepoRoot() (string, error) {
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

var (
	portsMu    sync.Mutex
	portsGiven = map[string]bool{}
)

// FreeAddr returns 127.0.0.1:PORT for a port that was free a moment ago: it listens on
// port 0, notes the port and closes the listener. Ports are never handed out twice.
func FreeAddr(t testing.TB) string {
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

// WriteFile writes content to a file named name in dir and returns its path.
func WriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Eventually polls cond every 20ms until it returns true, or fails t with msg() once
// timeout has passed.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	EventuallyEvery(t, timeout, 20*time.Millisecond, cond, msg)
}

// EventuallyEvery is Eventually polling every interval.
func EventuallyEvery(t testing.TB, timeout, interval time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg())
		}
		time.Sleep(interval)
	}
}

// NewClient returns an HTTP client of its own (its idle connections are closed at
// cleanup) with IOTimeout, keeping up to maxIdlePerHost idle connections per host.
// protocols nil means HTTP/1.1.
func NewClient(t testing.TB, maxIdlePerHost int, protocols *http.Protocols) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: IOTimeout}).DialContext,
		MaxIdleConnsPerHost: maxIdlePerHost,
		Protocols:           protocols,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: IOTimeout}
}

// H2CProtocols is HTTP/2 with prior knowledge over cleartext, and nothing else.
func H2CProtocols() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}

// CheckLeaks makes t fail if goroutines started during the test outlive it. Call it first
// in a test, so that its check runs after every other cleanup.
func CheckLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}
