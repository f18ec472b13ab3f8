package l7

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
)

// Go's HTTP/1.1 server accepts a request carrying both Content-Length and
// Transfer-Encoding (it drops Content-Length and reads the chunked body), and it ignores
// Transfer-Encoding on HTTP/1.0 requests. Both are request-smuggling signatures: a proxy in
// front of Ferry may have framed the same bytes differently. RFC 9112 §6.1 and §6.3 allow a
// server to reject them, which is what Envoy and the issue ask for; but net/http hides the
// evidence from the handler. guardConn therefore scans the header section of each HTTP/1.x
// request as the server reads it (header bytes only: it stops at the blank line and starts
// again when the handler is done), and the handler rejects a flagged request with 400.
//
// Only the connection's own reader goroutine calls Read; the handler talks to it through
// atomics.
type guardConn struct {
	net.Conn

	conflict atomic.Bool // the last header section was ambiguous
	rearm    atomic.Bool // the handler finished: the next bytes start a request

	off        bool // HTTP/2 preface seen: nothing to scan
	scanning   bool // inside a header section
	pre        int  // bytes of the HTTP/2 preface matched so far; -1 once it cannot match
	total      int  // bytes read, counted up to len(preface)
	eof        bool // end the read stream: a complete request shorter than the preface
	line       int  // line number within the header section (0 = request line)
	lineLen    int
	name       [20]byte // lower-cased start of the current line
	lastBytes  [8]byte  // the last bytes of the request line
	sawCL      bool
	sawTE      bool
	http10     bool
	colonFound bool
}

// GuardConn wraps a downstream connection of an HTTP listener so that ambiguous request
// framing can be rejected; see Conflict.
func GuardConn(c net.Conn) net.Conn {
	return &guardConn{Conn: c, scanning: true}
}

type guardKey struct{}

// GuardContext is an http.Server ConnContext function that makes the connection's guard
// reachable from requests.
func GuardContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardConn); ok {
		return context.WithValue(ctx, guardKey{}, g)
	}
	return ctx
}

func guardFrom(ctx context.Context) *guardConn {
	g, _ := ctx.Value(guardKey{}).(*guardConn)
	return g
}

const preface = "PRI * HTTP/2.0"

func (g *guardConn) Read(p []byte) (int, error) {
	if g.eof {
		return 0, io.EOF
	}
	n, err := g.Conn.Read(p)
	if n > 0 && !g.off {
		if g.rearm.Swap(false) {
			g.scanning, g.line, g.lineLen, g.sawCL, g.sawTE, g.http10, g.colonFound = true, 0, 0, false, false, false, false
		}
		g.observe(p[:n])
	}
	return n, err
}

// observe feeds bytes read from the connection to the scanner.
func (g *guardConn) observe(b []byte) {
	for i := 0; g.pre >= 0 && g.pre < len(preface) && i < len(b); i++ {
		if b[i] == preface[g.pre] {
			g.pre++
		} else {
			g.pre = -1
		}
	}
	if g.pre == len(preface) {
		g.off = true // HTTP/2 has its own framing; the h2 server validates it
		return
	}
	if g.scanning {
		g.scan(b)
	}
	if g.total < len(preface) {
		g.total += len(b)
		// With h2c enabled, net/http waits for as many bytes as the HTTP/2 preface before it
		// parses HTTP/1, so a complete but short (hence malformed: no valid request line
		// fits) request would sit until read_header_timeout. Ending the stream here makes the
		// server parse what it has and answer 400 at once.
		if !g.scanning && g.total < len(preface) && g.pre < 0 {
			g.eof = true
		}
	}
}

// CloseWrite half-closes the connection, so that net/http can finish an error response
// (400, 431) with a clean close rather than a reset.
func (g *guardConn) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return g.Conn.Close()
}

func (g *guardConn) scan(b []byte) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '\n' {
			if g.line == 0 {
				g.http10 = string(g.lastBytes[:]) == "HTTP/1.0"
			} else if g.lineLen == 0 {
				// Blank line: the header section is complete.
				if g.sawTE && (g.sawCL || g.http10) {
					g.conflict.Store(true)
				}
				g.scanning = false
				return
			}
			g.line++
			g.lineLen = 0
			g.colonFound = false
			continue
		}
		if c == '\r' {
			continue
		}
		if g.line == 0 {
			// The request line: only its last bytes matter. Take them from the rest of
			// the line in b at once.
			end := len(b)
			if j := bytes.IndexByte(b[i:], '\n'); j >= 0 {
				end = i + j
			}
			g.requestLineTail(b[i:end])
			g.lineLen += end - i
			i = end - 1
			continue
		}
		if g.colonFound {
			// A header value: nothing to look at up to the end of the line.
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				return
			}
			i += j - 1
			continue
		}
		if g.lineLen == 0 {
			// The start of a header line: with the whole name in b (and no stray '\r' in
			// it), look at it at once.
			line := b[i:]
			if k := bytes.IndexByte(line, '\n'); k >= 0 {
				line = line[:k]
			}
			if j := bytes.IndexByte(line, ':'); j >= 0 && bytes.IndexByte(line[:j], '\r') < 0 {
				name := line[:j]
				g.sawCL = g.sawCL || len(name) == len("content-length") && asciiEqualFold(string(name), "content-length")
				g.sawTE = g.sawTE || len(name) == len("transfer-encoding") && asciiEqualFold(string(name), "transfer-encoding")
				g.colonFound = true
				g.lineLen = j + 1
				i += len(line) - 1 // the value needs no look either
				continue
			}
		}
		if c == ':' {
			g.colonFound = true
			switch string(g.name[:min(g.lineLen, len(g.name))]) {
			case "content-length":
				g.sawCL = g.sawCL || g.lineLen == len("content-length")
			case "transfer-encoding":
				g.sawTE = g.sawTE || g.lineLen == len("transfer-encoding")
			}
		} else if g.lineLen < len(g.name) {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			g.name[g.lineLen] = c
		}
		g.lineLen++
	}
}

// requestLineTail shifts the bytes of seg, a piece of the request line, but '\r', into
// lastBytes.
func (g *guardConn) requestLineTail(seg []byte) {
	const n = len(g.lastBytes)
	var tail [n]byte
	k := 0
	for j := len(seg) - 1; j >= 0 && k < n; j-- {
		if seg[j] != '\r' {
			k++
			tail[n-k] = seg[j]
		}
	}
	copy(g.lastBytes[:], g.lastBytes[k:])
	copy(g.lastBytes[n-k:], tail[n-k:])
}

// ReadFrom keeps the kernel's fast paths (sendfile, splice) when the server copies into the
// connection.
func (g *guardConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := g.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{g.Conn}, r)
}

// takeConflict reports whether the request being handled had ambiguous framing, and arms
// the scanner for the next request on the connection.
func (g *guardConn) takeConflict() bool {
	return g.conflict.Swap(false)
}

// requestDone tells the scanner that the next bytes start a new request.
func (g *guardConn) requestDone() { g.rearm.Store(true) }
