package l7

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"

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
	pr, ok := parseResponse(br, req)
	if !ok {
		return nil, false
	}
	return &pr.resp, true
}

// parseResponse is parseResponseHead, returning the response in the parsedResponse it
// allocates.
func parseResponse(br *bufio.Reader, req *http.Request) (_ *parsedResponse, ok bool) {
	if req.Method == http.MethodHead {
		return nil, false
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		return nil, false
	}
	head := buf[:end+2] // every line with its CRLF
	// Status line: "HTTP/1.1 " 3DIGIT [ " " reason ] CRLF.
	eol := bytes.IndexByte(head, '\n')
	line := head[:eol]
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
	// Header fields: count them first, to size the map and the values at once.
	fields := head[eol+1:]
	n := bytes.Count(fields, []byte("\n"))
	s := string(head) // the one allocation all strings below are cut from
	// The response, its body and the values of a few fields in one allocation.
	pr := &parsedResponse{resp: http.Response{
		Status: s[9:len(line)], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: make(http.Header, n), Request: req, ContentLength: -1,
	}}
	resp := &pr.resp
	var values []string
	if n <= len(pr.values) {
		values = pr.values[:n]
	} else {
		values = make([]string, n)
	}
	// Up to len(seen) keys are checked for repeats against the ones before them, not with a
	// map lookup; the map is consulted only for a repeated key or a longer head.
	var seen [16]string
	nseen := 0
	cl := ""
	off := eol + 1
	for off < len(head) {
		i := bytes.IndexByte(head[off:], '\n')
		if i < 1 || head[off+i-1] != '\r' {
			return nil, false
		}
		line := head[off : off+i-1]
		lineStart := off
		off += i + 1
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			return nil, false // continuation lines and the like
		}
		// The name: token bytes up to the colon, noting whether it is canonical on the way.
		colon, canonical, upper := -1, true, true
		for j, c := range line {
			if c == ':' {
				colon = j
				break
			}
			cls := byteClass[c]
			if cls&cToken == 0 {
				return nil, false
			}
			if upper && cls&cLower != 0 || !upper && cls&cUpper != 0 {
				canonical = false
			}
			upper = c == '-'
		}
		if colon <= 0 {
			return nil, false
		}
		vs, ve := colon+1, len(line)
		for _, c := range line[vs:] {
			if byteClass[c]&cValue == 0 {
				return nil, false
			}
		}
		for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
			ve--
		}
		key := s[lineStart : lineStart+colon]
		if !canonical {
			key = textproto.CanonicalMIMEHeaderKey(key)
		}
		value := s[lineStart+vs : lineStart+ve]
		switch key {
		case "Transfer-Encoding", "Trailer", "Pragma":
			return nil, false
		case "Connection":
			if containsToken([]string{value}, "close") {
				return nil, false
			}
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
	_, _ = br.Discard(end + 4)
	resp.ContentLength = length
	if length == 0 {
		resp.Body = http.NoBody
	} else {
		pr.body = lengthBody{br: br, left: length}
		resp.Body = &pr.body
	}
	return pr, true
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
	for i := 0; i < len(v); i++ {
		if byteClass[v[i]]&cValue == 0 {
			return false
		}
	}
	return true
}

// parsedResponse is what parseResponse allocates for a response, but its head's string
// and header map: the response, its body, the values of up to 8 fields, and the h1Body
// the round trip wraps the body in.
type parsedResponse struct {
	resp   http.Response
	body   lengthBody
	values [8]string
	h1     h1Body
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
