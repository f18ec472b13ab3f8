package l7

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// parseRequestOracle is the request reader the server used before parseRequestHead:
// http.ReadRequest, then the checks net/http's server adds, with the section re-scanned
// for the Host fields and ambiguous framing. It is kept as the reference the new parser is
// compared with. One difference is deliberate: it answered 501 for any ReadRequest error
// whose text contained "unsupported transfer encoding" (a malformed line quoting that
// phrase, too); the oracle now matches only the error that starts with it.
func parseRequestOracle(br *bufio.Reader, hdr []byte) (*http.Request, bool, error) {
	conflict := framingConflictOracle(hdr)
	req, err := http.ReadRequest(br)
	if err != nil {
		if strings.HasPrefix(err.Error(), "unsupported transfer encoding") {
			return nil, false, &h1Error{status: http.StatusNotImplemented, msg: "unsupported transfer encoding"}
		}
		return nil, false, &h1Error{status: http.StatusBadRequest, msg: requestErrorText(err)}
	}
	if req.ProtoMajor != 1 {
		return nil, false, &h1Error{status: http.StatusHTTPVersionNotSupported, msg: "unsupported protocol version"}
	}
	// http.ReadRequest removes the Host header field: count it in the raw section.
	hosts, host := hostFieldsOracle(hdr)
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

// hostFieldsOracle counts the Host header fields of a header section and returns the
// value of the last one.
func hostFieldsOracle(hdr []byte) (n int, value string) {
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

var scannerPool = sync.Pool{New: func() any { return new(guardConn) }}

// framingConflictOracle runs the framing guard's scanner (see guardConn) over a complete
// header section.
func framingConflictOracle(hdr []byte) bool {
	g := scannerPool.Get().(*guardConn)
	g.scanning, g.line, g.lineLen, g.sawCL, g.sawTE, g.http10, g.colonFound = true, 0, 0, false, false, false, false
	g.conflict.Store(false)
	g.scan(hdr)
	conflict := g.conflict.Load()
	scannerPool.Put(g)
	return conflict
}

// headerSectionEnd is the length of data's header section (up to and with its first
// empty line), as the server's headerEnd finds it; -1 if there is none.
func headerSectionEnd(data []byte) int {
	lineStart := 0
	for i, c := range data {
		if c != '\n' {
			continue
		}
		if line := data[lineStart:i]; len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return i + 1
		}
		lineStart = i + 1
	}
	return -1
}

// parsed is what a request reader made of a request, its body (read to its end) and what
// the connection holds after it.
type parsed struct {
	status   int // 0: accepted
	req      *http.Request
	conflict bool
	body     string
	bodyErr  string
	trailer  http.Header
	rest     string
}

func runParser(parse func(*bufio.Reader, []byte) (*http.Request, bool, error), data []byte) parsed {
	br := bufio.NewReaderSize(bytes.NewReader(data), len(data)+16)
	end := headerSectionEnd(data)
	hdr, _ := br.Peek(end)
	req, conflict, err := parse(br, hdr)
	if err != nil {
		var he *h1Error
		if !errors.As(err, &he) {
			return parsed{status: -1}
		}
		return parsed{status: he.status}
	}
	p := parsed{req: req, conflict: conflict}
	b, err := io.ReadAll(req.Body)
	p.body = string(b)
	if err != nil {
		p.bodyErr = err.Error()
	}
	p.trailer = req.Trailer
	rest, _ := io.ReadAll(br)
	p.rest = string(rest)
	return p
}

// compareParsers reports how parseRequest and the oracle differ on data; "" if they agree.
func compareParsers(data []byte) string {
	if headerSectionEnd(data) < 0 {
		return ""
	}
	return sameRequest(runParser(parseRequest, data), runParser(parseRequestOracle, data))
}

// sameRequest reports how two parses of one request differ; "" if they agree.
func sameRequest(got, want parsed) string {
	if got.status != want.status {
		return fmt.Sprintf("status = %d, want %d", got.status, want.status)
	}
	if got.status != 0 {
		return ""
	}
	g, w := got.req, want.req
	switch {
	case g.Method != w.Method || g.RequestURI != w.RequestURI:
		return fmt.Sprintf("request line = %q %q, want %q %q", g.Method, g.RequestURI, w.Method, w.RequestURI)
	case !reflect.DeepEqual(g.URL, w.URL):
		return fmt.Sprintf("URL = %#v, want %#v", g.URL, w.URL)
	case g.Proto != w.Proto || g.ProtoMajor != w.ProtoMajor || g.ProtoMinor != w.ProtoMinor:
		return fmt.Sprintf("Proto = %q %d.%d, want %q %d.%d", g.Proto, g.ProtoMajor, g.ProtoMinor, w.Proto, w.ProtoMajor, w.ProtoMinor)
	case g.Host != w.Host:
		return fmt.Sprintf("Host = %q, want %q", g.Host, w.Host)
	case !reflect.DeepEqual(g.Header, w.Header):
		return fmt.Sprintf("Header = %q, want %q", g.Header, w.Header)
	case g.ContentLength != w.ContentLength:
		return fmt.Sprintf("ContentLength = %d, want %d", g.ContentLength, w.ContentLength)
	case !reflect.DeepEqual(g.TransferEncoding, w.TransferEncoding):
		return fmt.Sprintf("TransferEncoding = %q, want %q", g.TransferEncoding, w.TransferEncoding)
	case g.Close != w.Close:
		return fmt.Sprintf("Close = %v, want %v", g.Close, w.Close)
	case (g.Body == http.NoBody) != (w.Body == http.NoBody):
		return fmt.Sprintf("Body is NoBody: %v, want %v", g.Body == http.NoBody, w.Body == http.NoBody)
	case got.conflict != want.conflict:
		return fmt.Sprintf("conflict = %v, want %v", got.conflict, want.conflict)
	case got.body != want.body || got.bodyErr != want.bodyErr:
		return fmt.Sprintf("body = %q (%s), want %q (%s)", got.body, got.bodyErr, want.body, want.bodyErr)
	case !reflect.DeepEqual(got.trailer, want.trailer):
		return fmt.Sprintf("Trailer = %q, want %q", got.trailer, want.trailer)
	case got.rest != want.rest:
		return fmt.Sprintf("left on the connection %q, want %q", got.rest, want.rest)
	case g.Form != nil || g.PostForm != nil || g.MultipartForm != nil || g.TLS != nil || g.Response != nil || g.Pattern != "":
		// Neither parser sets them: set, they are left from an earlier request.
		return "fields the parser never sets are set"
	}
	return ""
}

// FuzzParseRequestHead compares parseRequest with http.ReadRequest and the checks the
// server added to it (parseRequestOracle) on arbitrary input: same accept/refuse decision
// and status, same request fields, same body and trailer, same bytes left for the next
// request.
func FuzzParseRequestHead(f *testing.F) {
	for _, tc := range parseRequestCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if d := compareParsers(data); d != "" {
			t.Fatalf("parseRequest(%q): %s", data, d)
		}
	})
}

var parseRequestCases = []struct {
	name       string
	in         string
	wantStatus int // 0: accepted
}{
	{"origin form", "GET /a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"origin form force query", "GET /a? HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"origin form two question marks", "GET /a?? HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"escaped path", "GET /a%2Fb%20c HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"bad escape", "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	{"path with fragment and bang", "GET /a!b#c?d#e HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"path sub-delims", "GET /a;b=c,d:e@f$g&h+i~j_k.l-m HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"path needing escapes", "GET /a'b(c)*d!e\"f<g>[h]{i}|j^k`l\\m HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"non-ASCII path and query", "GET /caf\xc3\xa9?q=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"query with fragment", "GET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"double slash", "GET //a/b HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"absolute form", "GET http://a.example:8080/b?c HTTP/1.1\r\nHost: other\r\n\r\n", 0},
	{"absolute form no host field", "GET http://a/b HTTP/1.1\r\n\r\n", 400},
	{"authority form", "CONNECT a.example:443 HTTP/1.1\r\n\r\n", 0},
	{"connect with path", "CONNECT /rpc HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"asterisk form", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"relative target", "GET a/b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	{"control byte in target", "GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	{"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	{"extension method", "PURGE /a HTTP/1.1\r\nHost: x\r\n\r\n", 0},
	{"bad method", "G(T /a HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	{"empty method", " /a HTTP/1.1\r\nHost: x\r\n\r\n", 400},
	{"no version", "GET /a\r\nHost: x\r\n\r\n", 400},
	{"empty request line", "\r\nGET / HTTP/1.1\r\n\r\n", 400},
	{"malformed version", "GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400},
	{"lower-case version", "GET / http/1.1\r\nHost: x\r\n\r\n", 400},
	{"http/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 0},
	{"http/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505},
	{"http/0.9", "GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505},
	{"http/2.0 with a spaced name", "GET / HTTP/2.0\r\nHost : x\r\n\r\n", 505},
	{"http/2.0 with a bad value", "GET / HTTP/2.0\r\nHost: x\r\nX: \x01\r\n\r\n", 400},
	{"http/2.0 unsupported coding", "GET / HTTP/2.0\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
	{"http/0.0 unsupported coding", "GET / HTTP/0.0\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
	{"http/0.9 coding ignored", "GET / HTTP/0.9\r\nTransfer-Encoding: gzip\r\n\r\n", 505},
	{"bare LF", "GET / HTTP/1.1\nHost: x\nX-A: b\n\n", 0},
	{"canonical keys", "GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-FOR: 1\r\nCONTENT-type: a\r\nx_y: z\r\n\r\n", 0},
	{"multiple values in order", "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\na: 3\r\nA: 4\r\n\r\n", 0},
	{"value trimming", "GET / HTTP/1.1\r\nHost: x\r\nA: \t 1 2 \t\r\nB:\r\nC:    \r\n\r\n", 0},
	{"obs-text value", "GET / HTTP/1.1\r\nHost: x\r\nA: caf\xc3\xa9\r\n\r\n", 0},
	{"control byte in value", "GET / HTTP/1.1\r\nHost: x\r\nA: a\x00b\r\n\r\n", 400},
	{"bare CR in value", "GET / HTTP/1.1\r\nHost: x\r\nA: a\rb\r\n\r\n", 400},
	{"CR CR LF", "GET / HTTP/1.1\r\nHost: x\r\nA: a\r\r\n\r\n", 400},
	{"delete in value", "GET / HTTP/1.1\r\nHost: x\r\nA: a\x7f\r\n\r\n", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nA: a\r\n  b \r\n\tc\r\nB: d\r\n\r\n", 0},
	{"obs-fold of an empty value", "GET / HTTP/1.1\r\nHost: x\r\nA:\r\n b\r\n\r\n", 0},
	{"obs-fold of blank lines", "GET / HTTP/1.1\r\nHost: x\r\nA: a\r\n \r\n\t\r\n\r\n", 0},
	{"obs-fold with a CR", "GET / HTTP/1.1\r\nHost: x\r\nA: a\r\n b\r\r\n\r\n", 400},
	{"obs-fold of Host", "GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n", 0},
	{"leading whitespace on the first field", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400},
	{"missing colon", "GET / HTTP/1.1\r\nHost: x\r\nA\r\n\r\n", 400},
	{"empty name", "GET / HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n", 400},
	{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nA : a\r\n\r\n", 400},
	{"tab before colon", "GET / HTTP/1.1\r\nHost: x\r\nA\t: a\r\n\r\n", 400},
	{"bad name byte", "GET / HTTP/1.1\r\nHost: x\r\nA(b: a\r\n\r\n", 400},
	{"missing Host", "GET / HTTP/1.1\r\n\r\n", 400},
	{"missing Host on 1.0", "GET / HTTP/1.0\r\n\r\n", 0},
	{"two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n", 400},
	{"malformed Host", "GET / HTTP/1.1\r\nHost: x y\r\n\r\n", 400},
	{"empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 0},
	{"content length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET", 0},
	{"content length short body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabc", 0},
	{"content length zero", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET", 0},
	{"duplicate equal content lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length:  3\r\n\r\nabc", 0},
	{"contradicting content lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
	{"signed content length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400},
	{"empty content length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400},
	{"huge content length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n", 400},
	{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET", 0},
	{"chunked case-insensitive", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", 0},
	{"chunked with trailer", "POST / HTTP/1.1\r\nHost: x\r\nTrailer: X-T, x-u\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: 1\r\nX-Z: 2\r\n\r\nGET", 0},
	{"chunked with undeclared trailer", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n", 0},
	{"chunked bad trailer key", "POST / HTTP/1.1\r\nHost: x\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"trailer without chunked", "POST / HTTP/1.1\r\nHost: x\r\nTrailer: X-T\r\nContent-Length: 1\r\n\r\na", 0},
	{"chunked malformed chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0},
	{"chunked cut short", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 0},
	{"chunked and content length", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 0},
	{"chunked on 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\na", 0},
	{"unsupported coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
	{"two coding fields", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
	{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", 0},
	{"1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0},
	{"1.0 close", "GET / HTTP/1.0\r\n\r\n", 0},
	{"pragma no-cache", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n", 0},
	{"pragma with cache-control", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\nCache-Control: max-age=1\r\n\r\n", 0},
	{"long header section", "GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Long: "+strings.Repeat("v", 100)+"\r\n", 60) + "\r\n", 0},
	{"folded content length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n \r\n\r\nabc", 0},
	{"folded duplicate content lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n \r\nContent-Length: 3\r\n\r\nabc", 0},
	{"folded content length digits", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n 4\r\n\r\nabcd", 400},
	{"folded transfer-encoding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n \r\n\r\n0\r\n\r\n", 501},
	{"folded connection", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n \r\n\r\n", 0},
	{"folded pragma", "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n \r\n\r\n", 0},
	{"folded trailer", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-A,\r\n X-B\r\n\r\n0\r\nX-A: 1\r\n\r\n", 0},
	{"folded host on 1.0", "GET / HTTP/1.0\r\nHost: a\r\n b\r\n\r\n", 0},
	{"spaced name Host on 1.0", "GET / HTTP/1.0\r\nHost : a\r\n\r\n", 400},
	{"guard: TE with CL mixed case", "POST / HTTP/1.1\r\nHost: x\r\ntransfer-ENCODING: chunked\r\ncontent-length: 1\r\n\r\n0\r\n\r\n", 0},
}

// TestParseRequestCases checks each rule of the request head on its own: the status, and
// that the parser agrees with http.ReadRequest plus the server's checks in every field.
func TestParseRequestCases(t *testing.T) {
	for _, tc := range parseRequestCases {
		t.Run(tc.name, func(t *testing.T) {
			p := runParser(parseRequest, []byte(tc.in))
			if p.status != tc.wantStatus {
				t.Errorf("parseRequest(%q) status = %d, want %d", tc.in, p.status, tc.wantStatus)
			}
			if d := compareParsers([]byte(tc.in)); d != "" {
				t.Errorf("parseRequest(%q): %s", tc.in, d)
			}
		})
	}
}

// TestParseRequestHeadIncomplete checks that a section without its empty line is refused
// (the server only passes complete ones).
func TestParseRequestHeadIncomplete(t *testing.T) {
	for _, in := range []string{"", "GET / HTTP/1.1", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: x\r\n", "GET / HTTP/1.1\r\nHost: x"} {
		if _, _, err := parseRequestHead([]byte(in)); err != errIncompleteRequest {
			t.Errorf("parseRequestHead(%q) = %v, want %v", in, err, errIncompleteRequest)
		}
	}
}

// TestParseRequestFields spells out what some heads must give, independently of the
// oracle.
func TestParseRequestFields(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		check    func(*http.Request) string
		conflict bool
	}{
		{name: "host moves out of the header", in: "GET /p?q HTTP/1.1\r\nhost: h.example\r\nuser-agent: u\r\n\r\n",
			check: func(r *http.Request) string {
				if _, ok := r.Header["Host"]; ok || r.Host != "h.example" || r.Header.Get("User-Agent") != "u" {
					return fmt.Sprintf("Host %q, Header %q", r.Host, r.Header)
				}
				if r.URL.Path != "/p" || r.URL.RawQuery != "q" {
					return fmt.Sprintf("URL = %#v", r.URL)
				}
				return ""
			}},
		{name: "absolute form host wins", in: "GET http://a.example/b HTTP/1.1\r\nHost: other\r\n\r\n",
			check: func(r *http.Request) string {
				if r.Host != "a.example" || r.URL.Path != "/b" {
					return fmt.Sprintf("Host %q, URL %#v", r.Host, r.URL)
				}
				return ""
			}},
		{name: "values in order", in: "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n",
			check: func(r *http.Request) string {
				if got := r.Header["A"]; !reflect.DeepEqual(got, []string{"1", "3"}) {
					return fmt.Sprintf("Header[A] = %q, want [1 3]", got)
				}
				return ""
			}},
		{name: "content length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n",
			check: func(r *http.Request) string {
				if r.ContentLength != 12 || r.Body == http.NoBody || r.Close {
					return fmt.Sprintf("ContentLength %d, Close %v", r.ContentLength, r.Close)
				}
				return ""
			}},
		{name: "chunked drops content length", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
			conflict: true,
			check: func(r *http.Request) string {
				if r.ContentLength != -1 || !reflect.DeepEqual(r.TransferEncoding, []string{"chunked"}) || r.Header["Content-Length"] != nil || r.Header["Transfer-Encoding"] != nil {
					return fmt.Sprintf("ContentLength %d, TransferEncoding %q, Header %q", r.ContentLength, r.TransferEncoding, r.Header)
				}
				return ""
			}},
		{name: "1.0 ignores and flags transfer-encoding", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
			conflict: true,
			check: func(r *http.Request) string {
				if r.ContentLength != 0 || r.TransferEncoding != nil || !r.Close {
					return fmt.Sprintf("ContentLength %d, TransferEncoding %q, Close %v", r.ContentLength, r.TransferEncoding, r.Close)
				}
				return ""
			}},
		{name: "1.0 keep-alive", in: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
			check: func(r *http.Request) string {
				if r.Close || r.ProtoMinor != 0 {
					return fmt.Sprintf("Close %v, ProtoMinor %d", r.Close, r.ProtoMinor)
				}
				return ""
			}},
		{name: "1.1 close", in: "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			check: func(r *http.Request) string {
				if !r.Close || r.Header.Get("Connection") != "close" {
					return fmt.Sprintf("Close %v, Header %q", r.Close, r.Header)
				}
				return ""
			}},
		{name: "fold joined with one space", in: "GET / HTTP/1.1\r\nHost: x\r\nA: a \r\n \t b\r\n\r\n",
			check: func(r *http.Request) string {
				if got := r.Header.Get("A"); got != "a b" {
					return fmt.Sprintf("Header[A] = %q, want %q", got, "a b")
				}
				return ""
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			hdr, _ := br.Peek(headerSectionEnd([]byte(tc.in)))
			r, conflict, err := parseRequest(br, hdr)
			if err != nil {
				t.Fatalf("parseRequest(%q) = %v, want a request", tc.in, err)
			}
			if conflict != tc.conflict {
				t.Errorf("parseRequest(%q) conflict = %v, want %v", tc.in, conflict, tc.conflict)
			}
			if d := tc.check(r); d != "" {
				t.Errorf("parseRequest(%q): %s", tc.in, d)
			}
		})
	}
}

// benchHeads are a typical service-to-service request and a browser-like one.
var benchHeads = []struct{ name, head string }{
	{"typical6", "GET /api/v1/items/42?verbose=1 HTTP/1.1\r\nHost: backend.service\r\nUser-Agent: Go-http-client/1.1\r\n" +
		"Accept: application/json\r\nAccept-Encoding: gzip\r\nX-Request-Id: 4f0c2d7e-9a51-4b1e-8a0e-2f1b4a6c9d3e\r\n" +
		"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"},
	{"browser15", "GET /static/app/main.js?v=20261124 HTTP/1.1\r\nHost: www.example.com\r\nConnection: keep-alive\r\n" +
		"sec-ch-ua: \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\nsec-ch-ua-mobile: ?0\r\nsec-ch-ua-platform: \"Linux\"\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n" +
		"Accept: */*\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: script\r\n" +
		"Referer: https://www.example.com/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n" +
		"Cookie: session=8c1f2a9e4b7d; theme=dark; _ga=GA1.2.123456789.1700000000\r\nIf-None-Match: \"5f3e-1a2b3c\"\r\n\r\n"},
}

// BenchmarkParseRequest measures the request reader (new) against the http.ReadRequest
// path it replaced (old), on one head read again and again from the same buffer.
func BenchmarkParseRequest(b *testing.B) {
	for _, impl := range []struct {
		name  string
		parse func(*bufio.Reader, []byte) (*http.Request, bool, error)
	}{{"new", parseRequest}, {"old", parseRequestOracle}} {
		for _, h := range benchHeads {
			b.Run(impl.name+"/"+h.name, func(b *testing.B) {
				src := strings.NewReader(h.head)
				br := bufio.NewReaderSize(src, 4096)
				b.ReportAllocs()
				b.SetBytes(int64(len(h.head)))
				for b.Loop() {
					src.Reset(h.head)
					br.Reset(src)
					hdr, _ := br.Peek(len(h.head))
					if _, _, err := impl.parse(br, hdr); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
