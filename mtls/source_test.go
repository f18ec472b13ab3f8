package mtls

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestStore(t *testing.T) {
	s := NewStore("test")
	if _, err := s.Current(); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("Current() on an empty store error = %v, want ErrNoCertificate", err)
	}
	ch := s.Changed()
	s.Fail(errors.New("disk on fire"), time.Now())
	if _, err := s.Current(); !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Current() after Fail error = %v, want ErrNoCertificate with the reason", err)
	}
	select {
	case <-ch:
		t.Error("Changed() closed by Fail, want it open until material changes")
	default:
	}
	if st := s.Status(); st.Failures != 1 || st.LastError != "disk on fire" || st.Source != "test" {
		t.Errorf("Status() = %+v, want 1 failure 'disk on fire'", st)
	}

	ca := newTestCA(t, testTD)
	m1 := storeWith(t, ca, issueSVID(t, ca, "api")).state.Load().m
	s.Publish(m1)
	select {
	case <-ch:
	default:
		t.Fatal("Changed() not closed by Publish")
	}
	if got, err := s.Current(); err != nil || got != m1 {
		t.Errorf("Current() = %v, %v, want the published material", got, err)
	}
	if st := s.Status(); st.Updates != 1 || st.LastError != "" || !st.LastUpdate.Equal(m1.LoadedAt()) {
		t.Errorf("Status() = %+v, want 1 update and the error cleared", st)
	}
	ch = s.Changed()
	s.Fail(errors.New("bad file"), time.Now())
	if got, _ := s.Current(); got != m1 {
		t.Error("Fail() replaced the current material")
	}
	s.Publish(nil)
	select {
	case <-ch:
		t.Error("Publish(nil) closed Changed()")
	default:
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
}

func TestWait(t *testing.T) {
	s := NewStore("test")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := Wait(ctx, s); !errors.Is(err, ErrNoCertificate) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait() on an empty store error = %v, want ErrNoCertificate and DeadlineExceeded", err)
	}
	ca := newTestCA(t, testTD)
	m := storeWith(t, ca, issueSVID(t, ca, "api")).state.Load().m
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(10 * time.Millisecond)
		s.Publish(m)
	})
	got, err := Wait(context.Background(), s)
	wg.Wait()
	if err != nil || got != m {
		t.Errorf("Wait() = %v, %v, want the published material", got, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger on another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestWatchExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := newTestCA(t, testTD)
		s := NewStore("test")
		var logs syncBuffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			WatchExpiry(ctx, s, log, time.Hour)
		}()

		// Nothing is logged while no certificate is loaded.
		synctest.Wait()
		if logs.String() != "" {
			t.Errorf("logs before any certificate = %q, want none", logs.String())
		}
		first, err := NewMaterial("test", issueAt(t, ca, svcID(t, testTD, "api"), time.Now(), 3*time.Hour), time.Now(), ca.Bundle(spiffeid.TrustDomain{}))
		if err != nil {
			t.Fatal(err)
		}
		s.Publish(first)
		time.Sleep(time.Hour + 59*time.Minute)
		synctest.Wait()
		if strings.Contains(logs.String(), "expires soon") {
			t.Errorf("warning logged 1h01m before expiry, want it at 1h: %s", logs.String())
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if !strings.Contains(logs.String(), "level=WARN msg=\"certificate expires soon\"") {
			t.Errorf("no warning within the hour before expiry: %s", logs.String())
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if !strings.Contains(logs.String(), "level=ERROR msg=\"certificate expired\"") {
			t.Errorf("no error after expiry: %s", logs.String())
		}

		second, err := NewMaterial("test", issueAt(t, ca, svcID(t, testTD, "api"), time.Now(), 3*time.Hour), time.Now(), ca.Bundle(spiffeid.TrustDomain{}))
		if err != nil {
			t.Fatal(err)
		}
		s.Publish(second)
		synctest.Wait()
		if !strings.Contains(logs.String(), "certificate rotated") || !strings.Contains(logs.String(), FormatSerial(second.Leaf().SerialNumber)) {
			t.Errorf("no rotation logged with the new serial: %s", logs.String())
		}
		cancel()
		<-done
	})
}

func TestCollector(t *testing.T) {
	ca := newTestCA(t, testTD)
	loaded := storeWith(t, ca, issueSVID(t, ca, "api"))
	empty := NewStore("files")
	empty.Fail(errors.New("missing"), time.Now())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(loaded, empty))
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 8 {
		t.Errorf("GatherAndCount() = %d, %v, want 8 series (2 expiry + 2×3 status)", n, err)
	}
	const want = `
# HELP ferry_mtls_certificate_loaded 1 while the source has a certificate loaded, 0 otherwise.
# TYPE ferry_mtls_certificate_loaded gauge
ferry_mtls_certificate_loaded{source="files"} 0
ferry_mtls_certificate_loaded{source="test"} 1
# HELP ferry_mtls_certificate_update_failures_total Certificate refreshes that failed; the previous certificate stayed in force.
# TYPE ferry_mtls_certificate_update_failures_total counter
ferry_mtls_certificate_update_failures_total{source="files"} 1
ferry_mtls_certificate_update_failures_total{source="test"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"ferry_mtls_certificate_loaded", "ferry_mtls_certificate_update_failures_total"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := loaded.Current()
	for _, mf := range mfs {
		if mf.GetName() != "ferry_mtls_certificate_expiry_seconds" {
			continue
		}
		for _, metric := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range metric.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["role"] != RoleLeaf {
				continue
			}
			got := metric.GetGauge().GetValue()
			want := time.Until(m.NotAfter()).Seconds()
			if labels["spiffe_id"] != "spiffe://mesh.local/svc/api" || labels["serial"] != FormatSerial(m.Leaf().SerialNumber) ||
				got > want+1 || got < want-60 {
				t.Errorf("leaf expiry series = %v %v, want spiffe://mesh.local/svc/api ≈%v", labels, got, want)
			}
			return
		}
	}
	t.Error("no leaf ferry_mtls_certificate_expiry_seconds series")
}
