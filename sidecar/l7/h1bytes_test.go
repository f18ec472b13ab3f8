package l7

import (
	"bufio"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// TestFieldBytes compares the table- and word-driven checks with httpguts' for every byte
// at every position of values and names of up to 20 bytes.
func TestFieldBytes(t *testing.T) {
	for _, base := range []string{"", "a", "keep-alive", "text/html; charset=utf-8", "\x80\xff0123456789abcdef"} {
		for pos := 0; pos <= len(base); pos++ {
			for c := 0; c < 256; c++ {
				s := base[:pos] + string([]byte{byte(c)}) + base[pos:]
				if got, want := validFieldValue(s), httpguts.ValidHeaderFieldValue(s); got != want {
					t.Errorf("validFieldValue(%q) = %v, want %v", s, got, want)
				}
				if got, want := validFieldValueBytes([]byte(s)), httpguts.ValidHeaderFieldValue(s); got != want {
					t.Errorf("validFieldValueBytes(%q) = %v, want %v", s, got, want)
				}
				if got, want := validFieldName(s), httpguts.ValidHeaderFieldName(s); got != want {
					t.Errorf("validFieldName(%q) = %v, want %v", s, got, want)
				}
			}
		}
	}
	for _, tc := range []struct {
		name string
		v    string
		want bool
	}{
		{"empty", "", true},
		{"long clean", strings.Repeat("abcdefgh", 5), true},
		{"tab in second word", "abcdefgh\tbcdefgh", true},
		{"CR in third word", "abcdefghabcdefghab\rd", false},
		{"DEL last", strings.Repeat("x", 15) + "\x7f", false},
		{"NUL after obs-text", "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\x00", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := validFieldValue(tc.v); got != tc.want {
				t.Errorf("validFieldValue(%q) = %v, want %v", tc.v, got, tc.want)
			}
		})
	}
}

// TestKnownKeysCanonical checks that every name knownKey takes without checking is a
// valid, canonical field name.
func TestKnownKeysCanonical(t *testing.T) {
	for _, k := range []string{"Server", "Date", "Content-Type", "Content-Length", "Connection", "Keep-Alive",
		"Cache-Control", "Etag", "Last-Modified", "Expires", "Vary", "Location", "Set-Cookie",
		"Accept-Ranges", "Age", "Content-Encoding", "Access-Control-Allow-Origin",
		"Strict-Transport-Security", "X-Content-Type-Options", "Via", "Alt-Svc", "X-Request-Id",
		"Grpc-Status", "Grpc-Message"} {
		if !knownKey(k) {
			t.Errorf("knownKey(%q) = false, want true", k)
		}
		if !httpguts.ValidHeaderFieldName(k) || http.CanonicalHeaderKey(k) != k {
			t.Errorf("knownKey takes %q, which is not a valid canonical name", k)
		}
	}
	for _, k := range []string{"server", "ETag", "content-length", "X-Other"} {
		if knownKey(k) {
			t.Errorf("knownKey(%q) = true, want false", k)
		}
	}
}

func TestParseContentLength(t *testing.T) {
	for _, v := range []string{"0", "5", "123456789012345678", "1234567890123456789", "9223372036854775807",
		"9223372036854775808", "+5", "-1", "-0", "", " 5", "5 ", "0x10", "１"} {
		n, err := strconv.ParseInt(v, 10, 64)
		wantOK := err == nil && n >= 0
		got, ok := parseContentLength(v)
		if ok != wantOK || ok && got != n {
			t.Errorf("parseContentLength(%q) = %d, %v, want %d, %v", v, got, ok, n, wantOK)
		}
	}
}

func TestKeyAfter(t *testing.T) {
	keys := []string{"", "A", "Age", "B", "Content-Length", "Content-Type", "Date", "a", "\xff"}
	for _, a := range keys {
		for _, b := range keys {
			if got, want := keyAfter(a, b), a > b; got != want {
				t.Errorf("keyAfter(%q, %q) = %v, want %v", a, b, got, want)
			}
		}
	}
}

// TestParseResponseLongHeads covers heads past what parseResponse tracks on its stack (16
// names checked for repeats by comparison, 24 line ends): what it accepts must read as
// http.ReadResponse reads it, and what ReadResponse refuses it must decline.
func TestParseResponseLongHeads(t *testing.T) {
	fields := func(n int, extra ...string) string {
		var b strings.Builder
		b.WriteString("HTTP/1.1 200 OK\r\n")
		for i := range n {
			fmt.Fprintf(&b, "X-F%d: v%d\r\n", i, i)
		}
		for _, e := range extra {
			b.WriteString(e + "\r\n")
		}
		return b.String()
	}
	for _, tc := range []struct {
		name   string
		head   string
		wantOK bool
	}{
		{"30 fields", fields(30, "Content-Length: 2"), true},
		{"repeat of the first past 16", fields(20, "X-F0: again", "Content-Length: 2"), true},
		{"repeat of the 20th past 24", fields(26, "X-F19: again", "x-f19: third", "Content-Length: 2"), true},
		{"repeated Content-Length past 24", fields(25, "Content-Length: 2", "Content-Length: 2"), false},
		{"Connection: close past 24", fields(25, "Content-Length: 2", "connection: keep-alive, Close"), false},
		{"bare LF past 24", fields(25, "Content-Length: 2", "X-Bad: a\nX-More: b"), false},
		{"Transfer-Encoding past 16", fields(17, "Content-Length: 2", "transfer-encoding: chunked"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.head + "\r\nok"
			req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			br := bufio.NewReaderSize(strings.NewReader(in), 4096)
			_, _ = br.Peek(1) // parseResponseHead reads what is buffered
			got, ok := parseResponseHead(br, req)
			if ok != tc.wantOK {
				t.Fatalf("parseResponseHead() ok = %v, want %v", ok, tc.wantOK)
			}
			if !ok {
				return
			}
			want, err := http.ReadResponse(bufio.NewReaderSize(strings.NewReader(in), 4096), req)
			if err != nil {
				t.Fatalf("http.ReadResponse() = %v, want it to take what parseResponseHead took", err)
			}
			if !reflect.DeepEqual(got.Header, want.Header) || got.ContentLength != want.ContentLength {
				t.Errorf("parseResponseHead() = %v %d, want %v %d", got.Header, got.ContentLength, want.Header, want.ContentLength)
			}
		})
	}
}

// TestParseRequestLongHeads covers repeated names past the 24 that parseRequestHead
// compares by hand, and a Host line among many: the header, Host and framing must be what
// http.ReadRequest reads.
func TestParseRequestLongHeads(t *testing.T) {
	var b strings.Builder
	b.WriteString("POST /x HTTP/1.1\r\n")
	for i := range 30 {
		fmt.Fprintf(&b, "X-F%d: v%d\r\n", i%27, i)
		if i == 20 {
			b.WriteString("host: example.com\r\n")
		}
	}
	b.WriteString("x-f1: again\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok")
	in := b.String()
	got, _, err := parseRequestHead([]byte(in))
	if err != nil {
		t.Fatalf("parseRequestHead() = %v", err)
	}
	want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(in)))
	if err != nil {
		t.Fatalf("http.ReadRequest() = %v", err)
	}
	if !reflect.DeepEqual(got.Header, want.Header) {
		t.Errorf("parseRequestHead() header = %v, want %v", got.Header, want.Header)
	}
	if got.Host != want.Host || got.ContentLength != want.ContentLength {
		t.Errorf("parseRequestHead() Host, ContentLength = %q, %d, want %q, %d", got.Host, got.ContentLength, want.Host, want.ContentLength)
	}
}
