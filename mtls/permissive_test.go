package mtls

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func permissive(t *testing.T, sniff time.Duration) (*PermissiveListener, *Store, *Store) {
	t.Helper()
	ca := newTestCA(t, testTD)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := storeWith(t, ca, issueSVID(t, ca, "api"))
	client := storeWith(t, ca, issueSVID(t, ca, "web"))
	return NewPermissiveListener(inner, ServerConfig(server, nil), sniff), server, client
}

func TestPermissiveAcceptsBoth(t *testing.T) {
	l, _, client := permissive(t, 0)
	stop := echoServer(t, l)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// mTLS: the echo is prefixed with the client's serial, so the server verified it.
	tc, err := (&Dialer{Source: client}).DialContext(ctx, "tcp", l.Addr().String(), svcID(t, testTD, "api"))
	if err != nil {
		t.Fatalf("mTLS dial error = %v", err)
	}
	defer tc.Close()
	m, _ := client.Current()
	if got, want := roundTrip(t, tc, bufio.NewReader(tc), "over tls"), FormatSerial(m.Leaf().SerialNumber)+" over tls"; got != want {
		t.Errorf("mTLS echo = %q, want %q", got, want)
	}

	// Plaintext: the first byte is not lost.
	pc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got := roundTrip(t, pc, bufio.NewReader(pc), "xover plain"); got != "plain xover plain" {
		t.Errorf("plaintext echo = %q, want %q", got, "plain xover plain")
	}
}

func TestPermissiveServerSpeaksFirst(t *testing.T) {
	l, _, _ := permissive(t, 50*time.Millisecond)
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		if _, ok := c.(*tls.Conn); ok {
			done <- errors.New("silent client classified as TLS")
			return
		}
		_, err = io.WriteString(c, "220 ready\n")
		done <- err
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "220 ready\n" {
		t.Errorf("greeting = %q, %v, want %q", line, err, "220 ready\n")
	}
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestPermissiveSlowClientDoesNotBlockAccept(t *testing.T) {
	l, _, _ := permissive(t, time.Minute)
	defer l.Close()
	silent, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// A client that connects and hangs up at once is dropped, not returned.
	gone, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = gone.Close()
	fast, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	if _, err := io.WriteString(fast, "hello\n"); err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   net.Conn
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		got <- result{c, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("Accept() error = %v", r.err)
		}
		defer r.c.Close()
		if r.c.RemoteAddr().String() != fast.LocalAddr().String() {
			t.Errorf("Accept() = connection from %s, want the one that spoke (%s)", r.c.RemoteAddr(), fast.LocalAddr())
		}
		line, err := bufio.NewReader(r.c).ReadString('\n')
		if err != nil || line != "hello\n" {
			t.Errorf("read %q, %v, want hello", line, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept() blocked behind a silent client")
	}
	// Closing with a client still being sniffed returns promptly.
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close() took %s with a connection being sniffed", d)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept() after Close error = %v, want net.ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

func TestPermissiveInnerClosed(t *testing.T) {
	l, _, _ := permissive(t, 0)
	defer l.Close()
	_ = l.inner.Close()
	for i := range 2 {
		errc := make(chan error, 1)
		go func() {
			_, err := l.Accept()
			errc <- err
		}()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Accept() #%d after the inner listener closed = %v, want net.ErrClosed", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Accept() #%d hangs after the inner listener closed", i)
		}
	}
}

func TestPrefixConnCopy(t *testing.T) {
	l, _, _ := permissive(t, 0)
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "first bytes"); err != nil {
		t.Fatal(err)
	}
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	// WriteTo (used by io.Copy) yields the sniffed byte, then the rest until EOF.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, sc); err != nil || buf.String() != "first bytes" {
		t.Errorf("io.Copy(from plaintext conn) = %q, %v, want %q", buf.String(), err, "first bytes")
	}
	// ReadFrom and CloseWrite reach the socket.
	if _, err := io.Copy(sc, io.LimitReader(strings.NewReader("reply"), 5)); err != nil {
		t.Fatal(err)
	}
	if err := sc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite() = %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "reply" {
		t.Errorf("client read %q, %v, want reply then EOF", got, err)
	}
	// A zero-length read does not consume the sniffed byte.
	pc := &prefixConn{Conn: sc, first: 'x', pending: true}
	if n, err := pc.Read(nil); n != 0 || err != nil || !pc.pending {
		t.Errorf("Read(nil) = %d, %v, pending %v; want 0, nil, still pending", n, err, pc.pending)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := (&prefixConn{Conn: a}).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite() on a pipe = %v, want ErrUnsupported", err)
	}
}

// TestPermissiveHTTP serves net/http on a permissive listener: h2 over mTLS with the
// caller's identity, and plaintext HTTP/1.1 without one.
func TestPermissiveHTTP(t *testing.T) {
	l, _, client := permissive(t, 0)
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := PeerID(r.TLS)
			if err != nil {
				fmt.Fprintf(w, "%s anonymous (%v)", r.Proto, err)
				return
			}
			fmt.Fprintf(w, "%s %s", r.Proto, id)
		}),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	defer func() {
		_ = srv.Close()
		<-done
	}()

	d := &Dialer{Source: client}
	mtlsTr := &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr, svcID(t, testTD, "api"))
		},
	}
	plainTr := &http.Transport{}
	defer mtlsTr.CloseIdleConnections()
	defer plainTr.CloseIdleConnections()
	for _, tt := range []struct {
		tr   *http.Transport
		url  string
		want string
	}{
		{mtlsTr, "https://" + l.Addr().String() + "/", "HTTP/2.0 spiffe://mesh.local/svc/web"},
		{plainTr, "http://" + l.Addr().String() + "/", "HTTP/1.1 anonymous (mtls: no peer certificate)"},
	} {
		resp, err := (&http.Client{Transport: tt.tr, Timeout: 10 * time.Second}).Get(tt.url)
		if err != nil {
			t.Fatalf("GET %s error = %v", tt.url, err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(body) != tt.want {
			t.Errorf("GET %s = %q, want %q", tt.url, body, tt.want)
		}
	}
}
