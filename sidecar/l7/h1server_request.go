package l7

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
)

// parseRequest parses the request whose header section hdr (ending with its empty line)
// is at the front of br (see parseRequestHead), consumes the section and sets the body to
// read the rest from br as http.ReadRequest would. It also reports ambiguous framing
// (Transfer-Encoding with Content-Length, or on HTTP/1.0), which net/http accepts and the
// Handler refuses. A request the server must refuse comes back as an *h1Error.
func parseRequest(br *bufio.Reader, hdr []byte) (*http.Request, bool, error) {
	return parseRequestReusing(br, hdr, nil)
}

// parseRequestReusing is parseRequest with the request storage of ru (see
// parseRequestHeadReusing).
func parseRequestReusing(br *bufio.Reader, hdr []byte, ru *requestReuse) (*http.Request, bool, error) {
	req, conflict, err := parseRequestHeadReusing(hdr, ru)
	if err != nil {
		return nil, false, err
	}
	if _, err := br.Discard(len(hdr)); err != nil {
		return nil, false, err
	}
	switch {
	case req.ContentLength < 0: // chunked
		req.Body = &reqChunkedBody{br: br, src: httputil.NewChunkedReader(br), req: req}
	case req.ContentLength > 0:
		req.Body = ru.lengthBody(br, req.ContentLength)
	default:
		req.Body = http.NoBody
	}
	return req, conflict, nil
}

// requestErrorText is the detail given for a request target or field the parser refused.
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
