package l7

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
)

// TestH1ServerUndeclaredTrailer checks that a handler sees the trailer fields of a chunked
// request body that announced none, as it does with net/http's server: the request the
// handler gets is the one the body fills in.
func TestH1ServerUndeclaredTrailer(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, string(b)+" "+r.Trailer.Get("X-U"))
	})
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) string
	}{
		{name: "H1Server", start: func(t *testing.T) string {
			addr, _ := startH1(t, ServerOptions{}, handler, nil)
			return addr
		}},
		{name: "net/http", start: func(t *testing.T) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: handler}
			go func() { _ = srv.Serve(ln) }()
			t.Cleanup(func() { _ = srv.Close() })
			return ln.Addr().String()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, tc.start(t))
			_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-U: uu\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if got, want := string(b), "abc uu"; got != want {
				t.Errorf("body = %q, want %q", got, want)
			}
		})
	}
}
