// Command handshake measures how many full mutual-TLS handshakes a server completes: N
// workers each open a new TCP connection, do a full TLS handshake presenting a client
// certificate (no session cache, no tickets: never a resumption), send one HTTP/1.1 request
// with "Connection: close", read the whole answer, close, and start again, for D seconds.
//
// It is the load side of the handshake benchmark in bench/run.sh, which divides the
// handshakes counted here by the CPU seconds the server used meanwhile (read from /proc).
// The server certificate is verified against -ca (chain only: mesh certificates carry a
// SPIFFE URI, not a DNS name). On stdout it prints one line of key=value pairs:
//
//	handshakes=N errors=N seconds=S rate=R p50_ms=X p99_ms=Y version=TLS1.3
//	cipher=TLS_AES_128_GCM_SHA256 curve=X25519 alpn=http/1.1 resumed=0
//
// and the first error, if any, on stderr. It exits 1 when no handshake succeeded.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:19112", "server address (host:port)")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	caFile := flag.String("ca", "", "CA bundle that verifies the server's certificate (PEM)")
	workers := flag.Int("workers", 8, "concurrent connections")
	duration := flag.Duration("duration", 5*time.Second, "how long to run")
	path := flag.String("path", "/", "request path")
	alpn := flag.String("alpn", "http/1.1", "ALPN protocols offered, comma-separated (empty: none)")
	curves := flag.String("curves", "X25519", "key exchange groups offered, comma-separated: X25519, P256, X25519MLKEM768 (empty: Go's defaults)")
	maxVersion := flag.String("max-version", "1.3", "highest TLS version offered: 1.2 or 1.3")
	flag.Parse()

	cfg, err := clientConfig(*certFile, *keyFile, *caFile, *alpn, *curves, *maxVersion)
	if err != nil {
		fmt.Fprintf(os.Stderr, "handshake: %v\n", err)
		os.Exit(2)
	}
	if *workers < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "handshake: -workers must be ≥ 1 and -duration > 0")
		os.Exit(2)
	}
	res := run(cfg, *addr, *path, *workers, *duration)
	fmt.Println(res)
	if res.firstErr != nil {
		fmt.Fprintf(os.Stderr, "handshake: %d errors, first: %v\n", res.errors, res.firstErr)
	}
	if res.handshakes == 0 {
		os.Exit(1)
	}
}

// clientConfig builds the client's TLS configuration: a client certificate, server
// verification against caFile without a host name, and no session resumption.
func clientConfig(certFile, keyFile, caFile, alpn, curves, maxVersion string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("-cert, -key and -ca are required")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA bundle %s: no PEM certificate", caFile)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// A nil ClientSessionCache already means no resumption; disabling tickets also
		// keeps TLS 1.2 from offering one.
		ClientSessionCache:     nil,
		SessionTicketsDisabled: true,
		// The chain is verified in VerifyConnection: mesh certificates name a SPIFFE ID,
		// not a host, so the standard host name check cannot apply.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}
	switch maxVersion {
	case "1.2":
		cfg.MaxVersion = tls.VersionTLS12
	case "1.3":
		cfg.MaxVersion = tls.VersionTLS13
	default:
		return nil, fmt.Errorf("-max-version %q: want 1.2 or 1.3", maxVersion)
	}
	if alpn != "" {
		cfg.NextProtos = strings.Split(alpn, ",")
	}
	if curves != "" {
		for _, c := range strings.Split(curves, ",") {
			id, ok := curveIDs[strings.TrimSpace(c)]
			if !ok {
				return nil, fmt.Errorf("-curves: unknown group %q", c)
			}
			cfg.CurvePreferences = append(cfg.CurvePreferences, id)
		}
	}
	return cfg, nil
}

var curveIDs = map[string]tls.CurveID{
	"X25519":         tls.X25519,
	"P256":           tls.CurveP256,
	"P384":           tls.CurveP384,
	"X25519MLKEM768": tls.X25519MLKEM768,
}

// result is what one run measured.
type result struct {
	handshakes, errors, resumed int64
	elapsed                     time.Duration
	p50, p99                    time.Duration
	state                       tls.ConnectionState // of one successful connection
	firstErr                    error
}

func (r *result) String() string {
	rate := float64(r.handshakes) / r.elapsed.Seconds()
	alpn := r.state.NegotiatedProtocol
	if alpn == "" {
		alpn = "none"
	}
	return fmt.Sprintf("handshakes=%d errors=%d seconds=%.2f rate=%.0f p50_ms=%.3f p99_ms=%.3f version=%s cipher=%s curve=%s alpn=%s resumed=%d",
		r.handshakes, r.errors, r.elapsed.Seconds(), rate,
		float64(r.p50.Microseconds())/1000, float64(r.p99.Microseconds())/1000,
		versionName(r.state.Version), tls.CipherSuiteName(r.state.CipherSuite), curveName(r.state.CurveID), alpn, r.resumed)
}

func versionName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLS1.2"
	case tls.VersionTLS13:
		return "TLS1.3"
	case 0:
		return "none"
	}
	return fmt.Sprintf("0x%04x", v)
}

func curveName(c tls.CurveID) string {
	if c == 0 {
		return "unknown"
	}
	return c.String()
}

// run drives workers connections at a time for d and collects the results.
func run(cfg *tls.Config, addr, path string, workers int, d time.Duration) *result {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var (
		res       result
		ok, fails atomic.Int64
		mu        sync.Mutex // guards the fields of res written below and lat
		lat       []time.Duration
		wg        sync.WaitGroup
	)
	start := time.Now()
	// The run ends at ctx's deadline, which dials and handshakes inherit: an error at or
	// after it (possibly before ctx's own timer has marked ctx done) is the end of the run.
	end, _ := ctx.Deadline()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for ctx.Err() == nil {
				t0 := time.Now()
				cs, err := once(ctx, cfg, addr, path)
				if err != nil {
					if ctx.Err() != nil || !time.Now().Before(end) {
						break // cut off by the end of the run, not a failure
					}
					fails.Add(1)
					mu.Lock()
					if res.firstErr == nil {
						res.firstErr = err
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
				mine = append(mine, time.Since(t0))
				if cs.DidResume {
					mu.Lock()
					res.resumed++
					mu.Unlock()
				}
				mu.Lock()
				if res.state.Version == 0 {
					res.state = cs
				}
				mu.Unlock()
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.handshakes, res.errors = ok.Load(), fails.Load()
	if len(lat) > 0 {
		slices.Sort(lat)
		res.p50 = lat[(len(lat)-1)*50/100]
		res.p99 = lat[(len(lat)-1)*99/100]
	}
	return &res
}

// once makes one connection: TCP connect, full handshake, one request, the whole answer.
func once(ctx context.Context, cfg *tls.Config, addr, path string) (tls.ConnectionState, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl.Add(5 * time.Second)) // a stuck server cannot hang the run
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return tls.ConnectionState{}, fmt.Errorf("handshake: %w", err)
	}
	cs := conn.ConnectionState()
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return cs, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return cs, fmt.Errorf("read response: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return cs, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return cs, fmt.Errorf("status %s", resp.Status)
	}
	return cs, nil
}
