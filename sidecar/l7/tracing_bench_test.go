package l7

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"github.com/ferrymesh/ferry/sidecar/telemetry/jaegertest"
)

// BenchmarkProxyTracing is BenchmarkProxy's GET/plain case with tracing off (a nil
// *Tracing, as the sidecar runs without telemetry.tracing) and on at sample ratios 1 and
// 0.01, exporting to a real Jaeger all-in-one (whose CPU time is not counted: cpu-µs/op
// is this process's). It needs .deps/bin/jaeger-all-in-one (make deps-jaeger).
func BenchmarkProxyTracing(b *testing.B) {
	backend := startBenchBackend(b)
	j := jaegertest.Start(b)
	for _, bc := range []struct {
		name  string
		ratio float64
		off   bool
	}{
		{"off", 0, true},
		{"ratio=0.01", 0.01, false},
		{"ratio=1", 1, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var tr *telemetry.Tracing
			if !bc.off {
				cfg := telemetry.DefaultTracingConfig()
				cfg.OTLPEndpoint = j.OTLPGRPCAddr
				cfg.SampleRatio = bc.ratio
				var err error
				tr, err = telemetry.NewTracing(context.Background(), cfg, "bench", nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					_ = tr.Shutdown(ctx)
					if s := tr.Stats(); s.Dropped() > 0 {
						b.Logf("spans dropped: %+v", s)
					}
				}()
			}
			var eps []*balancer.Endpoint
			for range 3 {
				eps = append(eps, balancer.NewEndpoint(discovery.Endpoint{Address: backend, Weight: 1}, nil))
			}
			tp := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 256})
			defer tp.CloseIdleConnections()
			h := NewHandler(Options{Direction: telemetry.Outbound, Name: "bench", Upstream: staticUpstream{balancer.NewRoundRobin(eps)},
				Transport: tp, RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "bench"),
				Tracing: tr})
			srv := NewServer(ServerOptions{ReadHeaderTimeout: time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}, h)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(guardListener{ln}) }()
			defer srv.Close()
			url := "http://" + ln.Addr().String() + "/"
			ct := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
			defer ct.CloseIdleConnections()
			c := &http.Client{Transport: ct}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N)/1000, "cpu-µs/op")
		})
	}
}
