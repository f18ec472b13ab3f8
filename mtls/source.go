package mtls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoCertificate is returned (wrapped) by Source.Current while no material has been
// loaded.
var ErrNoCertificate = errors.New("mtls: no certificate loaded")

// Source supplies certificate material to the tls.Configs built by ServerConfig and
// ClientConfig, to the admin endpoint and to metrics. Material is swapped atomically:
// each handshake uses the Material current when it starts, so new handshakes pick up a
// rotation and established connections are unaffected.
//
// Pull sources (files, dev) and push sources (Consul's blocking queries, xDS SDS) are
// built the same way: they embed a *Store and call Store.Publish whenever they have new,
// valid material and Store.Fail when a refresh fails (the previous material stays). All
// methods are safe to call concurrently; Current and Changed never block and take no
// lock, so they may be called on every handshake.
type Source interface {
	// Current returns the material in force now, or an error wrapping
	// ErrNoCertificate (and the last load error) if none has been loaded yet.
	Current() (*Material, error)
	// Changed returns a channel that is closed when material newer than the one
	// Current returns at the same moment is published. Call Changed before Current to
	// miss no update.
	Changed() <-chan struct{}
	// Status reports the source's refresh history.
	Status() Status
	// Close stops the source's background work. Material already published stays
	// available through Current.
	Close() error
}

// Status is a source's refresh history, for /certs and metrics.
type Status struct {
	// Source names the source kind ("files", "dev", …).
	Source string `json:"source"`
	// Updates counts published materials, Failures failed refreshes.
	Updates  uint64 `json:"updates"`
	Failures uint64 `json:"failures"`
	// LastUpdate is when material was last published.
	LastUpdate time.Time `json:"last_update,omitzero"`
	// LastError is the last refresh error and LastErrorAt when it happened; LastError
	// is cleared by the next successful update.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Store holds the current Material of a Source and notifies waiters when it changes. It
// is the building block of every Source: its zero value is not usable, call NewStore.
// A *Store on its own is a complete Source whose material is published by hand (for
// tests, or by a component that receives pushed certificates). All methods are safe to
// call concurrently.
type Store struct {
	name  string
	state atomic.Pointer[storeState]

	mu     sync.Mutex // serializes Publish and Fail, guards status
	status Status
}

type storeState struct {
	m       *Material
	changed chan struct{}
	lastErr error
}

var _ Source = (*Store)(nil)

// NewStore returns an empty Store for a source of the given kind.
func NewStore(source string) *Store {
	s := &Store{name: source, status: Status{Source: source}}
	s.state.Store(&storeState{changed: make(chan struct{})})
	return s
}

// Publish makes m the current material and wakes everyone waiting on Changed.
func (s *Store) Publish(m *Material) {
	if m == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.state.Load()
	s.state.Store(&storeState{m: m, changed: make(chan struct{})})
	close(old.changed)
	s.status.Updates++
	s.status.LastUpdate = m.LoadedAt()
	s.status.LastError, s.status.LastErrorAt = "", time.Time{}
}

// Fail records a failed refresh at now. The current material, if any, stays in force.
func (s *Store) Fail(err error, now time.Time) {
	if err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Failures++
	s.status.LastError, s.status.LastErrorAt = err.Error(), now
	if old := s.state.Load(); old.m == nil {
		// Keep the error for Current's message; the channel stays the same because no
		// material changed.
		s.state.Store(&storeState{changed: old.changed, lastErr: err})
	}
}

// Current implements Source.
func (s *Store) Current() (*Material, error) {
	st := s.state.Load()
	if st.m != nil {
		return st.m, nil
	}
	if st.lastErr != nil {
		return nil, fmt.Errorf("%w from %s source: %w", ErrNoCertificate, s.name, st.lastErr)
	}
	return nil, fmt.Errorf("%w from %s source yet", ErrNoCertificate, s.name)
}

// Changed implements Source.
func (s *Store) Changed() <-chan struct{} { return s.state.Load().changed }

// Status implements Source.
func (s *Store) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Close implements Source; a bare Store has no background work, so it does nothing.
func (s *Store) Close() error { return nil }

// Wait blocks until src has material or ctx is done, and returns the material. Use it at
// start-up to wait for push sources (or to fail fast with a deadline).
func Wait(ctx context.Context, src Source) (*Material, error) {
	for {
		ch := src.Changed()
		m, err := src.Current()
		if err == nil {
			return m, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
	}
}

// WatchExpiry logs, until ctx is done, a warning when the current certificate of src is
// within warnBefore of expiring, an error once it has expired, and an info line for every
// rotation. It blocks; run it on its own goroutine.
func WatchExpiry(ctx context.Context, src Source, log *slog.Logger, warnBefore time.Duration) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var last *Material
	for {
		ch := src.Changed()
		m, err := src.Current()
		if err == nil {
			if last != nil && last != m {
				log.Info("certificate rotated", "source", m.Source(), "spiffe_id", m.ID().String(),
					"serial", FormatSerial(m.Leaf().SerialNumber), "not_after", m.NotAfter())
			}
			last = m
			watchOne(ctx, ch, m, log, warnBefore)
		} else {
			select {
			case <-ch:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// watchOne logs the approaching expiry of m until ch is closed or ctx is done.
func watchOne(ctx context.Context, ch <-chan struct{}, m *Material, log *slog.Logger, warnBefore time.Duration) {
	notAfter := m.NotAfter()
	if !sleep(ctx, ch, time.Until(notAfter.Add(-warnBefore))) {
		return
	}
	if d := time.Until(notAfter); d > 0 {
		log.Warn("certificate expires soon", "source", m.Source(), "spiffe_id", m.ID().String(),
			"not_after", notAfter, "remaining", d.Round(time.Second).String())
		if !sleep(ctx, ch, d) {
			return
		}
	}
	log.Error("certificate expired", "source", m.Source(), "spiffe_id", m.ID().String(), "not_after", notAfter)
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// sleep waits for d and reports true, or reports false as soon as ch is closed or ctx is
// done.
func sleep(ctx context.Context, ch <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ch:
		return false
	case <-ctx.Done():
		return false
	}
}
