// Command backend is the origin server for Ferry's benchmark harness (bench/run.sh).
//
// It answers every request with the 13-byte body "Hello, world\n" and speaks both
// HTTP/1.1 and HTTP/2 over cleartext with prior knowledge (h2c) on the same port, using
// net/http's Protocols (not the deprecated x/net h2c package). It logs nothing per request
// so that its own cost stays as small as net/http allows.
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

var body = []byte("Hello, world\n")

func main() {
	addr := flag.String("addr", "127.0.0.1:19001", "listen address (host:port)")
	maxStreams := flag.Int("h2-max-streams", 1000, "HTTP/2 max concurrent streams per connection")
	flag.Parse()

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)

	contentLength := strconv.Itoa(len(body))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{contentLength}
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})

	srv := &http.Server{
		Addr:              *addr,
		Handler:           handler,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: *maxStreams},
		ErrorLog:          log.New(os.Stderr, "backend: ", log.LstdFlags),
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("backend: %v", err)
	}
	log.Printf("backend: listening on %s (HTTP/1.1 and h2c)", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("backend: %v", err)
	}
}
