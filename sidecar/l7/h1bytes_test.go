package l7

import (
	"net/http"
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
