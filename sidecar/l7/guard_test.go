package l7

import (
	"net"
	"strings"
	"testing"
)

// feed runs raw through a guard's scanner in pieces of the given size and reports whether
// the first header section was flagged.
func feed(raw []byte, piece int) bool {
	g := GuardConn(nil).(*guardConn)
	for len(raw) > 0 {
		n := min(piece, len(raw))
		g.observe(raw[:n])
		raw = raw[n:]
	}
	return g.takeConflict()
}

func TestGuardScan(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		want bool
	}{
		{"plain GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"CL only", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", false},
		{"TE only", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"CL and TE", "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"TE and CL, bare LF", "POST / HTTP/1.1\ntransfer-encoding: chunked\ncontent-length: 3\n\n", true},
		{"TE on 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"header names that only start alike", "POST / HTTP/1.1\r\nContent-Length-X: 1\r\nTransfer-Encodings: x\r\n\r\n", false},
		{"names in the body do not count", "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nTransfer-Encoding: x\r\nContent-Length: 1\r\n\r\n", false},
	} {
		for _, piece := range []int{1, 2, 7, 1 << 20} {
			if got := feed([]byte(tc.raw), piece); got != tc.want {
				t.Errorf("%s (pieces of %d): conflict = %v, want %v", tc.name, piece, got, tc.want)
			}
		}
	}
}

// FuzzGuardScan checks the scanner never panics and that how the bytes are split into
// reads never changes its verdict.
func FuzzGuardScan(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), uint8(3))
	f.Add([]byte("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), uint8(1))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\n"), uint8(5))
	f.Fuzz(func(t *testing.T, raw []byte, piece uint8) {
		whole := feed(raw, len(raw)+1)
		if split := feed(raw, int(piece)+1); split != whole {
			t.Fatalf("verdict depends on read sizes: whole=%v, pieces of %d=%v", whole, int(piece)+1, split)
		}
	})
}

var _ net.Conn = (*guardConn)(nil)

// referenceConflict is the scanner's rule written plainly, byte by byte, over a whole
// first header section: Transfer-Encoding with Content-Length, or on HTTP/1.0.
func referenceConflict(raw []byte) bool {
	if len(raw) >= len(preface) && string(raw[:len(preface)]) == preface {
		return false
	}
	line, lineLen, colon := 0, 0, false
	var name, last []byte
	sawCL, sawTE, http10 := false, false, false
	for _, c := range raw {
		switch {
		case c == '\n':
			if line == 0 {
				http10 = len(last) >= 8 && string(last[len(last)-8:]) == "HTTP/1.0"
			} else if lineLen == 0 {
				return sawTE && (sawCL || http10)
			}
			line, lineLen, colon, name = line+1, 0, false, name[:0]
			continue
		case c == '\r':
			continue
		case line == 0:
			last = append(last, c)
		case !colon && c == ':':
			colon = true
			n := strings.ToLower(string(name))
			sawCL = sawCL || n == "content-length"
			sawTE = sawTE || n == "transfer-encoding"
		case !colon:
			name = append(name, c)
		}
		lineLen++
	}
	return false
}

// FuzzGuardScanReference checks the scanner (with its skips over request lines and header
// values) against referenceConflict.
func FuzzGuardScanReference(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), uint8(3))
	f.Add([]byte("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), uint8(1))
	f.Add([]byte("POST /a HTTP/1.1\r\nX: Transfer-Encoding: 1\r\ncontent-length:1\r\n\r\n"), uint8(4))
	f.Fuzz(func(t *testing.T, raw []byte, piece uint8) {
		if got, want := feed(raw, int(piece)+1), referenceConflict(raw); got != want {
			t.Fatalf("scan(%q) in pieces of %d: conflict = %v, want %v", raw, int(piece)+1, got, want)
		}
	})
}
