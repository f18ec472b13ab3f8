package l7

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// parseRequestHead builds the request whose complete header section (request line, header
// fields, empty line) is hdr, with the observable result of http.ReadRequest (Method,
// RequestURI, URL, Proto, Header, Host, Close, ContentLength, TransferEncoding, Trailer)
// and the checks net/http's server adds to it (Host count and syntax, field names), in one
// pass over hdr. It also reports ambiguous framing (Transfer-Encoding with Content-Length,
// or on HTTP/1.0), which net/http accepts and the Handler refuses; see guardConn. The body
// is not set: see parseRequest. A request the server must refuse comes back as an
// *h1Error with the status today's server gives it (400, 501 for a transfer coding other
// than chunked, 505 for a version other than 1.x).
//
// The head is copied once: the header names are put in canonical form in that copy, which
// then becomes one string that the method, target, names and values are substrings of.
// Safe to call concurrently (it only reads hdr).
func parseRequestHead(hdr []byte) (*http.Request, bool, error) {
	return parseRequestHeadReusing(hdr, nil)
}

// maxReusedHeader is the largest header map (in entries) a connection clears for its next
// request; a larger one is left to the garbage collector (clearing costs its capacity).
const maxReusedHeader = 32

// requestReuse is the storage of a request that a connection fills again for its next
// request instead of allocating: the request with its URL and small values, and its
// header map. The zero value holds nothing yet. It is not safe for concurrent use.
type requestReuse struct {
	a  *requestAlloc
	h  http.Header
	lb reqLengthBody // the body of a request with a Content-Length
}

// lengthBody returns the body of a request with a Content-Length of n, read from br: ru's,
// reset, or a new one for a nil ru. The server's handlers never see it (they read the
// connection's h1body, which reads it and is shut when the request ends), so nothing
// reaches it once the next request is parsed.
func (ru *requestReuse) lengthBody(br *bufio.Reader, n int64) *reqLengthBody {
	if ru == nil {
		return &reqLengthBody{lr: io.LimitedReader{R: br, N: n}}
	}
	ru.lb = reqLengthBody{lr: io.LimitedReader{R: br, N: n}}
	return &ru.lb
}

// alloc returns the request storage, zeroed (new the first time).
func (ru *requestReuse) alloc() *requestAlloc {
	if ru == nil {
		return new(requestAlloc)
	}
	if ru.a == nil {
		ru.a = new(requestAlloc)
	} else {
		*ru.a = requestAlloc{}
	}
	return ru.a
}

// header returns an empty header map for n fields: the previous one cleared, unless it
// grew past maxReusedHeader entries. A new one is sized for the n fields and the
// X-Request-Id the proxy may add: up to 8 entries that is a map of one group, which clear
// empties at a fraction of the cost of a table of several groups (what a larger hint
// makes); a connection whose requests have more fields grows it once.
func (ru *requestReuse) header(n int) http.Header {
	if ru == nil {
		return make(http.Header, n)
	}
	if ru.h == nil || len(ru.h) > maxReusedHeader {
		ru.h = make(http.Header, n+1)
	} else {
		clear(ru.h)
	}
	return ru.h
}

// parseRequestHeadReusing is parseRequestHead filling the request and header map of ru
// (nil: new ones). The head's copy is new in any case: strings cut from it (rate-limit
// keys, access-log fields, route labels) outlive the request.
func parseRequestHeadReusing(hdr []byte, ru *requestReuse) (*http.Request, bool, error) {
	buf := make([]byte, len(hdr))
	copy(buf, hdr)

	// The request line.
	eol := bytes.IndexByte(buf, '\n')
	if eol < 0 {
		return nil, false, errIncompleteRequest
	}
	line := trimEOL(buf[:eol])
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return nil, false, badRequest("malformed HTTP request")
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return nil, false, badRequest("malformed HTTP request")
	}
	sp2 += sp1 + 1
	if !isTokenBytes(line[:sp1]) {
		return nil, false, badRequest("invalid method")
	}
	proto := line[sp2+1:]
	major, minor, ok := parseHTTPVersion(proto)
	if !ok {
		return nil, false, badRequest("malformed HTTP version")
	}
	http10 := string(proto) == "HTTP/1.0"

	// The header fields: check them and canonicalise their names in buf, before buf
	// becomes a string.
	var stack [24]headField
	fields := stack[:0]
	var (
		spacedName   bool // a name with a space: http.ReadRequest takes it, net/http's server does not
		hosts        int
		hostField    = -1 // the index in fields of the Host line
		host0, host1 int  // the raw value of the last Host line, for the server's syntax check
		sawCL, sawTE bool
		sawConn      bool
		sawTrailer   bool
		sawPragma    bool
		folded       bool
	)
	firstField, complete := true, false
	pos := eol + 1
	for pos < len(buf) {
		eol = bytes.IndexByte(buf[pos:], '\n')
		if eol < 0 {
			return nil, false, errIncompleteRequest
		}
		eol += pos
		l0, l1 := pos, pos+len(trimEOL(buf[pos:eol]))
		pos = eol + 1
		if l0 == l1 {
			complete = true // the empty line
			break
		}
		c := buf[l0]
		if c == ' ' || c == '\t' {
			if firstField {
				return nil, false, badRequest("malformed MIME header initial line")
			}
			// obs-fold: textproto joins the line to the field before it with one space.
			f := &fields[len(fields)-1]
			if f.fold == nil {
				fold := append([]byte(nil), buf[f.v0:f.v1]...)
				f.fold, folded = &fold, true
			}
			t0, t1 := trimSpace(buf, l0, l1)
			*f.fold = append(append(*f.fold, ' '), buf[t0:t1]...)
			continue
		}
		firstField = false
		colon := bytes.IndexByte(buf[l0:l1], ':')
		if colon < 0 {
			return nil, false, badRequest("malformed MIME header: missing colon")
		}
		k0, k1 := l0, l0+colon
		spaced, ok := canonicalizeName(buf[k0:k1])
		if !ok {
			return nil, false, badRequest("malformed MIME header line")
		}
		spacedName = spacedName || spaced
		v0, v1 := trimSpace(buf, k1+1, l1)
		fields = append(fields, headField{k0: k0, k1: k1, v0: v0, v1: v1})
		if spaced {
			continue
		}
		switch string(buf[k0:k1]) {
		case "Host":
			hosts++
			hostField = len(fields) - 1
			host0, host1 = k1+1, eol
		case "Content-Length":
			sawCL = true
		case "Transfer-Encoding":
			sawTE = true
		case "Connection":
			sawConn = true
		case "Trailer":
			sawTrailer = true
		case "Pragma":
			sawPragma = true
		}
	}
	if !complete {
		return nil, false, errIncompleteRequest
	}
	if folded {
		// textproto checks a folded value as a whole (a bare CR is in neither the value
		// nor the fold).
		for i := range fields {
			if f := &fields[i]; f.fold != nil && !validFieldValueBytes(*f.fold) {
				return nil, false, badRequest("malformed MIME header line")
			}
		}
	}
	for i := range fields {
		if f := &fields[i]; f.fold == nil && !validFieldValueBytes(buf[f.v0:f.v1]) {
			return nil, false, badRequest("malformed MIME header line")
		}
	}
	if hosts > 1 {
		return nil, false, badRequest("too many Host headers")
	}

	// buf is final: the strings below share it.
	s := unsafe.String(unsafe.SliceData(buf), len(buf))
	method, target, protoStr := s[:sp1], s[sp1+1:sp2], s[sp2+1:sp2+1+len(proto)]

	a := ru.alloc()
	req := &a.req
	req.Method, req.RequestURI, req.Proto, req.ProtoMajor, req.ProtoMinor = method, target, protoStr, major, minor
	if !parseOriginForm(target, &a.url) {
		justAuthority := method == http.MethodConnect && !strings.HasPrefix(target, "/")
		raw := target
		if justAuthority {
			raw = "http://" + target
		}
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			return nil, false, badRequest(requestErrorText(err))
		}
		if justAuthority {
			u.Scheme = ""
		}
		a.url = *u
	}
	req.URL = &a.url

	h := ru.header(len(fields))
	values := a.values[:]
	if len(fields) > len(values) {
		values = make([]string, len(fields))
	}
	// The Host line (one at most, checked above) becomes req.Host and never enters the
	// map, which http.ReadRequest would delete it from. A repeated name is found by
	// comparing with the names of up to dupScan lines before it, then with a map lookup.
	const dupScan = 24
	hostValue := ""
	for i := range fields {
		f := &fields[i]
		k := s[f.k0:f.k1]
		v := s[f.v0:f.v1]
		if f.fold != nil {
			// textproto trims the start of the joined value, which starts with a space
			// when the first line's value is empty.
			v = string(bytes.TrimLeft(*f.fold, " \t"))
		}
		if i == hostField {
			hostValue = v
			continue
		}
		dup := false
		if i < dupScan {
			for j := range fields[:i] {
				if g := &fields[j]; j != hostField && g.k1-g.k0 == len(k) && s[g.k0:g.k1] == k {
					dup = true
					break
				}
			}
		} else {
			_, dup = h[k]
		}
		if dup {
			h[k] = append(h[k], v)
		} else {
			values[i] = v
			h[k] = values[i : i+1 : i+1]
		}
	}
	req.Header = h

	req.Host = req.URL.Host
	if req.Host == "" && hosts > 0 {
		req.Host = hostValue
	}
	if sawPragma {
		if hp := h["Pragma"]; len(hp) > 0 && hp[0] == "no-cache" {
			if _, ok := h["Cache-Control"]; !ok {
				h["Cache-Control"] = []string{"no-cache"}
			}
		}
	}
	var conn []string
	if sawConn {
		conn = h["Connection"]
	}
	req.Close = shouldCloseRequest(major, minor, conn)

	// Framing, as http.ReadRequest's readTransfer does it.
	chunked := false
	if sawTE {
		te := h["Transfer-Encoding"]
		delete(h, "Transfer-Encoding")
		// http.ReadRequest reads "HTTP/0.0" as 1.1 here.
		if major > 1 || major == 1 && minor >= 1 || major == 0 && minor == 0 {
			if len(te) != 1 {
				return nil, false, badRequest(fmt.Sprintf("too many transfer encodings: %q", te))
			}
			if !asciiEqualFold(te[0], "chunked") {
				return nil, false, &h1Error{status: http.StatusNotImplemented, msg: "unsupported transfer encoding"}
			}
			chunked = true
		}
	}
	req.ContentLength = 0
	if sawCL {
		// Values are trimmed already but for a space a fold can leave at the end.
		cl := h["Content-Length"]
		first := textproto.TrimString(cl[0])
		if len(cl) > 1 {
			for _, v := range cl[1:] {
				if textproto.TrimString(v) != first {
					return nil, false, badRequest("http: message cannot contain multiple Content-Length headers")
				}
			}
			h["Content-Length"] = []string{first}
		}
		if first == "" {
			return nil, false, badRequest(`invalid empty Content-Length ""`)
		}
		n, err := strconv.ParseUint(first, 10, 63)
		if err != nil {
			return nil, false, badRequest(requestErrorText(fmt.Errorf("bad Content-Length %q", first)))
		}
		req.ContentLength = int64(n)
	}
	if chunked {
		delete(h, "Content-Length")
		req.ContentLength = -1
		req.TransferEncoding = []string{"chunked"} // the request's own: a handler may change it
		if sawTrailer {
			t, err := declaredTrailer(h)
			if err != nil {
				return nil, false, err
			}
			req.Trailer = t
		}
	}

	// What net/http's server checks on top of http.ReadRequest.
	if major != 1 {
		return nil, false, &h1Error{status: http.StatusHTTPVersionNotSupported, msg: "unsupported protocol version"}
	}
	switch {
	case req.ProtoAtLeast(1, 1) && hosts == 0 && method != http.MethodConnect:
		return nil, false, badRequest("missing required Host header")
	case hosts == 1 && !httpguts.ValidHostHeader(textproto.TrimString(s[host0:host1])):
		return nil, false, badRequest("malformed Host header")
	case spacedName:
		return nil, false, badRequest("invalid header name")
	}
	return req, sawTE && (sawCL || http10), nil
}

// requestAlloc holds a request, its URL and the values of a typical header in one
// allocation.
type requestAlloc struct {
	req    http.Request
	url    url.URL
	values [8]string
}

// headField is a header field of the head being parsed: offsets into its copy. It is kept
// small (a parse zeroes 24 of them on its stack): a folded value is behind a pointer.
type headField struct {
	k0, k1, v0, v1 int
	fold           *[]byte // the value joined with its continuation lines; nil if not folded
}

var errIncompleteRequest = &h1Error{status: http.StatusBadRequest, msg: "incomplete request"}

func badRequest(msg string) *h1Error {
	return &h1Error{status: http.StatusBadRequest, msg: msg}
}

// trimEOL removes what bufio.Reader.ReadLine removes from the end of a line whose '\n'
// is already cut off: one '\r'.
func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\r' {
		return line[:n-1]
	}
	return line
}

// trimSpace returns the bounds of buf[i:j] without its leading and trailing spaces and
// tabs.
func trimSpace(buf []byte, i, j int) (int, int) {
	for i < j && (buf[i] == ' ' || buf[i] == '\t') {
		i++
	}
	for j > i && (buf[j-1] == ' ' || buf[j-1] == '\t') {
		j--
	}
	return i, j
}

// parseHTTPVersion is http.ParseHTTPVersion on bytes.
func parseHTTPVersion(v []byte) (major, minor int, ok bool) {
	switch string(v) {
	case "HTTP/1.1":
		return 1, 1, true
	case "HTTP/1.0":
		return 1, 0, true
	}
	if len(v) != len("HTTP/X.Y") || string(v[:5]) != "HTTP/" || v[6] != '.' ||
		v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9' {
		return 0, 0, false
	}
	return int(v[5] - '0'), int(v[7] - '0'), true
}

// canonicalizeName puts a field name in textproto.CanonicalMIMEHeaderKey's form, in place.
// As textproto does, a name holding a space (which net/http's server refuses later) is
// left as it is (spaced); ok is false for any other byte that is not a token byte.
func canonicalizeName(k []byte) (spaced, ok bool) {
	if len(k) == 0 {
		return false, false
	}
	for _, c := range k {
		if byteClass[c]&cToken != 0 {
			continue
		}
		if c != ' ' {
			return false, false
		}
		spaced = true
	}
	if spaced {
		return true, true
	}
	upper := true
	for i, c := range k {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		k[i] = c
		upper = c == '-'
	}
	return false, true
}

// isTokenBytes reports whether b is a non-empty RFC 9110 token.
func isTokenBytes(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if byteClass[c]&cToken == 0 {
			return false
		}
	}
	return true
}

// pathByte reports the bytes a request path may hold for url.ParseRequestURI to take it
// as it is (Path equal to the target's path, no RawPath): unreserved and sub-delims that
// need no escape in a path, '/', ':' and '@'.
var pathByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-_.~$&+,/:;=@" {
		t[c] = true
	}
	return t
}()

// parseOriginForm fills u as url.ParseRequestURI would for an origin-form target
// ("/path?query") whose path needs no unescaping; false means the target needs
// url.ParseRequestURI.
func parseOriginForm(target string, u *url.URL) bool {
	if len(target) == 0 || target[0] != '/' {
		return false
	}
	path, query, hasQuery := strings.Cut(target, "?")
	for i := 0; i < len(path); i++ {
		if !pathByte[path[i]] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	u.Path = path
	if hasQuery && query == "" {
		u.ForceQuery = true
	} else {
		u.RawQuery = query
	}
	return true
}

// shouldCloseRequest is net/http's shouldClose for a request with Connection fields conn.
func shouldCloseRequest(major, minor int, conn []string) bool {
	if major < 1 {
		return true
	}
	hasClose := httpguts.HeaderValuesContainsToken(conn, "close")
	if major == 1 && minor == 0 {
		return hasClose || !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	}
	return hasClose
}

// declaredTrailer removes the Trailer field of a chunked request's header and returns the
// trailer fields it declares, as http.ReadRequest does.
func declaredTrailer(h http.Header) (http.Header, error) {
	vv := h["Trailer"]
	delete(h, "Trailer")
	t := make(http.Header)
	for _, v := range vv {
		for f := range strings.SplitSeq(v, ",") {
			f = textproto.TrimString(f)
			if f == "" {
				continue
			}
			key := http.CanonicalHeaderKey(f)
			switch key {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				return nil, badRequest(fmt.Sprintf("bad trailer key %q", key))
			}
			t[key] = nil
		}
	}
	if len(t) == 0 {
		return nil, nil
	}
	return t, nil
}

// reqLengthBody is the body of a request with a Content-Length, read from the connection's
// reader as http.ReadRequest's body reads it: io.ErrUnexpectedEOF if the connection ends
// early, io.EOF with the last bytes. Not safe for concurrent use (h1body serialises).
type reqLengthBody struct {
	lr     io.LimitedReader
	sawEOF bool
	closed bool
}

func (b *reqLengthBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	n, err := b.lr.Read(p)
	if err == io.EOF {
		b.sawEOF = true
		if b.lr.N > 0 {
			err = io.ErrUnexpectedEOF
		}
	}
	if err == nil && n > 0 && b.lr.N == 0 {
		err = io.EOF
		b.sawEOF = true
	}
	return n, err
}

// Close reads the rest of the body, as a net/http server request's body does, so that
// the connection can read the next request.
func (b *reqLengthBody) Close() error {
	if b.closed {
		return nil
	}
	var err error
	if !b.sawEOF {
		_, err = io.Copy(io.Discard, b)
	}
	b.closed = true
	return err
}

// reqChunkedBody is the body of a chunked request: it decodes the chunks and, at their end,
// reads the trailer section into the request's Trailer, as http.ReadRequest's body does.
// Not safe for concurrent use (h1body serialises).
type reqChunkedBody struct {
	br     *bufio.Reader
	src    io.Reader
	req    *http.Request // whose Trailer gets the trailer fields
	sawEOF bool
	closed bool
}

var errReqTrailerEOF = errors.New("http: unexpected EOF reading trailer")

func (b *reqChunkedBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	n, err := b.src.Read(p)
	if err == io.EOF {
		b.sawEOF = true
		if e := b.readTrailer(); e != nil {
			// No further reads of the body, nor requests on the connection.
			err = e
			b.sawEOF = false
			b.closed = true
		}
		b.req = nil
	}
	return n, err
}

func (b *reqChunkedBody) readTrailer() error {
	buf, err := b.br.Peek(2)
	if string(buf) == "\r\n" {
		_, _ = b.br.Discard(2)
		return nil
	}
	if len(buf) < 2 {
		return errReqTrailerEOF
	}
	if err != nil {
		return err
	}
	// The trailer section must end within the reader's buffer (as with net/http).
	found := false
	for size := 4; ; size++ {
		buf, err := b.br.Peek(size)
		if bytes.HasSuffix(buf, []byte("\r\n\r\n")) {
			found = true
			break
		}
		if err != nil {
			break
		}
	}
	if !found {
		return errors.New("http: suspiciously long trailer after chunked body")
	}
	hdr, err := textproto.NewReader(b.br).ReadMIMEHeader()
	if err != nil {
		if err == io.EOF {
			return errReqTrailerEOF
		}
		return err
	}
	if b.req.Trailer == nil {
		b.req.Trailer = http.Header(hdr)
	} else {
		maps.Copy(b.req.Trailer, http.Header(hdr))
	}
	return nil
}

// Close reads the rest of the body and its trailer, as a net/http server request's body
// does.
func (b *reqChunkedBody) Close() error {
	if b.closed {
		return nil
	}
	var err error
	if !b.sawEOF {
		_, err = io.Copy(io.Discard, b)
	}
	b.closed = true
	return err
}
