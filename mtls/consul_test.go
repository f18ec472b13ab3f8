package mtls_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
	"github.com/ferrymesh/ferry/mtls"
)

func TestNewConsulSourceOptions(t *testing.T) {
	agent := (&api.Client{}).Agent()
	tests := []struct {
		name string
		opts mtls.ConsulOptions
		want string
	}{
		{"no agent", mtls.ConsulOptions{Service: "web"}, "needs a Consul agent"},
		{"no service", mtls.ConsulOptions{Agent: agent}, "needs a service name"},
		{"bad service", mtls.ConsulOptions{Agent: agent, Service: "a/b"}, "invalid service name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := mtls.NewConsulSource(tt.opts)
			if err == nil {
				_ = src.Close()
				t.Fatalf("NewConsulSource() error = nil, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewConsulSource() error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func consulAPI(t *testing.T, addr string) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatalf("api.NewClient() error = %v", err)
	}
	return c
}

func waitMaterial(t *testing.T, src mtls.Source, timeout time.Duration, cond func(*mtls.Material) error) *mtls.Material {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ch := src.Changed()
		m, err := src.Current()
		if err == nil {
			if last = cond(m); last == nil {
				return m
			}
		} else {
			last = err
		}
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("no material as wanted within %s: %v (status %+v)", timeout, last, src.Status())
		}
	}
}

// TestConsulSource runs the source against a real dev agent: the first leaf, its Consul
// form identity and trust domain, a CA root rotation followed without restart, and the
// agent going away with the material staying.
func TestConsulSource(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulAPI(t, agent.Addr)
	src, err := mtls.NewConsulSource(mtls.ConsulOptions{Agent: c.Agent(), Service: "web", Address: agent.Addr,
		WaitTime: 10 * time.Second, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewConsulSource() error = %v", err)
	}
	defer src.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := mtls.Wait(ctx, src)
	if err != nil {
		t.Fatalf("Wait() error = %v", err)
	}
	roots, _, err := c.Connect().CARoots(nil)
	if err != nil {
		t.Fatalf("CARoots() error = %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString(roots.TrustDomain)
	want, err := mtls.ConsulServiceID(td, "default", "dc1", "web")
	if err != nil {
		t.Fatal(err)
	}
	if m.ID() != want {
		t.Errorf("ID() = %v, want %v", m.ID(), want)
	}
	if got := m.Source(); got != "consul" {
		t.Errorf("Source() = %q, want consul", got)
	}
	if got := m.Bundles()[0].TrustDomain(); got != td {
		t.Errorf("Bundles()[0].TrustDomain() = %v, want %v", got, td)
	}
	oldRoot := activeRoot(t, roots)
	if !m.Bundles()[0].HasX509Authority(oldRoot) {
		t.Errorf("bundle lacks the active root %s", oldRoot.Subject)
	}
	if err := m.Leaf().CheckSignatureFrom(oldRoot); err != nil {
		t.Errorf("leaf not signed by the active root: %v", err)
	}
	if st := src.Status(); st.Source != "consul" || st.Updates < 1 {
		t.Errorf("Status() = %+v, want source consul with updates", st)
	}

	// Rotate the CA: a new private key makes the built-in provider generate a new root,
	// cross-signed by the old one. The agent re-signs the leaf with it (after a jitter of
	// up to 30s) and the source must publish it, with both roots in the bundle.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if _, err := c.Connect().CASetConfig(&api.CAConfig{Provider: "consul",
		Config: map[string]any{"PrivateKey": keyPEM}}, nil); err != nil {
		t.Fatalf("CASetConfig() error = %v", err)
	}
	var newRoot *x509.Certificate
	consultest.WaitFor(t, 20*time.Second, func() error {
		r, _, err := c.Connect().CARoots(nil)
		if err != nil {
			return err
		}
		if r.ActiveRootID == roots.ActiveRootID {
			return errors.New("active root unchanged")
		}
		newRoot = activeRoot(t, r)
		return nil
	})
	rotated := waitMaterial(t, src, 90*time.Second, func(m *mtls.Material) error {
		if err := m.Leaf().CheckSignatureFrom(newRoot); err != nil {
			return errors.New("leaf not yet signed by the new root")
		}
		return nil
	})
	if rotated.ID() != want {
		t.Errorf("after rotation ID() = %v, want %v", rotated.ID(), want)
	}
	// The new leaf carries the new root cross-signed by the old one, so a peer that
	// still trusts only the old root accepts it.
	oldOnly := x509bundle.FromX509Authorities(td, []*x509.Certificate{oldRoot})
	if _, _, err := x509svid.Verify(rotated.SVID().Certificates, oldOnly); err != nil {
		t.Errorf("new leaf chain (%d certificates) against the old root only: %v, want it to verify", len(rotated.SVID().Certificates), err)
	}
	for name, root := range map[string]*x509.Certificate{"old": oldRoot, "new": newRoot} {
		if !rotated.Bundles()[0].HasX509Authority(root) {
			t.Errorf("bundle after rotation lacks the %s root", name)
		}
	}

	// The agent goes away: the queries fail, failures are counted, the material stays.
	before := src.Status()
	agent.Stop()
	consultest.WaitFor(t, 20*time.Second, func() error {
		if st := src.Status(); st.Failures <= before.Failures || st.LastError == "" {
			return errors.New("no failure recorded yet")
		}
		return nil
	})
	cur, err := src.Current()
	if err != nil || cur != rotated {
		t.Errorf("Current() after the agent stopped = %v, %v; want the last material", cur, err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close() error = %v", err)
	}
}

// TestConsulSourceTrustDomainMismatch: a configured trust domain that is not Consul's
// makes the source refuse the material, with a clear error, and publish nothing.
func TestConsulSourceTrustDomainMismatch(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulAPI(t, agent.Addr)
	src, err := mtls.NewConsulSource(mtls.ConsulOptions{Agent: c.Agent(), Service: "web", Address: agent.Addr,
		TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.local"), WaitTime: 10 * time.Second})
	if err != nil {
		t.Fatalf("NewConsulSource() error = %v", err)
	}
	defer src.Close()
	consultest.WaitFor(t, 30*time.Second, func() error {
		if st := src.Status(); !strings.Contains(st.LastError, `not "mesh.local"`) {
			return errors.New("no trust domain error yet: " + st.LastError)
		}
		return nil
	})
	if _, err := src.Current(); !errors.Is(err, mtls.ErrNoCertificate) || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("Current() error = %v, want ErrNoCertificate naming the trust domain", err)
	}
}

// TestConsulSourceAgentDown: with no agent, Current says why and Close still ends the
// watches.
func TestConsulSourceAgentDown(t *testing.T) {
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports.HTTP)
	c := consulAPI(t, addr)
	src, err := mtls.NewConsulSource(mtls.ConsulOptions{Agent: c.Agent(), Service: "web", Address: addr,
		RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewConsulSource() error = %v", err)
	}
	consultest.WaitFor(t, 10*time.Second, func() error {
		if st := src.Status(); st.Failures < 2 {
			return errors.New("not enough failures yet")
		}
		return nil
	})
	_, err = src.Current()
	if !errors.Is(err, mtls.ErrNoCertificate) || !strings.Contains(err.Error(), addr) {
		t.Errorf("Current() error = %v, want ErrNoCertificate naming %s", err, addr)
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close() error = %v", err)
	}
}

func activeRoot(t *testing.T, roots *api.CARootList) *x509.Certificate {
	t.Helper()
	for _, r := range roots.Roots {
		if r.ID == roots.ActiveRootID {
			b, _ := pem.Decode([]byte(r.RootCertPEM))
			if b == nil {
				t.Fatalf("active root %s: no PEM", r.ID)
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatalf("active root %s: %v", r.ID, err)
			}
			return c
		}
	}
	t.Fatalf("no active root %q in %d roots", roots.ActiveRootID, len(roots.Roots))
	return nil
}

// queryRecorder is a ConsulCA that answers nothing: it records the wait time and the
// deadline of every query and fails it.
type queryRecorder struct {
	mu      sync.Mutex
	waits   []time.Duration
	budgets []time.Duration // time left before the query's deadline when it was sent
}

func (r *queryRecorder) record(q *api.QueryOptions) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits = append(r.waits, q.WaitTime)
	if dl, ok := q.Context().Deadline(); ok {
		r.budgets = append(r.budgets, time.Until(dl))
	} else {
		r.budgets = append(r.budgets, -1)
	}
	return errors.New("agent unreachable")
}

func (r *queryRecorder) ConnectCARoots(q *api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
	return nil, nil, r.record(q)
}

func (r *queryRecorder) ConnectCALeaf(_ string, q *api.QueryOptions) (*api.LeafCert, *api.QueryMeta, error) {
	return nil, nil, r.record(q)
}

// TestConsulSourceWaitTimeCapped checks that a WaitTime beyond the 10 minutes Consul
// honours is capped, so that the query deadline (which notices a silent agent) follows the
// blocking time Consul really applies rather than the one asked for.
func TestConsulSourceWaitTimeCapped(t *testing.T) {
	tests := []struct {
		name     string
		wait     time.Duration
		wantWait time.Duration
	}{
		{"default", 0, mtls.DefaultConsulWaitTime},
		{"short", 2 * time.Second, 2 * time.Second},
		{"beyond consul's maximum", time.Hour, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &queryRecorder{}
			src, err := mtls.NewConsulSource(mtls.ConsulOptions{Agent: r, Service: "web", WaitTime: tt.wait,
				RetryBase: time.Hour, RetryMax: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				r.mu.Lock()
				n := len(r.waits)
				r.mu.Unlock()
				if n >= 2 || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			_ = src.Close()
			r.mu.Lock()
			defer r.mu.Unlock()
			if len(r.waits) != 2 {
				t.Fatalf("queries sent = %d, want 2 (roots and leaf, then backing off for an hour)", len(r.waits))
			}
			// The deadline is the wait time, Consul's jitter (up to 1/16) and a 10s margin.
			maxBudget := tt.wantWait + tt.wantWait/16 + 10*time.Second
			for i, w := range r.waits {
				if w != tt.wantWait {
					t.Errorf("query %d WaitTime = %v, want %v", i, w, tt.wantWait)
				}
				if b := r.budgets[i]; b <= 0 || b > maxBudget {
					t.Errorf("query %d deadline in %v, want within (0, %v]", i, b, maxBudget)
				}
			}
		})
	}
}
