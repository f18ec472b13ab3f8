// Package tracing holds the end-to-end tests of tracing and metrics: they build the real
// ferry binary once, run two ferry processes (A with the caller, B with the application)
// against a real Jaeger all-in-one (sidecar/telemetry/jaegertest; built by `make
// deps-jaeger`), and check the traces in Jaeger's query API and the counters on /metrics.
// Everything listens on 127.0.0.1 and every wait is bounded.
package tracing

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

const (
	// ioTimeout bounds every network operation and HTTP request of the tests.
	ioTimeout = ferrytest.IOTimeout
	// waitTimeout bounds the waits for spans to reach Jaeger and counters to move.
	waitTimeout = 30 * time.Second
	// exitTimeout bounds the wait for a ferry process to exit once told to.
	exitTimeout = 20 * time.Second
)

// ferryBin is the ferry binary built by TestMain.
var ferryBin string

func TestMain(m *testing.M) {
	os.Exit(ferrytest.Main(m, "tracing", ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"}))
}

// ferry is one running ferry process.
type ferry struct {
	*ferrytest.Process
	t *testing.T
}

// startFerry writes config to a file, starts `ferry run` on it and waits until /ready
// answers 200. The process is killed at cleanup if it still runs; its output is logged
// if the test failed.
func startFerry(t *testing.T, name, admin, config string) *ferry {
	t.Helper()
	cfg := ferrytest.WriteFile(t, t.TempDir(), name+".yaml", config)
	f := &ferry{Process: ferrytest.StartWith(t, ferrytest.Options{Name: name}, ferryBin, cfg, admin), t: t}
	f.WaitReady()
	return f
}

// stop sends SIGTERM and returns how long the process took to exit, failing the test if
// it does not exit 0 within exitTimeout.
func (f *ferry) stop() time.Duration {
	f.t.Helper()
	start := time.Now()
	f.Signal(syscall.SIGTERM)
	if code := f.Wait(exitTimeout); code != 0 {
		f.t.Errorf("ferry exit code = %d, want 0", code)
	}
	return time.Since(start)
}

// sum adds up the samples named name whose labels include labels.
func sum(ss []ferrytest.Sample, name string, labels map[string]string) (total float64, found bool) {
	for _, s := range ss {
		if s.Name == name && ferrytest.HasLabels(s, labels) {
			total += s.Value
			found = true
		}
	}
	return total, found
}
