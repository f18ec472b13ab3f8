package mtls

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestXFCCString(t *testing.T) {
	tests := []struct {
		name string
		x    XFCC
		want string
	}{
		{"ferry", XFCC{By: "spiffe://mesh.local/svc/api", Hash: "abc123", URI: "spiffe://mesh.local/svc/web"},
			"By=spiffe://mesh.local/svc/api;Hash=abc123;URI=spiffe://mesh.local/svc/web"},
		{"subject quoted", XFCC{Hash: "h", Subject: "CN=web,O=Ferry"}, `Hash=h;Subject="CN=web,O=Ferry"`},
		{"quotes escaped", XFCC{Subject: `CN="odd";x`}, `Subject="CN=\"odd\";x"`},
		{"backslash escaped", XFCC{Subject: `a\b`}, `Subject="a\\b"`},
		{"dns repeated", XFCC{URI: "spiffe://a/b", DNS: []string{"a.local", "b.local"}}, "URI=spiffe://a/b;DNS=a.local;DNS=b.local"},
		{"empty", XFCC{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.x.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if tt.want == "" {
				return
			}
			back, err := ParseXFCC(tt.want)
			if err != nil || len(back) != 1 || !reflect.DeepEqual(back[0], tt.x) {
				t.Errorf("ParseXFCC(%q) = %+v, %v, want [%+v]", tt.want, back, err, tt.x)
			}
		})
	}
}

func TestParseXFCC(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []XFCC
	}{
		{"empty", "", nil},
		{"envoy docs example",
			`By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com`,
			[]XFCC{{By: "http://frontend.lyft.com", Hash: "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
				Subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client", URI: "http://testclient.lyft.com"}}},
		{"two proxies, spaces, case-insensitive keys",
			`By=spiffe://a/svc/x;URI=spiffe://a/svc/y, by=spiffe://a/svc/z ;uri=spiffe://a/svc/x;dns=x.local;Unknown=1`,
			[]XFCC{{By: "spiffe://a/svc/x", URI: "spiffe://a/svc/y"}, {By: "spiffe://a/svc/z", URI: "spiffe://a/svc/x", DNS: []string{"x.local"}}}},
		{"quoted comma does not split", `Subject="a,b";URI=u`, []XFCC{{Subject: "a,b", URI: "u"}}},
		{"cert kept encoded", `Cert="-----BEGIN%20CERTIFICATE-----%0A"`, []XFCC{{Cert: "-----BEGIN%20CERTIFICATE-----%0A"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseXFCC(tt.in)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseXFCC(%q) = %+v, %v, want %+v", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"By", "By=x;Hash", `Subject="unterminated`, `Subject="a"b`, "=x,", "By=x,"} {
		if got, err := ParseXFCC(bad); err == nil {
			t.Errorf("ParseXFCC(%q) = %+v, want an error", bad, got)
		}
	}
	if got := FormatXFCC([]XFCC{{By: "a", URI: "b"}, {By: "c", URI: "d"}}); got != "By=a;URI=b,By=c;URI=d" {
		t.Errorf("FormatXFCC() = %q, want %q", got, "By=a;URI=b,By=c;URI=d")
	}
}

func TestNewXFCCFromHandshake(t *testing.T) {
	ca := newTestCA(t, testTD)
	web := issueSVID(t, ca, "web")
	res := handshake(t, ServerConfig(storeWith(t, ca, issueSVID(t, ca, "api")), nil), ClientConfig(storeWith(t, ca, web), svcID(t, testTD, "api")))
	if res.serverErr != nil {
		t.Fatal(res.serverErr)
	}
	x, err := NewXFCC(svcID(t, testTD, "api"), &res.serverState)
	if err != nil {
		t.Fatalf("NewXFCC() error = %v", err)
	}
	sum := sha256.Sum256(web.Certificates[0].Raw)
	want := "By=spiffe://mesh.local/svc/api;Hash=" + hex.EncodeToString(sum[:]) + ";URI=spiffe://mesh.local/svc/web"
	if got := x.String(); got != want {
		t.Errorf("NewXFCC().String() = %q, want %q", got, want)
	}
	if _, err := NewXFCC(svcID(t, testTD, "api"), nil); !errors.Is(err, ErrNoPeerID) {
		t.Errorf("NewXFCC(plaintext) error = %v, want ErrNoPeerID", err)
	}
	if _, err := NewXFCC(svcID(t, testTD, "api"), &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{}}}); err == nil || !strings.Contains(err.Error(), "peer certificate") {
		t.Errorf("NewXFCC(certificate without a URI SAN) error = %v, want one", err)
	}
}
