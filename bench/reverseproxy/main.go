// Command reverseproxy is the benchmark's reference Go proxy: net/http's server with a plain
// httputil.ReverseProxy and one http.Transport, the setup DESIGN.md's performance notes
// quote. It speaks HTTP/1.1 and h2c downstream and the chosen protocol upstream, so Ferry is
// measured against what a Go proxy costs before any of Ferry's own work.
//
// Usage: reverseproxy -listen 127.0.0.1:19103 -upstream 127.0.0.1:19001 [-h2c]
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19103", "address to serve on")
	upstream := flag.String("upstream", "127.0.0.1:19001", "backend host:port")
	h2c := flag.Bool("h2c", false, "speak h2c (prior knowledge) to the backend")
	flag.Parse()

	var up http.Protocols
	if *h2c {
		up.SetUnencryptedHTTP2(true)
	} else {
		up.SetHTTP1(true)
	}
	target := &url.URL{Scheme: "http", Host: *upstream}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target); pr.SetXForwarded() },
		Transport: &http.Transport{Protocols: &up, MaxIdleConnsPerHost: 1024},
	}
	var down http.Protocols
	down.SetHTTP1(true)
	down.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: *listen, Handler: rp, Protocols: &down}
	log.Fatal(srv.ListenAndServe())
}
