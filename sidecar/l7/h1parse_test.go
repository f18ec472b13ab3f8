package l7

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

var responseSeeds = []string{
	"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 02:44:59 GMT\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\nHello, world\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nx-multi: a\r\nX-Multi:  b \t\r\nETag: \"x\"\r\n\r\nabcEXTRA",
	"HTTP/1.1 503\r\nContent-Length: 5\r\n\r\nab",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 200 OK\r\nA : b\r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
	"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nPragma: no-cache\r\n\r\nx",
	"HTTP/1.1 200 \xff\r\nX: \x80\x81\r\nContent-Length: 1\r\n\r\nx",
}

// FuzzParseResponseHead: whatever parseResponseHead accepts, http.ReadResponse reads the
// same way (status, header, framing, body and what is left on the connection); whatever
// it declines, it did not consume.
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		req, _ := http.NewRequest(method, "http://x/", nil)
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		_, _ = br.Peek(1)
		before := br.Buffered()
		got, ok := parseResponseHead(br, req)
		if !ok {
			if br.Buffered() != before {
				t.Fatalf("parseResponseHead(%q) declined but consumed %d bytes", in, before-br.Buffered())
			}
			return
		}
		want, err := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(in), 4096), req)
		if err != nil {
			t.Fatalf("parseResponseHead(%q) accepted what http.ReadResponse refuses: %v", in, err)
		}
		gotBody, gerr := io.ReadAll(got.Body)
		wantBody, werr := io.ReadAll(want.Body)
		// What follows the response on the connection must be the same too.
		wantBR := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		want2, _ := http.ReadResponse(wantBR, req)
		_, _ = io.ReadAll(want2.Body)
		gotRest, _ := io.ReadAll(br)
		wantRest, _ := io.ReadAll(wantBR)
		got.Body, want.Body = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("parseResponseHead(%q) =\n%#v\nhttp.ReadResponse:\n%#v", in, got, want)
		}
		if !bytes.Equal(gotBody, wantBody) || !errors.Is(gerr, werr) && gerr != werr {
			t.Fatalf("body of %q = %q, %v; http.ReadResponse: %q, %v", in, gotBody, gerr, wantBody, werr)
		}
		if !bytes.Equal(gotRest, wantRest) {
			t.Fatalf("left after %q = %q; http.ReadResponse: %q", in, gotRest, wantRest)
		}
	})
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"nginx", responseSeeds[0], true},
		{"empty body", responseSeeds[1], true},
		{"keys to canonicalize, repeated field", responseSeeds[2], true},
		{"no reason, short body", responseSeeds[3], true},
		{"chunked", responseSeeds[4], false},
		{"Connection: close", responseSeeds[5], false},
		{"two Content-Length", responseSeeds[6], false},
		{"204", responseSeeds[7], false},
		{"HTTP/1.0", responseSeeds[8], false},
		{"continuation line", responseSeeds[9], false},
		{"space before colon", responseSeeds[10], false},
		{"bare LF", responseSeeds[11], false},
		{"signed length", responseSeeds[12], false},
		{"Pragma", responseSeeds[13], false},
		{"obs-text", responseSeeds[14], true},
		{"head not buffered in full", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false},
		{"no Content-Length", "HTTP/1.1 200 OK\r\nX: y\r\n\r\nuntil close", false},
		{"1xx", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://x/", nil)
			br := bufio.NewReader(strings.NewReader(tc.in))
			_, _ = br.Peek(1)
			resp, ok := parseResponseHead(br, req)
			if ok != tc.ok {
				t.Fatalf("parseResponseHead() ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.in)), req)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(resp.Header, want.Header) || resp.Status != want.Status || resp.ContentLength != want.ContentLength {
				t.Errorf("parseResponseHead() = %q %v %d, want %q %v %d", resp.Status, resp.Header, resp.ContentLength,
					want.Status, want.Header, want.ContentLength)
			}
		})
	}
}

func BenchmarkParseResponseHead(b *testing.B) {
	in := responseSeeds[0]
	req, _ := http.NewRequest("GET", "http://x/", nil)
	r := strings.NewReader(in)
	br := bufio.NewReaderSize(r, 16<<10)
	for _, tc := range []struct {
		name string
		read func() (*http.Response, error)
	}{
		{"lean", func() (*http.Response, error) {
			resp, ok := parseResponseHead(br, req)
			if !ok {
				return nil, errors.New("declined")
			}
			return resp, nil
		}},
		{"net-http", func() (*http.Response, error) { return http.ReadResponse(br, req) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(in)
				br.Reset(r)
				_, _ = br.Peek(1)
				resp, err := tc.read()
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
			}
		})
	}
}
