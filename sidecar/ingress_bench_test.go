package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/config"
)

// startIngressBench runs a sidecar with one HTTP ingress listener in front of a backend
// answering "ok" and returns the listener's address.
func startIngressBench(b *testing.B) string {
	b.Helper()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	b.Cleanup(app.Close)
	dir := b.TempDir()
	cert, key := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem")
	writeCert(b, cert, key, "a.example")
	var addrs [2]string
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		_ = ln.Close()
	}
	cfg, err := config.Parse("bench.yaml", fmt.Appendf(nil, `service: web
admin: {address: %s}
ingress: [{address: %s, certificates: [{cert_file: %q, key_file: %q}], target: %s, target_protocol: http1}]
`, addrs[0], addrs[1], cert, key, app.Listener.Addr()))
	if err != nil {
		b.Fatal(err)
	}
	s := New(Options{})
	if err := s.Apply(cfg); err != nil {
		b.Fatalf("Apply() error = %v", err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Drain(ctx)
	})
	return addrs[1]
}

// BenchmarkIngressHTTP1KeepAlive: requests over kept-alive TLS connections (no handshake
// per request).
func BenchmarkIngressHTTP1KeepAlive(b *testing.B) {
	addr := startIngressBench(b)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "a.example"},
		MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	url := "https://" + addr + "/"
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkIngressHandshake: full TLS handshakes (ECDSA P-256, TLS 1.3) on new
// connections, with the certificate picked by SNI.
func BenchmarkIngressHandshake(b *testing.B) {
	addr := startIngressBench(b)
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "a.example", NextProtos: []string{"http/1.1"}}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := tls.Dial("tcp", addr, cfg)
			if err != nil {
				b.Error(err)
				return
			}
			_ = c.Close()
		}
	})
}
