package mtls

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// XFCCHeader is the header that tells the application who called it, in Envoy's
// x-forwarded-client-cert format. The inbound proxy must delete any copy arriving from
// the peer before setting its own, so that a caller cannot forge it.
const XFCCHeader = "X-Forwarded-Client-Cert"

// XFCC is one element of an X-Forwarded-Client-Cert header: what one proxy learned from
// the client certificate it verified. Empty fields are left out of the header. A value is
// a plain struct, safe to copy.
type XFCC struct {
	// By is the SPIFFE ID (URI SAN) of the proxy that verified the certificate.
	By string
	// Hash is the hex SHA-256 of the client certificate's DER.
	Hash string
	// Cert and Chain are the URL-encoded PEM of the certificate and its chain, as Envoy
	// writes them; Ferry does not set them.
	Cert, Chain string
	// Subject is the client certificate's subject.
	Subject string
	// URI is the client certificate's URI SAN: the caller's SPIFFE ID.
	URI string
	// DNS are the client certificate's DNS SANs.
	DNS []string
}

// NewXFCC describes the peer of a verified mTLS connection (r.TLS for HTTP) as seen by
// the proxy whose identity is local: By=<local>;Hash=<sha256>;URI=<peer SPIFFE ID>.
func NewXFCC(local spiffeid.ID, cs *tls.ConnectionState) (XFCC, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return XFCC{}, ErrNoPeerID
	}
	peer, err := PeerID(cs)
	if err != nil {
		return XFCC{}, err
	}
	sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
	return XFCC{By: local.String(), Hash: hex.EncodeToString(sum[:]), URI: peer.String()}, nil
}

// String formats the element: key=value pairs joined by ";", in Envoy's key order, with
// values that contain `,`, `;`, `=` or `"` double-quoted (and `"` and `\` escaped).
func (x XFCC) String() string {
	var b strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteXFCC(v))
	}
	add("By", x.By)
	add("Hash", x.Hash)
	add("Cert", x.Cert)
	add("Chain", x.Chain)
	add("Subject", x.Subject)
	add("URI", x.URI)
	for _, d := range x.DNS {
		add("DNS", d)
	}
	return b.String()
}

// FormatXFCC joins elements into a header value, separated by commas.
func FormatXFCC(elems []XFCC) string {
	parts := make([]string, len(elems))
	for i, e := range elems {
		parts[i] = e.String()
	}
	return strings.Join(parts, ",")
}

func quoteXFCC(v string) string {
	if !strings.ContainsAny(v, `,;="\`) {
		return v
	}
	var b strings.Builder
	b.Grow(len(v) + 2)
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

// ParseXFCC parses an X-Forwarded-Client-Cert header value into its elements, one per
// proxy, oldest first. Keys are case-insensitive; unknown keys are ignored. An empty
// value has no elements.
func ParseXFCC(v string) ([]XFCC, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var out []XFCC
	var cur XFCC
	i := 0
	for {
		for i < len(v) && v[i] == ' ' {
			i++
		}
		j := i
		for j < len(v) && v[j] != '=' && v[j] != ';' && v[j] != ',' {
			j++
		}
		if j == len(v) || v[j] != '=' {
			return nil, fmt.Errorf("mtls: malformed %s at byte %d: key without '='", XFCCHeader, i)
		}
		key := strings.TrimSpace(v[i:j])
		i = j + 1
		var val string
		if i < len(v) && v[i] == '"' {
			var b strings.Builder
			i++
			closed := false
			for i < len(v) {
				c := v[i]
				i++
				if c == '\\' && i < len(v) {
					b.WriteByte(v[i])
					i++
					continue
				}
				if c == '"' {
					closed = true
					break
				}
				b.WriteByte(c)
			}
			if !closed {
				return nil, fmt.Errorf("mtls: malformed %s: unterminated quoted value of %s", XFCCHeader, key)
			}
			val = b.String()
		} else {
			j = i
			for j < len(v) && v[j] != ';' && v[j] != ',' {
				j++
			}
			val = strings.TrimSpace(v[i:j])
			i = j
		}
		switch strings.ToLower(key) {
		case "by":
			cur.By = val
		case "hash":
			cur.Hash = val
		case "cert":
			cur.Cert = val
		case "chain":
			cur.Chain = val
		case "subject":
			cur.Subject = val
		case "uri":
			cur.URI = val
		case "dns":
			cur.DNS = append(cur.DNS, val)
		}
		for i < len(v) && v[i] == ' ' {
			i++
		}
		if i == len(v) {
			return append(out, cur), nil
		}
		switch v[i] {
		case ';':
		case ',':
			out = append(out, cur)
			cur = XFCC{}
		default:
			return nil, fmt.Errorf("mtls: malformed %s at byte %d: want ';' or ',' after the value of %s", XFCCHeader, i, key)
		}
		i++
	}
}
