// Package policy holds the end-to-end tests of the inbound policy: real ferry processes
// with mutual TLS from a development CA made in the test, a server-side sidecar whose
// policy block allows one identity, denies another and rate limits a path, and an app that
// counts what reaches it. Every wait is bounded.
package policy

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/test/ferrytest"
)

// ioTimeout bounds every network operation and HTTP request of the tests.
const ioTimeout = ferrytest.IOTimeout

// ferryBin is built by TestMain.
var ferryBin string

func TestMain(m *testing.M) {
	os.Exit(ferrytest.Main(m, "policy", ferrytest.Build{Out: &ferryBin, Pkg: "./cmd/ferry"}))
}

// pki is a development CA in a temporary directory and the certificates it issued.
type pki struct {
	t   *testing.T
	dir string
	ca  *mtls.CA
}

var trustDomain = spiffeid.RequireTrustDomainFromString("mesh.local")

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := mtls.NewCA(trustDomain, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatalf("NewCA() error = %v", err)
	}
	return &pki{t: t, dir: t.TempDir(), ca: ca}
}

// certs are the files of one issued certificate.
type certs struct {
	cert, key, ca string
}

// issue writes a certificate for service, valid for an hour, into its own directory.
func (p *pki) issue(service string) certs {
	p.t.Helper()
	id, err := mtls.ServiceID(trustDomain, service)
	if err != nil {
		p.t.Fatal(err)
	}
	svid, err := p.ca.Issue(mtls.IssueRequest{ID: id, TTL: time.Hour})
	if err != nil {
		p.t.Fatalf("Issue(%s) error = %v", service, err)
	}
	files, err := mtls.WriteSVID(filepath.Join(p.dir, service), service, svid, p.ca.Bundle(trustDomain))
	if err != nil {
		p.t.Fatalf("WriteSVID() error = %v", err)
	}
	return certs{cert: files.Cert, key: files.Key, ca: files.Bundle}
}

// tlsCert is c as a tls.Certificate for a hand-made client.
func (c certs) tlsCert(t *testing.T) tls.Certificate {
	t.Helper()
	tc, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// mtlsBlock is the mtls block of a config using c.
func (c certs) mtlsBlock() string {
	return fmt.Sprintf("mtls: {mode: strict, source: files, cert_file: %q, key_file: %q, ca_file: %q}\n", c.cert, c.key, c.ca)
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
