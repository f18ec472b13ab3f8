// Command backend is an HTTP backend the high-availability tests run as a separate process,
// so that a test can kill it outright (SIGKILL) in the middle of a load.
//
//	backend ADDR NAME
//
// It answers every request with NAME, and exits on its own after two minutes so that a
// test that dies cannot leave it behind.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: backend ADDR NAME")
		os.Exit(2)
	}
	addr, name := os.Args[1], os.Args[2]
	time.AfterFunc(2*time.Minute, func() { os.Exit(3) })
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, name)
		})}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
}
