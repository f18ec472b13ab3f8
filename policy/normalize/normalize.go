// Package normalize canonicalizes request paths before policy rules and routes match them,
// so that a rule on /admin cannot be bypassed with /%61dmin, //admin, /x/../admin,
// /admin;x or /ADMIN.
//
// Options.Path takes a request's path in its escaped form (http.Request.URL.EscapedPath(),
// never the decoded URL.Path, which has already turned %2F into a slash) and returns two
// strings:
//
//   - forward, the canonical escaped path to send to the application: percent-encodings of
//     unreserved characters (RFC 3986 §2.3: A-Z a-z 0-9 - . _ ~) decoded, every other
//     percent-encoding in upper-case hex, bytes that may not appear raw in a path
//     percent-encoded, runs of slashes merged, and "." and ".." segments removed
//     (RFC 3986 §5.2.4 remove_dot_segments);
//   - match, the key rules and routes match against: forward with the ";params" of every
//     segment removed and the dot segments this uncovers resolved again (so that the
//     Tomcat-style "/x/..;/admin" is /admin, as such back ends see it), and lower-cased
//     (ASCII, outside percent-encodings) when Options.CaseInsensitive is set.
//
// Percent-encoded slashes (%2F) and backslashes (%5C, and a raw backslash) are handled as
// Options.EscapedSlashes says: refused (the default, as Envoy's
// path_with_escaped_slashes_action REJECT_REQUEST), kept encoded, or decoded to "/". Invalid
// percent-encodings, an encoded NUL (%00) and raw control characters are refused. A refused
// path is a malformed request: answer 400 without forwarding it.
//
// Everything here is a pure function of its arguments: safe to call concurrently. A path
// that is already canonical is returned without allocating.
package normalize

import (
	"errors"
	"fmt"
	"strings"
)

// EscapedSlashes says what to do with %2F and %5C (and a raw backslash) in a path.
type EscapedSlashes uint8

const (
	// Reject refuses the path with ErrEscapedSlash (answer 400). The default.
	Reject EscapedSlashes = iota
	// Keep leaves them percent-encoded (as %2F and %5C): they are not separators for
	// matching, so a rule on /a/b does not match /a%2Fb. Use it only when the application
	// does not decode them into separators either.
	Keep
	// Unescape decodes both into "/" before slashes are merged and dot segments resolved,
	// so /admin%2Fx matches and is forwarded as /admin/x.
	Unescape
)

// String returns the config spelling: "reject", "keep" or "unescape".
func (e EscapedSlashes) String() string {
	switch e {
	case Reject:
		return "reject"
	case Keep:
		return "keep"
	case Unescape:
		return "unescape"
	}
	return fmt.Sprintf("EscapedSlashes(%d)", uint8(e))
}

// ParseEscapedSlashes parses the config spelling of an EscapedSlashes; "" is Reject.
func ParseEscapedSlashes(s string) (EscapedSlashes, error) {
	switch s {
	case "", "reject":
		return Reject, nil
	case "keep":
		return Keep, nil
	case "unescape":
		return Unescape, nil
	}
	return Reject, fmt.Errorf("invalid escaped_slashes %q (want reject, keep or unescape)", s)
}

// Errors returned by Options.Path. Each means a malformed request (400).
var (
	ErrInvalidEncoding = errors.New("invalid percent-encoding in path")
	ErrEscapedSlash    = errors.New("percent-encoded slash or backslash in path")
	ErrInvalidChar     = errors.New("control character or NUL in path")
	ErrNotAbsolute     = errors.New("path does not start with /")
)

// Options says how paths are normalized. The zero value is the default: escaped slashes
// rejected, case-sensitive matching.
type Options struct {
	// EscapedSlashes is what to do with %2F, %5C and raw backslashes.
	EscapedSlashes EscapedSlashes
	// CaseInsensitive lower-cases (ASCII) the match key, so a rule on /admin also matches
	// /ADMIN. Patterns must be normalized with the same Options (policy does so).
	CaseInsensitive bool
}

// byte classes of a path
const (
	clsPlain  = 1 << iota // may appear raw in a canonical path: unreserved, sub-delims, ':', '@', '/'
	clsUnres              // unreserved (RFC 3986 §2.3)
	clsUpper              // 'A'..'Z'
	clsCtl                // control character: refused
	clsEncode             // must be percent-encoded
)

var class = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c < 0x20 || c == 0x7f:
			t[c] = clsCtl
		case c >= 0x80:
			t[c] = clsEncode
		}
	}
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyz0123456789-._~") {
		t[c] = clsPlain | clsUnres
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = clsPlain | clsUnres | clsUpper
	}
	for _, c := range []byte("!$&'()*+,;=:@/") {
		t[c] = clsPlain
	}
	for _, c := range []byte(" \"#<>?[\\]^`{|}") {
		t[c] = clsEncode
	}
	// '%' is neither: it starts an encoding.
	return t
}()

// Path normalizes p, a request path in escaped form, and returns the canonical path to
// forward and the key to match rules against; see the package documentation. The
// asterisk-form "*" (OPTIONS *) is returned unchanged and "" becomes "/". A path that
// cannot be normalized returns one of the Err* errors, wrapped with the offending detail.
func (o Options) Path(p string) (forward, match string, err error) {
	switch {
	case p == "":
		return "/", "/", nil
	case p == "*":
		return p, p, nil
	case p[0] != '/':
		return "", "", ErrNotAbsolute
	}
	if o.canonical(p) {
		return p, p, nil
	}
	dec, err := o.decode(p)
	if err != nil {
		return "", "", err
	}
	forward = resolve(dec, false)
	match = forward
	if strings.IndexByte(forward, ';') >= 0 {
		// Derived from forward, not from dec, so that the key is what a back end that
		// strips params sees in the path it is sent: "/a/;/.." is forwarded as "/a/", and
		// its key is "/a/", not the "/" of stripping params first.
		match = resolve(forward, true)
	}
	if o.CaseInsensitive {
		match = lower(match)
	}
	return forward, match, nil
}

// canonical reports whether p (starting with '/') is already both forward and match form.
// It is canonicalRef (in the tests) with the bytes that need no thought skipped through
// one table lookup each.
func (o Options) canonical(p string) bool {
	tab := &quiet
	if o.CaseInsensitive {
		tab = &quietLower
	}
	return o.canonicalWith(p, tab)
}

// canonicalWith is canonical with the table of quiet bytes tab, quiet or a subset of it.
func (o Options) canonicalWith(p string, tab *[256]bool) bool {
	prevSlash := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		if tab[c] {
			prevSlash = false
			continue
		}
		switch c {
		case '/':
			if prevSlash {
				return false
			}
			prevSlash = true
		case '.':
			if prevSlash {
				// "." or ".." segment?
				j := i + 1
				if j < len(p) && p[j] == '.' {
					j++
				}
				if j == len(p) || p[j] == '/' {
					return false
				}
			}
			prevSlash = false
		default: // ';', '%', a byte to encode, a control byte, upper case when CaseInsensitive
			return false
		}
	}
	return true
}

// PlainCanonical reports whether p is already canonical (Path returns it as both forward
// and match, without error) and made only of letters, digits, '/' and - . _ ~ $ & + , : = @,
// the bytes url.URL.EscapedPath writes as they are: a url.URL whose Path is p and whose
// RawPath is empty has p as its escaped path. It is a quick test for the usual request
// path, before EscapedPath and Path.
func (o Options) PlainCanonical(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	tab := &quietURL
	if o.CaseInsensitive {
		tab = &quietURLLower
	}
	return o.canonicalWith(p, tab)
}

// quietURL and quietURLLower are quiet and quietLower without the bytes EscapedPath
// escapes (! ' ( ) *).
var quietURL, quietURLLower = func() (q, ql [256]bool) {
	for c := 0; c < 256; c++ {
		esc := c == '!' || c == '\'' || c == '(' || c == ')' || c == '*'
		q[c], ql[c] = quiet[c] && !esc, quietLower[c] && !esc
	}
	return q, ql
}()

// quiet marks the bytes canonical passes over without a second look: those that may
// appear raw in a canonical path except '/', '.' and ';'. quietLower is quiet without
// upper-case letters, for CaseInsensitive.
var quiet, quietLower = func() (q, ql [256]bool) {
	for c := 0; c < 256; c++ {
		q[c] = class[c]&clsPlain != 0 && c != '/' && c != '.' && c != ';'
		ql[c] = q[c] && class[c]&clsUpper == 0
	}
	return q, ql
}()

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

const upperHex = "0123456789ABCDEF"

// decode returns p with unreserved characters decoded, other encodings in upper-case hex,
// raw bytes that need it encoded, and escaped slashes handled as o says.
func (o Options) decode(p string) (string, error) {
	var b strings.Builder
	b.Grow(len(p))
	slash := func(enc string) error {
		switch o.EscapedSlashes {
		case Keep:
			b.WriteString(enc)
		case Unescape:
			b.WriteByte('/')
		default:
			return ErrEscapedSlash
		}
		return nil
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) {
				return "", fmt.Errorf("%w: truncated %q", ErrInvalidEncoding, p[i:])
			}
			h, ok1 := unhex(p[i+1])
			l, ok2 := unhex(p[i+2])
			if !ok1 || !ok2 {
				return "", fmt.Errorf("%w: %q", ErrInvalidEncoding, p[i:i+3])
			}
			v := h<<4 | l
			i += 2
			switch {
			case v == 0:
				return "", fmt.Errorf("%w: encoded NUL", ErrInvalidChar)
			case v == '/':
				if err := slash("%2F"); err != nil {
					return "", err
				}
			case v == '\\':
				if err := slash("%5C"); err != nil {
					return "", err
				}
			case class[v]&clsUnres != 0:
				b.WriteByte(v)
			default:
				b.WriteByte('%')
				b.WriteByte(upperHex[v>>4])
				b.WriteByte(upperHex[v&15])
			}
		case c == '\\':
			if err := slash("%5C"); err != nil {
				return "", err
			}
		case class[c]&clsPlain != 0:
			b.WriteByte(c)
		case class[c]&clsCtl != 0:
			return "", fmt.Errorf("%w: byte 0x%02x", ErrInvalidChar, c)
		default:
			b.WriteByte('%')
			b.WriteByte(upperHex[c>>4])
			b.WriteByte(upperHex[c&15])
		}
	}
	return b.String(), nil
}

// lower returns s with ASCII letters lower-cased, except the hex digits of
// percent-encodings, which stay upper-case so that a match key is its own normal form.
func lower(s string) string {
	i := 0
	for ; i < len(s); i++ {
		if c := s[i]; c == '%' {
			i += 2
		} else if 'A' <= c && c <= 'Z' {
			break
		}
	}
	if i >= len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; c == '%' {
			i += 2
		} else if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// resolve merges slashes in p (which starts with '/') and removes dot segments; with
// params it first cuts every segment at its first ';'. A trailing slash is kept, as are the
// slashes that ".." and "." at the end leave (RFC 3986: /a/b/.. is /a/).
func resolve(p string, params bool) string {
	out := make([]byte, 0, len(p))
	out = append(out, '/')
	i := 1
	for i <= len(p) {
		j := strings.IndexByte(p[i:], '/')
		last := j < 0
		if last {
			j = len(p)
		} else {
			j += i
		}
		seg := p[i:j]
		if params {
			if k := strings.IndexByte(seg, ';'); k >= 0 {
				seg = seg[:k]
			}
		}
		switch {
		case seg == "" && !last:
			// empty segment from "//": merged
		case seg == "." || seg == "":
			// "." is dropped; the trailing slash before it (or before "") stays
		case seg == "..":
			// drop the last output segment, keeping its leading slash
			if len(out) > 1 {
				k := len(out) - 2 // out ends with '/'
				for out[k] != '/' {
					k--
				}
				out = out[:k+1]
			}
		default:
			out = append(out, seg...)
			if !last {
				out = append(out, '/')
			}
		}
		i = j + 1
	}
	return string(out)
}
