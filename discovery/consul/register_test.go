package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
)

func TestRegistrarKeepsServicesRegistered(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	log, logs := testLogger(t)
	regs := []*api.AgentServiceRegistration{
		{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 8080},
		{ID: "web-1-sidecar-proxy", Name: "web-sidecar-proxy", Kind: api.ServiceKindConnectProxy, Port: 21000,
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web", DestinationServiceID: "web-1",
				LocalServiceAddress: "127.0.0.1", LocalServicePort: 8080}},
	}
	r, err := NewRegistrar(c.API(), regs, time.Second, log)
	if err != nil {
		t.Fatalf("NewRegistrar() error = %v", err)
	}
	r.Start()
	t.Cleanup(func() { _ = r.Deregister(context.Background()) })

	registered := func(c *Client, want bool) func() error {
		return func() error {
			svcs, err := c.API().Agent().Services()
			if err != nil {
				return err
			}
			for _, s := range regs {
				if (svcs[s.ID] != nil) != want {
					return fmt.Errorf("service %s registered = %v, want %v", s.ID, svcs[s.ID] != nil, want)
				}
			}
			if want && !r.Registered() {
				return errors.New("Registered() = false, want true")
			}
			return nil
		}
	}
	consultest.WaitFor(t, 10*time.Second, registered(c, true))

	// A dev agent restarted on the same ports has forgotten its services.
	agent.Stop()
	consultest.Start(t, consultest.Options{Ports: &agent.Ports})
	consultest.WaitFor(t, 15*time.Second, registered(c, true))
	if n := strings.Count(logs.String(), `msg="registered with consul" service=web id=web-1 `); n < 2 {
		t.Errorf("web-1 registered %d times, want at least 2 (again after the restart)", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Deregister(ctx); err != nil {
		t.Fatalf("Deregister() error = %v", err)
	}
	consultest.WaitFor(t, time.Second, registered(c, false))
	r.Start() // no effect once deregistered
	time.Sleep(1500 * time.Millisecond)
	if err := registered(c, false)(); err != nil {
		t.Errorf("after Deregister and Start: %v", err)
	}
}

func TestNewRegistrarRefusesIncompleteRegistrations(t *testing.T) {
	c := newClient(t, Config{Address: "127.0.0.1:1"})
	for _, regs := range [][]*api.AgentServiceRegistration{{nil}, {{Name: "web"}}, {{ID: "web-1"}}} {
		if _, err := NewRegistrar(c.API(), regs, time.Second, nil); err == nil {
			t.Errorf("NewRegistrar(%+v) error = nil, want one", regs)
		}
	}
	if _, err := NewRegistrar(nil, nil, time.Second, nil); err == nil {
		t.Error("NewRegistrar(nil client) error = nil, want one")
	}
}
