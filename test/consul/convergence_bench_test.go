package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// convergenceInstances is how many instances of one service BenchmarkConsulConvergence500
// registers.
const convergenceInstances = 500

// convergenceTimeout bounds each wait of the benchmark.
const convergenceTimeout = 2 * time.Minute

// fleet is n HTTP backends in this process, one loopback listener each, served by one
// http.Server; each records when it first received a request.
type fleet struct {
	lns   []net.Listener
	first []atomic.Int64 // unix nanoseconds of the first request, 0 for none
	hits  atomic.Int64   // instances that received at least one request
}

func startFleet(b *testing.B, n int) *fleet {
	b.Helper()
	f := &fleet{first: make([]atomic.Int64, n)}
	type idKey struct{}
	srv := &http.Server{
		ReadHeaderTimeout: ioTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			port := c.LocalAddr().(*net.TCPAddr).Port
			return context.WithValue(ctx, idKey{}, port)
		},
	}
	byPort := make(map[int]int, n) // listening port → instance index; read-only once serving
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatalf("listener %d: %v", i, err)
		}
		f.lns = append(f.lns, ln)
		byPort[ln.Addr().(*net.TCPAddr).Port] = i
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := byPort[r.Context().Value(idKey{}).(int)]
		if f.first[i].CompareAndSwap(0, time.Now().UnixNano()) {
			f.hits.Add(1)
		}
		_, _ = w.Write([]byte(strconv.Itoa(i)))
	})
	for _, ln := range f.lns {
		go func() { _ = srv.Serve(ln) }()
	}
	b.Cleanup(func() { _ = srv.Close() })
	return f
}

// reset forgets who received requests.
func (f *fleet) reset() {
	for i := range f.first {
		f.first[i].Store(0)
	}
	f.hits.Store(0)
}

func (f *fleet) port(i int) int { return f.lns[i].Addr().(*net.TCPAddr).Port }

// clusterEndpoints returns how many endpoints /clusters lists for upstream (-1 if it cannot
// be read).
func clusterEndpoints(c *http.Client, adminURL, upstream string) int {
	resp, err := c.Get(adminURL)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var body struct {
		Upstreams []struct {
			Name      string            `json:"name"`
			Endpoints []json.RawMessage `json:"endpoints"`
		} `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return -1
	}
	for _, u := range body.Upstreams {
		if u.Name == upstream {
			return len(u.Endpoints)
		}
	}
	return -1
}

// BenchmarkConsulConvergence500 registers 500 instances of one service with a real Consul
// agent, one after another, and measures, from the moment the last registration returns,
// how long until (a) the last-registered instance receives a request sent through a real
// ferry process, (b) every instance has received one, and (c) ferry's /clusters lists all
// 500 endpoints. Between iterations every instance is deregistered and ferry is seen to
// drop them. It reports; it does not assert a bound. Run it with
//
//	go test -run '^$' -bench BenchmarkConsulConvergence500 -benchtime 1x ./test/consul
func BenchmarkConsulConvergence500(b *testing.B) {
	agent := consultest.Start(b, consultest.Options{})
	cfg := api.DefaultConfig()
	cfg.Address = agent.Addr
	c, err := api.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	fl := startFleet(b, convergenceInstances)

	admin, out := ferrytest.FreeAddr(b), ferrytest.FreeAddr(b)
	cfgPath := ferrytest.WriteFile(b, b.TempDir(), "ferry.yaml", fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: api, address: %s}]
upstreams:
  - name: api
    consul: {service: bench-api}
discovery:
  consul: {address: %s}
drain_timeout: 2s
`, admin, out, agent.Addr))
	f := ferrytest.StartWith(b, ferrytest.Options{Env: cleanEnv(), Grace: 15 * time.Second}, ferryBin, cfgPath, admin)
	hc := &http.Client{Timeout: ioTimeout}
	defer hc.CloseIdleConnections()
	clustersURL := f.AdminURL("/clusters")
	waitEndpoints := func(want int) time.Time {
		deadline := time.Now().Add(convergenceTimeout)
		for time.Now().Before(deadline) {
			if clusterEndpoints(hc, clustersURL, "api") == want {
				return time.Now()
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.Fatalf("/clusters did not list %d endpoints for api within %v", want, convergenceTimeout)
		return time.Time{}
	}
	// Ferry is up and following the (empty) service.
	ferrytest.Eventually(b, ferrytest.ReadyTimeout, func() bool { return clusterEndpoints(hc, clustersURL, "api") == 0 },
		func() string { return "ferry's /clusters does not list upstream api" })

	var toLast, toAll, toClusters, toRegister time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		fl.reset()
		b.StartTimer()

		// Register, 8 at a time as a deployment would, the last one alone at the end.
		regStart := time.Now()
		var wg sync.WaitGroup
		jobs := make(chan int)
		for range 8 {
			wg.Go(func() {
				for i := range jobs {
					registerInstance(b, c, i, fl.port(i))
				}
			})
		}
		for i := range convergenceInstances - 1 {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		last := convergenceInstances - 1
		registerInstance(b, c, last, fl.port(last))
		t0 := time.Now()
		toRegister += t0.Sub(regStart)

		// Load through ferry until every instance has answered, while /clusters is
		// polled for the 500 endpoints.
		clustersAt := make(chan time.Time, 1)
		go func() { clustersAt <- waitEndpoints(convergenceInstances) }()
		ctx, cancel := context.WithTimeout(context.Background(), convergenceTimeout)
		var load sync.WaitGroup
		for range 16 {
			load.Go(func() {
				lc := &http.Client{Timeout: ioTimeout}
				defer lc.CloseIdleConnections()
				for ctx.Err() == nil && fl.hits.Load() < convergenceInstances {
					resp, err := lc.Get("http://" + out + "/")
					if err != nil {
						continue
					}
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						time.Sleep(time.Millisecond) // no endpoint yet: 503
					}
				}
			})
		}
		load.Wait()
		cancel()
		if n := fl.hits.Load(); n < convergenceInstances {
			b.Fatalf("only %d of %d instances received traffic within %v", n, convergenceInstances, convergenceTimeout)
		}
		var allAt int64
		for i := range fl.first {
			allAt = max(allAt, fl.first[i].Load())
		}
		toLast += time.Unix(0, fl.first[last].Load()).Sub(t0)
		toAll += time.Unix(0, allAt).Sub(t0)
		toClusters += (<-clustersAt).Sub(t0)

		// Back to no instances, outside the timing.
		b.StopTimer()
		for i := range convergenceInstances {
			if err := c.Agent().ServiceDeregister(instanceID(i)); err != nil {
				b.Fatalf("deregister %d: %v", i, err)
			}
		}
		waitEndpoints(0)
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(toLast.Milliseconds())/n, "ms-to-last-instance-traffic")
	b.ReportMetric(float64(toAll.Milliseconds())/n, "ms-to-all-instances-traffic")
	b.ReportMetric(float64(toClusters.Milliseconds())/n, "ms-to-clusters-500")
	b.ReportMetric(float64(toRegister.Milliseconds())/n, "ms-to-register-500")
}

func instanceID(i int) string { return "bench-api-" + strconv.Itoa(i) }

// registerInstance registers instance i of bench-api, listening on port.
func registerInstance(b *testing.B, c *api.Client, i, port int) {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	reg := &api.AgentServiceRegistration{ID: instanceID(i), Name: "bench-api", Address: "127.0.0.1", Port: port}
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		b.Errorf("registering instance %d: %v", i, err)
	}
}
