package l7

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rawPair returns a WithRawIO connection and the plain peer it is connected to.
func rawPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-acc
	if peer == nil {
		t.Fatal("accept failed")
	}
	rc := WithRawIO(c)
	if _, ok := rc.(*rawTCPConn); !ok {
		t.Fatalf("WithRawIO(*net.TCPConn) = %T, want *rawTCPConn", rc)
	}
	t.Cleanup(func() { rc.Close(); peer.Close() })
	return rc, peer
}

func TestRawIOReadWrite(t *testing.T) {
	c, peer := rawPair(t)
	if n, err := c.Write([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v, want 4, nil", n, err)
	}
	buf := make([]byte, 16)
	if n, err := io.ReadFull(peer, buf[:4]); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("peer read %q, %v, want ping", buf[:n], err)
	}
	// A read waits for data (the netpoller, not a busy loop) and returns what came.
	go func() {
		time.Sleep(20 * time.Millisecond)
		_, _ = peer.Write([]byte("pong"))
	}()
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("Read = %q, %v, want pong", buf[:n], err)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v, want 0, nil", n, err)
	}
	// The peer's close is io.EOF, as with *net.TCPConn.
	peer.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v, want 0, io.EOF", n, err)
	}
}

// A write larger than the socket buffers waits for the reader and writes all of it.
func TestRawIOLargeWrite(t *testing.T) {
	c, peer := rawPair(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(20 * time.Millisecond) // let the writer fill the buffers and wait
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.Write(payload)
	if n != len(payload) || err != nil {
		t.Fatalf("Write = %d, %v, want %d, nil", n, err, len(payload))
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("peer read %d bytes, want the %d written", len(b), len(payload))
	}
}

func TestRawIOErrors(t *testing.T) {
	t.Run("read deadline", func(t *testing.T) {
		c, _ := rawPair(t)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := c.Read(make([]byte, 8))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read past its deadline = %v, want a timeout wrapping os.ErrDeadlineExceeded", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("Read error = %#v, want a *net.OpError with Op read", err)
		}
	})
	t.Run("write deadline", func(t *testing.T) {
		c, _ := rawPair(t)
		_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		// Nobody reads: the buffers fill, then the deadline passes.
		_, err := c.Write(make([]byte, 64<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write past its deadline = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("close during read", func(t *testing.T) {
		c, _ := rawPair(t)
		var wg sync.WaitGroup
		wg.Add(1)
		var err error
		go func() {
			defer wg.Done()
			_, err = c.Read(make([]byte, 8))
		}()
		time.Sleep(20 * time.Millisecond)
		c.Close()
		wg.Wait()
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read cut by Close = %v, want net.ErrClosed", err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
		}
	})
	t.Run("reset by peer", func(t *testing.T) {
		c, peer := rawPair(t)
		_ = peer.(*net.TCPConn).SetLinger(0)
		peer.Close() // RST
		time.Sleep(20 * time.Millisecond)
		_, err := c.Read(make([]byte, 8))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Read after a reset = %v, want ECONNRESET", err)
		}
	})
}

func TestWithRawIOOtherConns(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := WithRawIO(a); got != a {
		t.Fatalf("WithRawIO(pipe) = %T, want the pipe itself", got)
	}
}

func BenchmarkRawIORoundTrip(b *testing.B) {
	for _, raw := range []bool{false, true} {
		name := "net"
		if raw {
			name = "raw"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				defer s.Close()
				_, _ = io.Copy(s, s)
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			if raw {
				c = WithRawIO(c)
			}
			defer c.Close()
			msg, buf := []byte("hello, world"), make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Concurrent writers (and readers) take turns: every message arrives whole, as on a
// *net.TCPConn, and the race detector sees no shared state unguarded.
func TestRawIOConcurrent(t *testing.T) {
	c, peer := rawPair(t)
	const writers, each = 4, 200
	msg := []byte("0123456789abcdef")
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := c.Write(msg); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
			}
		}()
	}
	got := make([]byte, writers*each*len(msg))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("peer read: %v", err)
	}
	wg.Wait()
	for i := 0; i < len(got); i += len(msg) {
		if !bytes.Equal(got[i:i+len(msg)], msg) {
			t.Fatalf("bytes %d..%d = %q, want %q: writes interleaved", i, i+len(msg), got[i:i+len(msg)], msg)
		}
	}
	// Two readers share what the peer sends; together they read all of it.
	go func() { _, _ = peer.Write(got) }()
	var mu sync.Mutex
	total := 0
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 100)
			for {
				mu.Lock()
				done := total >= len(got)
				mu.Unlock()
				if done {
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, err := c.Read(buf)
				mu.Lock()
				total += n
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if total != len(got) {
		t.Fatalf("readers got %d bytes, want %d", total, len(got))
	}
}
