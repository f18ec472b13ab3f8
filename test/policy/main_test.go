// Package policy holds the end-to-end tests of the inbound policy: real ferry processes
// with mutual TLS from a development CA made in the test, a server-side sidecar whose
// policy block allows one identity, denies another and rate limits a path, and an app that
// counts what reaches it. Every wait is bounded.
package policy

import (
	"os"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// ioTimeout bounds every network operation and HTTP request of the tests.
const ioTimeout = ferrytest.IOTimeout

// ferryBin is built by TestMain.
var ferryBin string

func TestMain(m *testing.M) {
	os.Exit(ferrytest.Main(m, "policy", ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"}))
}

// startFerry runs ferry on config (whose admin.address is admin) until the test ends and
// returns once it is ready.
func startFerry(t *testing.T, admin, config string) *ferrytest.Process {
	t.Helper()
	path := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", config)
	p := ferrytest.StartWith(t, ferrytest.Options{Grace: 10 * time.Second, Name: admin}, ferryBin, path, admin)
	p.WaitReady()
	return p
}
