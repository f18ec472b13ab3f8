// Command backend is the demo mesh's application: an HTTP service that says which instance
// answered. Usage: backend -listen 127.0.0.1:8081 -name api-1 [-upstream http://127.0.0.1:9191]
// With -upstream, each request to /call is forwarded to that URL (the local Ferry sidecar's
// outbound listener) and the answer is included, so the demo shows a call crossing sidecars.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	name := flag.String("name", "backend", "instance name in answers")
	upstream := flag.String("upstream", "", "URL of the local sidecar's outbound listener for /call")
	flag.Parse()

	client := &http.Client{Timeout: 5 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("/call", func(w http.ResponseWriter, r *http.Request) {
		if *upstream == "" {
			http.Error(w, "no -upstream configured", http.StatusNotFound)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), "GET", *upstream+"/hello", nil)
		req.Header.Set("X-Request-Id", r.Header.Get("X-Request-Id"))
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(w, "%s called the api → %d %s", *name, resp.StatusCode, body)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (request %s, via %s)\n", *name, r.Header.Get("X-Request-Id"), r.Header.Get("X-Forwarded-For"))
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Print(err)
		os.Exit(1)
	}
}
