package l7

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// parseRequest parses the request whose header section hdr (ending with its empty line)
// is at the front of br, with the checks net/http's server adds to http.ReadRequest. It
// also reports ambiguous framing (Transfer-Encoding with Content-Length, or on HTTP/1.0),
// which net/http accepts and the Handler refuses. A request the server must refuse comes
// back as an *h1Error.
func parseRequest(br *bufio.Reader, hdr []byte) (*http.Request, bool, error) {
	conflict := framingConflict(hdr)
	req, err := http.ReadRequest(br)
	if err != nil {
		if strings.Contains(err.Error(), "unsupported transfer encoding") {
			return nil, false, &h1Error{status: http.StatusNotImplemented, msg: "unsupported transfer encoding"}
		}
		return nil, false, &h1Error{status: http.StatusBadRequest, msg: requestErrorText(err)}
	}
	if req.ProtoMajor != 1 {
		return nil, false, &h1Error{status: http.StatusHTTPVersionNotSupported, msg: "unsupported protocol version"}
	}
	// http.ReadRequest removes the Host header field: count it in the raw section.
	hosts, host := hostFields(hdr)
	switch {
	case req.ProtoAtLeast(1, 1) && hosts == 0 && req.Method != http.MethodConnect:
		return nil, false, &h1Error{status: http.StatusBadRequest, msg: "missing required Host header"}
	case hosts > 1:
		return nil, false, &h1Error{status: http.StatusBadRequest, msg: "too many Host headers"}
	case hosts == 1 && !httpguts.ValidHostHeader(host):
		return nil, false, &h1Error{status: http.StatusBadRequest, msg: "malformed Host header"}
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, false, &h1Error{status: http.StatusBadRequest, msg: "invalid header name"}
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, false, &h1Error{status: http.StatusBadRequest, msg: "invalid header value"}
			}
		}
	}
	return req, conflict, nil
}

// hostFields counts the Host header fields of a header section and returns the value of
// the last one.
func hostFields(hdr []byte) (n int, value string) {
	first := true
	for len(hdr) > 0 {
		line := hdr
		if i := indexByte(hdr, '\n'); i >= 0 {
			line, hdr = hdr[:i], hdr[i+1:]
		} else {
			hdr = nil
		}
		if first {
			first = false
			continue
		}
		if len(line) >= 5 && strings.EqualFold(string(line[:5]), "host:") {
			n++
			value = strings.Trim(string(line[5:]), " \t\r")
		}
	}
	return n, value
}

// requestErrorText is the detail given for a request http.ReadRequest refused.
func requestErrorText(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "incomplete request"
	}
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return strings.ToValidUTF8(s, "?")
}

var scannerPool = sync.Pool{New: func() any { return new(guardConn) }}

// framingConflict runs the framing guard's scanner (see guardConn) over a complete header
// section.
func framingConflict(hdr []byte) bool {
	g := scannerPool.Get().(*guardConn)
	g.scanning, g.line, g.lineLen, g.sawCL, g.sawTE, g.http10, g.colonFound = true, 0, 0, false, false, false, false
	g.conflict.Store(false)
	g.scan(hdr)
	conflict := g.conflict.Load()
	scannerPool.Put(g)
	return conflict
}

// h1body is the request body handed to the handler: it answers Expect: 100-continue on
// the first read, tells the client-gone watch when the body has been read, and is drained
// or refused once the handler is done. Safe for concurrent use (a handler may read the
// body on another goroutine).
type h1body struct {
	mu     sync.Mutex
	c      *h1conn
	w      *h1response
	rc     io.ReadCloser
	expect bool // 100 Continue not sent yet
	eof    bool
	closed bool
}

func (b *h1body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.expect {
		b.expect = false
		b.w.writeContinue()
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
		b.c.bodyEOF()
	}
	return n, err
}

// Close marks the body closed for the handler; what is left is drained when the response
// is finished.
func (b *h1body) Close() error {
	return nil
}

// finish drains what the handler left unread (up to h1MaxDrain) and closes the body for
// good; false means the rest of the body could not be read and the connection cannot be
// reused.
func (b *h1body) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.eof
	}
	b.closed = true
	if b.eof || b.rc == nil {
		return true
	}
	if b.expect {
		return false // the client waits for 100 Continue: its body never comes
	}
	n, err := io.CopyN(io.Discard, b.rc, h1MaxDrain+1)
	if err == io.EOF && n <= h1MaxDrain {
		b.eof = true
		return true
	}
	return false
}

// shut ends the body's life with its request: later reads (a goroutine of the handler's
// that outlived it) fail rather than read the connection's next request.
func (b *h1body) shut() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}
