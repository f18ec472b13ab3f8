// Command app is the application the end-to-end tests run beside Ferry with
// `ferry run --config FILE -- app ...`. Every mode first checks that Ferry was already ready
// when the app started, and exits 99 if not. It never runs longer than 20 seconds.
//
//	app ready ADMIN CODE
//	    exit CODE (after the readiness check).
//	app serve-until-term ADMIN URL CODE
//	    print "app: waiting for SIGTERM", then on SIGTERM check that Ferry's /ready now
//	    answers 503 (exit 97 if not) and that URL (through Ferry) still answers 200 (exit
//	    98 if not), and exit CODE.
//
// ADMIN is Ferry's admin host:port.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	go func() {
		time.Sleep(20 * time.Second)
		fmt.Println("app: gave up after 20s")
		os.Exit(96)
	}()
	// Catch SIGTERM at once: Ferry may pass it on as soon as the process exists.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if len(os.Args) < 4 {
		fmt.Println("app: usage: app ready ADMIN CODE | app serve-until-term ADMIN URL CODE")
		os.Exit(2)
	}
	mode, admin := os.Args[1], os.Args[2]
	client := &http.Client{Timeout: 5 * time.Second}
	if code, err := get(client, "http://"+admin+"/ready"); err != nil || code != http.StatusOK {
		fmt.Printf("app: started before Ferry was ready: /ready = %d, %v\n", code, err)
		os.Exit(99)
	}
	fmt.Println("app: ferry was ready when the app started")
	switch mode {
	case "ready":
		os.Exit(atoi(os.Args[3]))
	case "serve-until-term":
		if len(os.Args) != 5 {
			os.Exit(2)
		}
		url, code := os.Args[3], atoi(os.Args[4])
		fmt.Println("app: waiting for SIGTERM")
		<-term
		fmt.Println("app: got SIGTERM")
		if c, err := get(client, "http://"+admin+"/ready"); err != nil || c != http.StatusServiceUnavailable {
			fmt.Printf("app: during shutdown /ready = %d, %v; want 503\n", c, err)
			os.Exit(97)
		}
		if c, err := get(client, url); err != nil || c != http.StatusOK {
			fmt.Printf("app: during shutdown GET %s = %d, %v; want 200\n", url, c, err)
			os.Exit(98)
		}
		fmt.Println("app: ferry still served during shutdown; exiting", code)
		os.Exit(code)
	default:
		fmt.Println("app: unknown mode", mode)
		os.Exit(2)
	}
}

func get(c *http.Client, url string) (int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Println("app: bad exit code", s)
		os.Exit(2)
	}
	return n
}
