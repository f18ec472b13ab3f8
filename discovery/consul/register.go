package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Registrar keeps services registered with the local Consul agent: it registers them,
// checks every Interval that the agent still has them (an agent restarted without its
// data directory, such as a dev agent, forgets its local services) and registers them
// again if not, until Deregister. Its methods are safe for concurrent use.
type Registrar struct {
	api      *api.Client
	services []*api.AgentServiceRegistration
	interval time.Duration
	log      *slog.Logger

	mu           sync.Mutex
	cancel       context.CancelFunc // cuts a round short (requests in flight are abandoned)
	quit         chan struct{}      // ends the loop after the round in progress
	done         chan struct{}
	deregistered bool
	registered   bool
}

// NewRegistrar returns a registrar for services (registered in order, deregistered in
// reverse order). interval is how often the agent is checked; at least one second.
// It does not contact the agent until Start.
func NewRegistrar(client *api.Client, services []*api.AgentServiceRegistration, interval time.Duration, log *slog.Logger) (*Registrar, error) {
	if client == nil {
		return nil, errors.New("consul: nil client")
	}
	for _, s := range services {
		if s == nil || s.ID == "" || s.Name == "" {
			return nil, errors.New("consul: every registration needs an ID and a name")
		}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Registrar{api: client, services: services, interval: max(interval, time.Second), log: log}, nil
}

// Start registers the services in the background and keeps them registered. While the
// agent cannot be reached it retries every interval, logging the first failure.
func (r *Registrar) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil || r.deregistered {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.quit, r.done = cancel, make(chan struct{}), make(chan struct{})
	go r.run(ctx, r.quit, r.done)
}

// Registered reports whether the last check found every service in the agent.
func (r *Registrar) Registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

func (r *Registrar) run(ctx context.Context, quit, done chan struct{}) {
	defer close(done)
	failing, first := false, true
	for {
		// The first round registers everything, so that a registrar replacing another
		// under the same IDs (a reload) updates the agent's definitions.
		err := r.sync(ctx, first)
		if err == nil {
			first = false
		}
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.registered = err == nil
		r.mu.Unlock()
		switch {
		case err != nil && !failing:
			r.log.Warn("consul registration failing; retrying", "error", err, "retry_in", r.interval)
			failing = true
		case err == nil && failing:
			r.log.Info("consul registration restored")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-quit:
			return
		case <-time.After(r.interval):
		}
	}
}

// sync registers every service the agent does not have, or every one with all.
func (r *Registrar) sync(ctx context.Context, all bool) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	for _, s := range r.services {
		if !all {
			_, _, err := r.api.Agent().Service(s.ID, q)
			if err == nil {
				continue
			}
			var se api.StatusError
			if !errors.As(err, &se) || se.Code != 404 {
				return fmt.Errorf("looking up service %s: %w", s.ID, err)
			}
		}
		if err := r.api.Agent().ServiceRegisterOpts(s, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
			return fmt.Errorf("registering service %s: %w", s.ID, err)
		}
		r.log.Info("registered with consul", "service", s.Name, "id", s.ID, "kind", string(s.Kind), "address", s.Address, "port", s.Port)
	}
	return nil
}

// Deregister stops keeping the services registered and removes them from the agent,
// waiting for ctx at most. After it, Start does nothing. It returns the first error.
func (r *Registrar) Deregister(ctx context.Context) error {
	r.mu.Lock()
	cancel, quit, done := r.cancel, r.quit, r.done
	already := r.deregistered
	r.deregistered, r.cancel, r.registered = true, nil, false
	r.mu.Unlock()
	if cancel != nil {
		r.finish(ctx, cancel, quit, done)
	}
	if already {
		return nil
	}
	var first error
	q := (&api.QueryOptions{}).WithContext(ctx)
	for i := len(r.services) - 1; i >= 0; i-- {
		s := r.services[i]
		if err := r.api.Agent().ServiceDeregisterOpts(s.ID, q); err != nil {
			var se api.StatusError
			if errors.As(err, &se) && se.Code == 404 {
				continue
			}
			if first == nil {
				first = fmt.Errorf("deregistering service %s: %w", s.ID, err)
			}
			continue
		}
		r.log.Info("deregistered from consul", "service", s.Name, "id", s.ID)
	}
	return first
}

// Stop stops keeping the services registered, leaving them in the agent (for a
// replacement registrar with the same IDs).
func (r *Registrar) Stop() {
	r.mu.Lock()
	cancel, quit, done := r.cancel, r.quit, r.done
	r.cancel, r.deregistered = nil, true
	r.mu.Unlock()
	if cancel != nil {
		ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		defer stop()
		r.finish(ctx, cancel, quit, done)
	}
}

// finish ends the loop, letting a registration in flight complete (so that it cannot
// land in the agent after a deregistration) unless ctx is done first.
func (r *Registrar) finish(ctx context.Context, cancel context.CancelFunc, quit, done chan struct{}) {
	close(quit)
	select {
	case <-done:
	case <-ctx.Done():
		cancel()
		<-done
	}
	cancel()
}
