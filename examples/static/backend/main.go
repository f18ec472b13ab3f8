// Command backend is the demo mesh's application: an HTTP service that says which instance
// answered. Usage: backend -listen 127.0.0.1:8081 -name api-1 [-upstream http://127.0.0.1:9191
// [-upstream-path /hello]]
// With -upstream, each request to /call is forwarded to that URL plus -upstream-path (the local
// Ferry sidecar's outbound listener), and a request to /call/REST to that URL plus /REST; the
// answer is included, so the demo shows a call crossing sidecars. The trace context of the incoming request (W3C traceparent, tracestate
// and baggage; B3 single and multi header) is passed on to the outgoing call, as every
// application in a traced mesh must do for its sidecars' spans to join one trace.
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
	"strings"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/mtls"
)

// traceHeaders are the trace-context headers passed from a request to the call it makes.
var traceHeaders = []string{"Traceparent", "Tracestate", "Baggage", "B3",
	"X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags"}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	name := flag.String("name", "backend", "instance name in answers")
	upstream := flag.String("upstream", "", "URL of the local sidecar's outbound listener for /call")
	upstreamPath := flag.String("upstream-path", "/hello", "path /call requests on -upstream")
	flag.Parse()

	client := &http.Client{Timeout: 5 * time.Second}
	mux := http.NewServeMux()
	call := func(w http.ResponseWriter, r *http.Request) {
		if *upstream == "" {
			http.Error(w, "no -upstream configured", http.StatusNotFound)
			return
		}
		path := *upstreamPath
		if rest := strings.TrimPrefix(r.URL.EscapedPath(), "/call"); rest != "" {
			path = rest
		}
		req, _ := http.NewRequestWithContext(r.Context(), "GET", *upstream+path, nil)
		req.Header.Set("X-Request-Id", r.Header.Get("X-Request-Id"))
		for _, h := range traceHeaders {
			if v := r.Header.Values(h); len(v) > 0 {
				req.Header[h] = v
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(w, "%s called the api → %d %s", *name, resp.StatusCode, body)
	}
	mux.HandleFunc("/call", call)
	mux.HandleFunc("/call/", call)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (request %s, via %s, caller %s)\n", *name, r.Header.Get("X-Request-Id"),
			r.Header.Get("X-Forwarded-For"), caller(r))
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

// caller is the SPIFFE ID of the peer sidecar that called this instance, from the
// X-Forwarded-Client-Cert header its own sidecar set after verifying the peer's mTLS
// certificate (Ferry removes any such header a caller sends), or "none (plaintext)".
func caller(r *http.Request) string {
	v := r.Header.Get(mtls.XFCCHeader)
	if v == "" {
		return "none (plaintext)"
	}
	elems, err := mtls.ParseXFCC(v)
	if err != nil || len(elems) == 0 || elems[len(elems)-1].URI == "" {
		return v
	}
	return elems[len(elems)-1].URI
}
