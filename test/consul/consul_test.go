package consul

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// discoveryConfig is a ferry config with one HTTP upstream "api" fed by Consul service
// "api" on agentAddr.
func discoveryConfig(admin, out, agentAddr string) string {
	return fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams:
  - name: api
    consul: {service: api}
    retries: {attempts: 2, on: [connect-failure, reset]}
discovery:
  consul: {address: %s}
drain_timeout: 2s
`, admin, out, agentAddr)
}

func TestEndpointsFollowRegistrations(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulClient(t, agent)
	var bs []*backend
	for i := range 3 {
		b := startBackend(t, fmt.Sprintf("api-%d", i))
		register(t, c, "api", b, false)
		bs = append(bs, b)
	}
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, discoveryConfig(admin, out, agent.Addr))
	url := "http://" + out + "/"

	eventually(t, "traffic reaches all 3 instances", func() bool {
		got := seen(t, url, 30)
		return got["api-0"] > 0 && got["api-1"] > 0 && got["api-2"] > 0
	})
	if d := f.clusterDiscovery("api"); d.Source != "consul" || d.Service != "api" || !d.Ready || d.LastContact == nil || d.StaleSince != nil {
		t.Errorf("/clusters discovery = %+v, want consul, service api, ready, last contact set, not stale", d)
	}

	// Deregistration: the blocking query returns at once, so one round removes it.
	if err := c.Agent().ServiceDeregister("api-1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, "api-1 stops receiving traffic", func() bool { return seen(t, url, 30)["api-1"] == 0 })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("deregistered instance left after %v, want within one blocking round (< 5s)", took)
	}
	before := bs[1].count()
	if got := seen(t, url, 60); got["api-1"] > 0 || got["api-0"] == 0 || got["api-2"] == 0 {
		t.Errorf("after deregistration: %v, want api-0 and api-2 only", got)
	}
	if bs[1].count() != before {
		t.Errorf("api-1 received %d more requests after leaving", bs[1].count()-before)
	}

	// A failing TTL check removes an instance; passing again brings it back.
	b3 := startBackend(t, "api-3")
	register(t, c, "api", b3, true)
	eventually(t, "api-3 (TTL check passing) receives traffic", func() bool { return seen(t, url, 30)["api-3"] > 0 })
	if err := c.Agent().FailTTL("ttl-api-3", "test says no"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "api-3 (TTL check critical) stops receiving traffic", func() bool { return seen(t, url, 30)["api-3"] == 0 })
	if err := c.Agent().PassTTL("ttl-api-3", "ok again"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "api-3 (TTL check passing again) receives traffic", func() bool { return seen(t, url, 30)["api-3"] > 0 })
}

func TestConsulOutageKeepsServing(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulClient(t, agent)
	for i := range 2 {
		register(t, c, "api", startBackend(t, fmt.Sprintf("api-%d", i)), false)
	}
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, discoveryConfig(admin, out, agent.Addr))
	url := "http://" + out + "/"
	eventually(t, "traffic reaches both instances", func() bool {
		got := seen(t, url, 20)
		return got["api-0"] > 0 && got["api-1"] > 0
	})

	// A bounded load runs while the agent stops.
	var (
		ok, failed atomic.Int64
		firstFail  atomic.Value
		wg         sync.WaitGroup
		stopLoad   = make(chan struct{})
	)
	for range 8 {
		wg.Go(func() {
			cl := &http.Client{Timeout: ioTimeout}
			defer cl.CloseIdleConnections()
			for {
				select {
				case <-stopLoad:
					return
				default:
				}
				code, body := get(cl, url)
				if code == http.StatusOK && strings.HasPrefix(body, "api-") {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("%d %s", code, body))
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	agent.Stop()
	eventually(t, "/clusters shows the upstream stale", func() bool { return f.clusterDiscovery("api").StaleSince != nil })
	eventually(t, "ferry_discovery_stale_seconds > 0", func() bool {
		return f.MetricWith("ferry_discovery_stale_seconds", `upstream="api"`) > 0
	})
	time.Sleep(time.Second)
	close(stopLoad)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("load during the Consul outage: %d ok, %d failed (first: %v), want 0 failed", ok.Load(), failed.Load(), firstFail.Load())
	}
	if code, body := f.ready(); code != http.StatusOK {
		t.Errorf("/ready during the outage = %d %s, want 200 (the last endpoints serve)", code, body)
	}
	if f.MetricWith("ferry_discovery_errors_total", `upstream="api"`) < 1 {
		t.Errorf("ferry_discovery_errors_total = %v, want at least 1", f.MetricWith("ferry_discovery_errors_total", `upstream="api"`))
	}

	// The agent comes back on the same ports with no state (a dev agent): a new instance
	// registers and receives traffic.
	agent = consultest.Start(t, consultest.Options{Ports: &agent.Ports})
	c = consulClient(t, agent)
	register(t, c, "api", startBackend(t, "api-new"), false)
	eventually(t, "the new instance receives traffic", func() bool { return seen(t, url, 20)["api-new"] > 0 })
	eventually(t, "staleness back to 0", func() bool {
		return f.clusterDiscovery("api").StaleSince == nil && f.MetricWith("ferry_discovery_stale_seconds", `upstream="api"`) == 0
	})
}

func TestStartWithConsulDown(t *testing.T) {
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	agentAddr := fmt.Sprintf("127.0.0.1:%d", ports.HTTP)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := runFerry(t, admin, discoveryConfig(admin, out, agentAddr))

	eventually(t, "/ready answers 503 naming Consul", func() bool {
		code, body := f.ready()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "waiting for its first answer from Consul")
	})
	eventually(t, "a clear log line says ferry waits for Consul", func() bool {
		return f.logHas("waiting for Consul", `upstream=api`)
	})
	time.Sleep(500 * time.Millisecond)
	if code, body := f.ready(); code != http.StatusServiceUnavailable {
		t.Fatalf("/ready with Consul down = %d %s, want 503", code, body)
	}

	agent := consultest.Start(t, consultest.Options{Ports: &ports})
	register(t, consulClient(t, agent), "api", startBackend(t, "api-0"), false)
	f.WaitReady()
	eventually(t, "traffic reaches the instance", func() bool { return seen(t, "http://"+out+"/", 5)["api-0"] == 5 })
}

func TestRegistration(t *testing.T) {
	agent := consultest.Start(t, consultest.Options{})
	c := consulClient(t, agent)
	app := startBackend(t, "web-app")
	admin, in := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	_, inPort, _ := net.SplitHostPort(in)
	id := "web-" + inPort
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
inbound: {address: %s, target: %s}
outbound: []
upstreams: []
discovery:
  consul: {address: %s, register: true, check_interval: 1s, deregister_delay: 2s}
drain_timeout: 5s
`, admin, in, app.addr, agent.Addr))

	var proxy *api.AgentService
	consultest.WaitFor(t, waitTimeout, func() error {
		svcs, err := c.Agent().Services()
		if err != nil {
			return err
		}
		s, p := svcs[id], svcs[id+"-sidecar-proxy"]
		if s == nil || p == nil {
			return fmt.Errorf("agent services %v: want %s and %s-sidecar-proxy", keys(svcs), id, id)
		}
		proxy = p
		return nil
	})
	if proxy.Kind != api.ServiceKindConnectProxy || proxy.Proxy == nil || proxy.Proxy.DestinationServiceName != "web" ||
		proxy.Proxy.LocalServicePort != app.port || strconv.Itoa(proxy.Port) != inPort {
		t.Errorf("sidecar registration = kind %q, proxy %+v, port %d; want connect-proxy for web, local port %d, port %s",
			proxy.Kind, proxy.Proxy, proxy.Port, app.port, inPort)
	}
	consultest.WaitFor(t, waitTimeout, func() error {
		checks, err := c.Agent().Checks()
		if err != nil {
			return err
		}
		n := 0
		for _, ch := range checks {
			if ch.ServiceID != id && ch.ServiceID != id+"-sidecar-proxy" {
				continue
			}
			n++
			if ch.Status != api.HealthPassing {
				return fmt.Errorf("check %q of %s is %s: %s", ch.Name, ch.ServiceID, ch.Status, ch.Output)
			}
		}
		if n != 3 {
			return fmt.Errorf("%d checks for web, want 3 (app TCP, ferry /ready, alias)", n)
		}
		return nil
	})
	// Peers find ferry (not the application) through the catalog's Connect view.
	consultest.WaitFor(t, waitTimeout, func() error {
		entries, _, err := c.Health().Connect("web", "", true, nil)
		if err != nil {
			return err
		}
		if len(entries) != 1 || entries[0].Service.ID != id+"-sidecar-proxy" || entries[0].Service.Port != proxy.Port {
			return fmt.Errorf("Health().Connect(web, passing) = %d entries, want ferry's sidecar", len(entries))
		}
		return nil
	})

	// Anti-entropy: a dev agent restarted on the same ports has lost every registration;
	// ferry registers again.
	agent.Stop()
	agent = consultest.Start(t, consultest.Options{Ports: &agent.Ports})
	c = consulClient(t, agent)
	consultest.WaitFor(t, waitTimeout, func() error {
		svcs, err := c.Agent().Services()
		if err != nil {
			return err
		}
		if svcs[id] == nil || svcs[id+"-sidecar-proxy"] == nil {
			return fmt.Errorf("agent services %v after restart: want ferry's registrations back", keys(svcs))
		}
		return nil
	})

	// SIGTERM: deregistered while the inbound listener still accepts.
	if err := f.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	consultest.WaitFor(t, 5*time.Second, func() error {
		svcs, err := c.Agent().Services()
		if err != nil {
			return err
		}
		if svcs[id] != nil || svcs[id+"-sidecar-proxy"] != nil {
			return fmt.Errorf("still registered: %v", keys(svcs))
		}
		return nil
	})
	conn, err := net.DialTimeout("tcp", in, time.Second)
	if err != nil {
		t.Fatalf("inbound listener closed before the deregistration was visible: %v", err)
	}
	conn.Close()
	select {
	case <-f.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("ferry did not exit after SIGTERM")
	}
	if !f.logHas("deregistered from consul") {
		t.Errorf("no deregistration log line")
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
