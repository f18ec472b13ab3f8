package mtls

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// DefaultSniffTimeout is how long a permissive listener waits for a client's first byte
// before treating the connection as plaintext from a client that waits for the server to
// speak first (MySQL, SMTP, …). A TLS client sends its ClientHello at once.
const DefaultSniffTimeout = time.Second

// recordTypeHandshake is the first byte of every TLS connection: the record type of the
// ClientHello.
const recordTypeHandshake = 0x16

// PermissiveListener accepts mTLS and plaintext on one port (`mtls.mode: permissive`,
// for migrating a mesh to mTLS). It looks at the first byte each client sends, without
// consuming it: a TLS handshake record (0x16) makes the connection a *tls.Conn using the
// server config (handshake not yet done, as with tls.NewListener); anything else, or
// silence for the sniff timeout, makes it a plaintext net.Conn that still yields that
// byte first. Sniffing runs on its own goroutine per connection, so a slow client never
// holds up Accept. Plaintext connections have no peer identity (PeerIDFromConn reports
// ErrNoPeerID). Safe for concurrent use.
type PermissiveListener struct {
	inner        net.Listener
	config       *tls.Config
	sniffTimeout time.Duration

	conns chan net.Conn
	errs  chan error
	done  chan struct{}
	stop  func() // closes done, once
	once  sync.Once
	wg    sync.WaitGroup

	mu       sync.Mutex // guards sniffing
	sniffing map[net.Conn]struct{}
}

var _ net.Listener = (*PermissiveListener)(nil)

// NewPermissiveListener starts accepting on inner. sniffTimeout 0 means
// DefaultSniffTimeout. Close the returned listener to stop (it closes inner).
func NewPermissiveListener(inner net.Listener, config *tls.Config, sniffTimeout time.Duration) *PermissiveListener {
	if sniffTimeout <= 0 {
		sniffTimeout = DefaultSniffTimeout
	}
	l := &PermissiveListener{
		inner:        inner,
		config:       config,
		sniffTimeout: sniffTimeout,
		conns:        make(chan net.Conn),
		errs:         make(chan error),
		done:         make(chan struct{}),
		sniffing:     map[net.Conn]struct{}{},
	}
	l.stop = sync.OnceFunc(func() { close(l.done) })
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Accept returns the next connection: a *tls.Conn or a plaintext net.Conn.
func (l *PermissiveListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: l.inner.Addr().Network(), Addr: l.inner.Addr(), Err: net.ErrClosed}
	}
}

// Close closes the inner listener and every connection not yet returned by Accept, and
// waits for the listener's goroutines to finish. Connections already returned stay open.
func (l *PermissiveListener) Close() error {
	var err error
	l.once.Do(func() {
		l.stop()
		err = l.inner.Close()
		l.mu.Lock()
		for c := range l.sniffing {
			_ = c.SetReadDeadline(time.Unix(1, 0))
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

// Addr is the inner listener's address.
func (l *PermissiveListener) Addr() net.Addr { return l.inner.Addr() }

func (l *PermissiveListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.inner.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				// Closed under us: later Accepts report it too.
				l.stop()
				return
			}
			continue
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			_ = c.Close()
			return
		default:
		}
		l.sniffing[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Add(1)
		go l.sniff(c)
	}
}

func (l *PermissiveListener) sniff(c net.Conn) {
	defer l.wg.Done()
	out := l.classify(c)
	l.mu.Lock()
	delete(l.sniffing, c)
	l.mu.Unlock()
	if out == nil {
		_ = c.Close()
		return
	}
	select {
	case l.conns <- out:
	case <-l.done:
		_ = c.Close()
	}
}

// classify returns c as a TLS or plaintext connection, or nil if it should be dropped.
func (l *PermissiveListener) classify(c net.Conn) net.Conn {
	if err := c.SetReadDeadline(time.Now().Add(l.sniffTimeout)); err != nil {
		return nil
	}
	var b [1]byte
	n, err := c.Read(b[:])
	select {
	case <-l.done:
		return nil
	default:
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return nil
	}
	if n == 1 {
		pc := &prefixConn{Conn: c, first: b[0], pending: true}
		if b[0] == recordTypeHandshake {
			return tls.Server(pc, l.config)
		}
		return pc
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		// A client waiting for the server to speak first.
		return c
	}
	return nil
}

// prefixConn is a connection whose first byte has already been read from the socket and
// is returned by the first Read.
type prefixConn struct {
	net.Conn
	first   byte
	pending bool
}

// Read returns the sniffed byte first, then reads from the connection.
func (c *prefixConn) Read(p []byte) (int, error) {
	if c.pending {
		if len(p) == 0 {
			return 0, nil
		}
		p[0], c.pending = c.first, false
		return 1, nil
	}
	return c.Conn.Read(p)
}

// WriteTo copies the rest of the connection to w, letting a TCP connection use splice.
func (c *prefixConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if c.pending {
		if _, err := w.Write([]byte{c.first}); err != nil {
			return 0, err
		}
		c.pending, n = false, 1
	}
	m, err := io.Copy(w, c.Conn)
	return n + m, err
}

// ReadFrom copies r to the connection, letting a TCP connection use splice or sendfile.
func (c *prefixConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }

// CloseWrite half-closes the connection if it supports that (TCP does).
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
