package l7

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net/http"
	"net/textproto"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// parseResponseHead parses the most common response head, already buffered in br in full:
// "HTTP/1.1 <200-599 but 204 and 304> <reason>", then header fields each on one line, one
// Content-Length and no Transfer-Encoding, Trailer, Pragma or "Connection: close", for a
// request other than HEAD. It returns what http.ReadResponse would return for it (the
// fuzz test compares them), with one string for the whole head that the status, keys and
// values are cut from, and ok. For anything else it consumes nothing and returns ok ==
// false: http.ReadResponse reads it.
func parseResponseHead(br *bufio.Reader, req *http.Request) (_ *http.Response, ok bool) {
	pr, ok := parseResponse(br, req, nil)
	if !ok {
		return nil, false
	}
	return &pr.resp, true
}

// parseResponse is parseResponseHead, returning the response in pr, a parsedResponse
// recycled (see reset) by an earlier response, or in one it allocates if pr is nil. When it
// declines, pr may hold part of the response: reset it before using it again.
func parseResponse(br *bufio.Reader, req *http.Request, pr *parsedResponse) (_ *parsedResponse, ok bool) {
	if req.Method == http.MethodHead {
		return nil, false
	}
	buf, _ := br.Peek(br.Buffered())
	// Status line: "HTTP/1.1 " 3DIGIT [ " " reason ] CRLF.
	eol := bytes.IndexByte(buf, '\n')
	if eol < 0 {
		return nil, false
	}
	line := buf[:eol]
	if len(line) < len("HTTP/1.1 200\r") || string(line[:9]) != "HTTP/1.1 " || line[len(line)-1] != '\r' {
		return nil, false
	}
	line = line[:len(line)-1]
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return nil, false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified ||
		len(line) > 12 && line[12] != ' ' {
		return nil, false
	}
	for _, c := range line[12:] {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, false
		}
	}
	// Header fields: find the end of each line, up to the empty line ending the head, to
	// size the map and the values at once. Every line must end in CRLF.
	var ends [24]int // where the LF of each of the first fields is
	n := 0
	end := eol + 1 // the empty line, once found
	for {
		i := bytes.IndexByte(buf[end:], '\n')
		if i < 0 {
			return nil, false // not all there (or no head at all)
		}
		if i < 1 || buf[end+i-1] != '\r' {
			return nil, false
		}
		if i == 1 {
			break
		}
		if n < len(ends) {
			ends[n] = end + i
		}
		n++
		end += i + 1
	}
	head := buf[:end] // every line with its CRLF
	// The head's string, which all strings below are cut from, and the array of the
	// values: new for every response (usually one allocation, see newHead), as the caller
	// keeps values and strings (the forwarder puts them in the client's header) past the
	// point where pr is recycled. The response, its body and its header map come from pr
	// when it is recycled.
	s, values := newHead(head, n)
	if pr == nil {
		pr = new(parsedResponse)
	}
	hdr := pr.resp.Header
	if hdr == nil {
		hdr = make(http.Header, n)
	}
	pr.resp = http.Response{
		Status: s[9:len(line)], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: hdr, Request: req, ContentLength: -1,
	}
	pr.hop = 0
	resp := &pr.resp
	// Up to len(seen) keys are checked for repeats against the ones before them, not with a
	// map lookup; the map is consulted only for a repeated key or a longer head.
	var seen [16]string
	nseen := 0
	cl := ""
	off := eol + 1
	for f := 0; f < n; f++ {
		lf := 0
		if f < len(ends) {
			lf = ends[f]
		} else {
			lf = off + bytes.IndexByte(head[off:], '\n') // checked above
		}
		line := head[off : lf-1]
		lineStart := off
		off = lf + 1
		if line[0] == ' ' || line[0] == '\t' {
			return nil, false // continuation lines and the like
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, false
		}
		key := s[lineStart : lineStart+colon]
		if !knownKey(key) {
			// The name: token bytes, canonical or not.
			canonical, upper := true, true
			for _, c := range line[:colon] {
				cls := byteClass[c]
				if cls&cToken == 0 {
					return nil, false
				}
				if upper && cls&cLower != 0 || !upper && cls&cUpper != 0 {
					canonical = false
				}
				upper = c == '-'
			}
			if !canonical {
				key = textproto.CanonicalMIMEHeaderKey(key)
			}
		}
		vs, ve := colon+1, len(line)
		if !validFieldValueBytes(line[vs:]) {
			return nil, false
		}
		for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
			ve--
		}
		value := s[lineStart+vs : lineStart+ve]
		switch key {
		case "Transfer-Encoding", "Trailer", "Pragma":
			return nil, false
		case "Connection":
			if value != "keep-alive" && containsToken([]string{value}, "close") {
				return nil, false
			}
			pr.hop |= 1 << 0
		case "Proxy-Connection":
			pr.hop |= 1 << 1
		case "Keep-Alive":
			pr.hop |= 1 << 2
		case "Proxy-Authenticate":
			pr.hop |= 1 << 3
		case "Proxy-Authorization":
			pr.hop |= 1 << 4
		case "Te":
			pr.hop |= 1 << 5
		case "Upgrade":
			pr.hop |= 1 << 6
		}
		dup := false
		if nseen < len(seen) {
			for _, k := range seen[:nseen] {
				if k == key {
					dup = true
					break
				}
			}
			seen[nseen] = key
			nseen++
		} else {
			_, dup = resp.Header[key]
		}
		if dup {
			if key == "Content-Length" {
				return nil, false
			}
			resp.Header[key] = append(resp.Header[key], value)
			continue
		}
		if key == "Content-Length" {
			cl = value
		}
		values[0] = value
		resp.Header[key], values = values[:1:1], values[1:]
	}
	if len(cl) == 0 || len(cl) > 18 {
		return nil, false
	}
	var length int64
	for _, c := range []byte(cl) {
		if c < '0' || c > '9' {
			return nil, false
		}
		length = length*10 + int64(c-'0')
	}
	_, _ = br.Discard(end + 2)
	resp.ContentLength = length
	if length == 0 {
		resp.Body = http.NoBody
	} else {
		pr.body = lengthBody{br: br, left: length}
		resp.Body = &pr.body
	}
	return pr, true
}

// A response head and the values of its fields, in one allocation: the head's bytes,
// copied once and never written again, are what the string of the head points to, and the
// values (strings cut from it) are the array the header's value slices share. Four sizes,
// each filling a size class of the allocator; a head that fits none takes two
// allocations (a string and an array).
type (
	head4 struct {
		values [4]string
		buf    [128]byte
	}
	head8 struct {
		values [8]string
		buf    [256]byte
	}
	head12 struct {
		values [12]string
		buf    [512]byte
	}
	head16 struct {
		values [16]string
		buf    [1024]byte
	}
)

// newHead returns a string holding a copy of head, and an array for the values of its n
// fields, usually in one allocation (see head4).
func newHead(head []byte, n int) (string, []string) {
	switch l := len(head); {
	case n <= 4 && l <= 128:
		h := new(head4)
		return copyHead(h.buf[:], head), h.values[:n:n]
	case n <= 8 && l <= 256:
		h := new(head8)
		return copyHead(h.buf[:], head), h.values[:n:n]
	case n <= 12 && l <= 512:
		h := new(head12)
		return copyHead(h.buf[:], head), h.values[:n:n]
	case n <= 16 && l <= 1024:
		h := new(head16)
		return copyHead(h.buf[:], head), h.values[:n:n]
	}
	return string(head), make([]string, n)
}

// copyHead copies head (not empty) into buf, which nothing writes afterwards, and returns
// it as a string sharing buf.
func copyHead(buf, head []byte) string {
	n := copy(buf, head)
	return unsafe.String(&buf[0], n)
}

// Classes of bytes in byteClass.
const (
	cToken = 1 << iota // tchar (RFC 9110 §5.6.2): a byte of a field name
	cValue             // a byte of a field value as textproto takes it: HTAB, SP, VCHAR, obs-text
	cUpper             // 'A' to 'Z'
	cLower             // 'a' to 'z'
)

// byteClass holds the classes of each byte, so that a head's bytes are checked with one
// table load each. It is never written after initialization.
var byteClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		if c < 0x80 && httpguts.IsTokenRune(rune(c)) {
			t[c] |= cToken
		}
		if c == '\t' || c >= ' ' && c != 0x7f {
			t[c] |= cValue
		}
		if 'A' <= c && c <= 'Z' {
			t[c] |= cUpper
		}
		if 'a' <= c && c <= 'z' {
			t[c] |= cLower
		}
	}
	return t
}()

// validFieldName is httpguts.ValidHeaderFieldName: a non-empty token.
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if byteClass[k[i]]&cToken == 0 {
			return false
		}
	}
	return true
}

// validFieldValue is httpguts.ValidHeaderFieldValue: no control bytes but HTAB.
func validFieldValue(v string) bool {
	for len(v) >= 8 {
		if ctlIn8(uint64(v[0]) | uint64(v[1])<<8 | uint64(v[2])<<16 | uint64(v[3])<<24 |
			uint64(v[4])<<32 | uint64(v[5])<<40 | uint64(v[6])<<48 | uint64(v[7])<<56) {
			break // a control byte or HTAB somewhere: byte by byte from here
		}
		v = v[8:]
	}
	for i := 0; i < len(v); i++ {
		if byteClass[v[i]]&cValue == 0 {
			return false
		}
	}
	return true
}

// validFieldValueBytes is validFieldValue for bytes.
func validFieldValueBytes(v []byte) bool {
	for len(v) >= 8 {
		if ctlIn8(binary.LittleEndian.Uint64(v)) {
			break
		}
		v = v[8:]
	}
	for _, c := range v {
		if byteClass[c]&cValue == 0 {
			return false
		}
	}
	return true
}

// ctlIn8 reports whether one of the 8 bytes of x may be a control byte (below 0x20, HTAB
// included, or 0x7f). It has no false negatives: a byte below 0x20 sets the high bit of
// its lane in x-0x20.. (a borrow only ever comes from such a lane, lower down), and 0x7f
// is a zero lane of x^0x7f...
func ctlIn8(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	y := x ^ 0x7f*ones
	return ((x-0x20*ones)&^x|(y-ones)&^y)&highs != 0
}

// knownKey reports whether k is one of the canonical names of common response fields
// (which are valid and need no canonicalization).
func knownKey(k string) bool {
	switch k {
	case "Server", "Date", "Content-Type", "Content-Length", "Connection", "Keep-Alive",
		"Cache-Control", "Etag", "Last-Modified", "Expires", "Vary", "Location", "Set-Cookie",
		"Accept-Ranges", "Age", "Content-Encoding", "Access-Control-Allow-Origin",
		"Strict-Transport-Security", "X-Content-Type-Options", "Via", "Alt-Svc", "X-Request-Id",
		"Grpc-Status", "Grpc-Message":
		return true
	}
	return false
}

// parsedResponse is what parseResponse fills for a response, but its head's string and the
// array of its values: the response with its header map, its body, and the h1Body the
// round trip wraps the body in. Ferry's HTTP/1.1 pool recycles it per connection once the
// caller is done with the response (h1Body.recycle).
type parsedResponse struct {
	resp http.Response
	body lengthBody
	h1   h1Body
	// hop has bit i set when the head has the field hopFields[i] (the hop-by-hop fields
	// but Trailer and Transfer-Encoding, which parseResponse leaves to http.ReadResponse).
	hop uint8
}

// hopFields are the hop-by-hop fields (hopHeader) a parsedResponse notes in its hop, in
// the order of its bits; Connection comes first.
var hopFields = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Upgrade"}

// maxKeptResponseHeader is the most fields a recycled parsedResponse's header map may have
// had to be kept: a larger one is dropped with the response it came with.
const maxKeptResponseHeader = 32

// reset makes pr ready for another response: its header map emptied (or dropped if large),
// the rest zeroed, so that it keeps nothing of the last response (strings, the request,
// the connection). The values of the last response, which the caller may still hold, are
// not pr's and stay as they are.
func (pr *parsedResponse) reset() {
	h := pr.resp.Header
	if len(h) > maxKeptResponseHeader {
		h = nil
	} else {
		clear(h)
	}
	*pr = parsedResponse{}
	pr.resp.Header = h
}

// lengthBody is a response body of a known length read from br: io.ErrUnexpectedEOF if
// the connection ends before, io.EOF with its last bytes.
type lengthBody struct {
	br   *bufio.Reader
	left int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }
