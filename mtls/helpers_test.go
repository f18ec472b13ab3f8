package mtls

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testTD = spiffeid.RequireTrustDomainFromString("mesh.local")

// newTestCA makes a CA for td valid for a year from now.
func newTestCA(t testing.TB, td spiffeid.TrustDomain) *CA {
	t.Helper()
	ca, err := NewCA(td, DefaultCATTL, time.Now())
	if err != nil {
		t.Fatalf("NewCA() error = %v", err)
	}
	return ca
}

func svcID(t testing.TB, td spiffeid.TrustDomain, svc string) spiffeid.ID {
	t.Helper()
	id, err := ServiceID(td, svc)
	if err != nil {
		t.Fatalf("ServiceID(%q) error = %v", svc, err)
	}
	return id
}

// issueSVID issues an SVID for svc valid from now for a day.
func issueSVID(t testing.TB, ca *CA, svc string) *x509svid.SVID {
	t.Helper()
	return issueAt(t, ca, svcID(t, ca.TrustDomain(), svc), time.Now(), DefaultSVIDTTL)
}

func issueAt(t testing.TB, ca *CA, id spiffeid.ID, now time.Time, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	s, err := ca.Issue(IssueRequest{ID: id, TTL: ttl, Now: now})
	if err != nil {
		t.Fatalf("Issue(%s) error = %v", id, err)
	}
	return s
}

// storeWith returns a Store holding svid with ca's bundle.
func storeWith(t testing.TB, ca *CA, svid *x509svid.SVID) *Store {
	t.Helper()
	m, err := NewMaterial("test", svid, time.Now(), ca.Bundle(spiffeid.TrustDomain{}))
	if err != nil {
		t.Fatalf("NewMaterial() error = %v", err)
	}
	s := NewStore("test")
	s.Publish(m)
	return s
}

// storeWithBundles returns a Store holding svid and the bundles of every CA in cas.
func storeWithBundles(t testing.TB, svid *x509svid.SVID, cas ...*CA) *Store {
	t.Helper()
	var bs []*x509bundle.Bundle
	for _, ca := range cas {
		bs = append(bs, ca.Bundle(spiffeid.TrustDomain{}))
	}
	m, err := NewMaterial("test", svid, time.Now(), bs...)
	if err != nil {
		t.Fatalf("NewMaterial() error = %v", err)
	}
	s := NewStore("test")
	s.Publish(m)
	return s
}

// rawStore holds svid with the bundle of trust without checking that svid verifies
// against it (for presenting expired certificates or ones from another CA).
func rawStore(t testing.TB, trust *CA, svid *x509svid.SVID) *Store {
	t.Helper()
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	b := trust.Bundle(spiffeid.TrustDomain{})
	m := &Material{svid: svid, cert: cert, source: "raw", loaded: time.Now(),
		bundles: map[spiffeid.TrustDomain]*x509bundle.Bundle{b.TrustDomain(): b}, tdOrder: []spiffeid.TrustDomain{b.TrustDomain()}}
	s := NewStore("raw")
	s.Publish(m)
	return s
}

// hsResult is the outcome of one handshake between a server and a client config.
type hsResult struct {
	serverErr   error
	serverState tls.ConnectionState
	clientErr   error
	clientState tls.ConnectionState
	reply       string
}

// handshake runs one real loopback TLS connection: the server completes its handshake
// and, if that succeeds, writes "hello"; the client handshakes and reads the reply. In
// TLS 1.3 a server's refusal of the client certificate shows on the client's first read,
// so clientErr covers the read too.
func handshake(t *testing.T, server, client *tls.Config) hsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res hsResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		if err := tc.HandshakeContext(ctx); err != nil {
			res.serverErr = err
			return
		}
		res.serverState = tc.ConnectionState()
		_, _ = tc.Write([]byte("hello"))
		// Wait for the client to finish reading before closing.
		_, _ = io.Copy(io.Discard, tc)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, client)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.HandshakeContext(ctx); err != nil {
		res.clientErr = err
	} else {
		res.clientState = tc.ConnectionState()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(tc, buf); err != nil {
			res.clientErr = err
		} else {
			res.reply = string(buf)
		}
	}
	_ = tc.Close()
	<-done
	return res
}

// echoServer accepts connections on l and echoes lines back on each, prefixed with the
// serial of the client's certificate when there is one. stop closes the listener and
// every connection and waits for the goroutines.
func echoServer(t *testing.T, l net.Listener) (stop func()) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				prefix := "plain"
				if tc, ok := c.(*tls.Conn); ok {
					if err := tc.HandshakeContext(context.Background()); err != nil {
						return
					}
					cs := tc.ConnectionState()
					prefix = FormatSerial(cs.PeerCertificates[0].SerialNumber)
				}
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, prefix+" "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() {
		_ = l.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// roundTrip writes a line on c and returns the echoed line.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read echo of %q: %v", line, err)
	}
	return got[:len(got)-1]
}

// eventually polls cond until it holds or 10 seconds pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func asPeerError(err error) (*PeerError, bool) {
	var pe *PeerError
	ok := errors.As(err, &pe)
	return pe, ok
}
