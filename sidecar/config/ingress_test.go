package config

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCert writes a self-signed certificate for names and its key into dir as
// NAME.pem and NAME-key.pem, and returns the two paths. ed makes it an Ed25519 one.
func testCert(t *testing.T, dir, name string, ed bool, names ...string) (string, string) {
	t.Helper()
	var pub, priv any
	if ed {
		p, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub, priv = p, k
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub, priv = &k.PublicKey, k
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: names, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestParseIngress(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey := testCert(t, dir, "a", false, "a.example")
	bCert, bKey := testCert(t, dir, "b", false, "*.b.example")
	c, err := parse(t, fmt.Sprintf(`
service: web
inbound: {address: 127.0.0.1:21000, target: 127.0.0.1:8080}
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
ingress:
  - address: 0.0.0.0:8443
    certificates:
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q, key_file: %q}
    target: 127.0.0.1:8080
  - address: 127.0.0.1:9443
    protocol: tcp
    min_version: "1.3"
    certificates: [{cert_file: %q, key_file: %q}]
    upstream: api
    idle_timeout: 30s
`, aCert, aKey, bCert, bKey, bCert, bKey))
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	if got := len(c.Ingress); got != 2 {
		t.Fatalf("len(ingress) = %d, want 2", got)
	}
	in0, in1 := &c.Ingress[0], &c.Ingress[1]
	checks := []struct {
		name      string
		got, want any
	}{
		{"ingress[0].protocol", in0.Protocol, ProtocolHTTP},
		{"ingress[0].min_version", in0.MinVersion, TLSVersion12},
		{"ingress[0].idle_timeout", in0.IdleTimeout.D(), DefaultHTTPIdleTimeout},
		{"ingress[0].read_header_timeout", in0.ReadHeaderTimeout.D(), DefaultReadHeaderTimeout},
		{"ingress[0].max_header_bytes", in0.MaxHeaderBytes, DefaultMaxHeaderBytes},
		{"ingress[0].connect_timeout", in0.ConnectTimeout.D(), DefaultConnectTimeout},
		{"ingress[0].certificates[1].key_file", in0.Certificates[1].KeyFile, bKey},
		{"ingress[0].target", in0.Target, "127.0.0.1:8080"},
		{"ingress[0].target_protocol", in0.TargetProtocol, ProtocolAuto},
		{"ingress[1].target_protocol", in1.TargetProtocol, ""},
		{"ingress[1].protocol", in1.Protocol, ProtocolTCP},
		{"ingress[1].min_version", in1.MinVersion, TLSVersion13},
		{"ingress[1].idle_timeout", in1.IdleTimeout.D(), 30 * time.Second},
		{"ingress[1].upstream", in1.Upstream, "api"},
	}
	for _, tc := range checks {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() of a parsed config = %v, want nil", err)
	}
}

func TestIngressErrors(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey := testCert(t, dir, "a", false, "a.example")
	_, bKey := testCert(t, dir, "b", false, "b.example")
	edCert, edKey := testCert(t, dir, "ed", true, "ed.example")
	missing := filepath.Join(dir, "missing.pem")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	head := `
service: web
inbound: {address: 127.0.0.1:21000, target: 127.0.0.1:8080}
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
ingress:
`
	ok := fmt.Sprintf("{cert_file: %q, key_file: %q}", aCert, aKey)
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "routes",
			doc: head + fmt.Sprintf(`  - address: 0.0.0.0:8443
    target: 127.0.0.1:8080
    certificates: [%s]
    routes:
      - {match: {prefix: /api/}, upstream: nope}
  - address: 0.0.0.0:8444
    protocol: tcp
    target: 127.0.0.1:5432
    certificates: [%s]
    routes: [{match: {prefix: /}}]
`, ok, ok),
			want: []string{
				`ferry.yaml:10: ingress[0].routes[0].upstream: unknown upstream "nope" (have api)`,
				`ferry.yaml:15: ingress[1].routes: routes apply only to http listeners (protocol is tcp)`,
			},
		},
		{
			name: "certificate files",
			doc: head + fmt.Sprintf(`  - address: 0.0.0.0:8443
    target: 127.0.0.1:8080
    certificates:
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q, key_file: %q}
      - {cert_file: %q}
      - {cert_file: %q, key_file: /dev/zero}
`, missing, aKey, aCert, bKey, notPEM, aKey, edCert, edKey, aCert, aCert),
			want: []string{
				`ferry.yaml:9: ingress[0].certificates[0].cert_file: cannot read certificate: ` + missing + `: no such file or directory`,
				`ferry.yaml:10: ingress[0].certificates[1].key_file: ` + bKey + ` does not hold the private key of ` + aCert,
				`ferry.yaml:11: ingress[0].certificates[2].cert_file: ` + notPEM + ` holds no PEM CERTIFICATE block`,
				`ferry.yaml:12: ingress[0].certificates[3].cert_file: ` + edCert + `: Ed25519 key (want RSA or ECDSA)`,
				`ferry.yaml:13: ingress[0].certificates[4].key_file: missing key_file`,
				`ferry.yaml:14: ingress[0].certificates[5].key_file: cannot read key: /dev/zero: not a regular file`,
			},
		},
		{
			name: "target and upstream",
			doc: head + fmt.Sprintf(`  - {address: 0.0.0.0:8443, certificates: [%s]}
  - {address: 0.0.0.0:8444, certificates: [%s], target: 127.0.0.1:8080, upstream: api}
  - {address: 0.0.0.0:8445, certificates: [%s], upstream: apx}
  - {address: 0.0.0.0:8446, certificates: [%s], target: "localhost"}
  - {address: 0.0.0.0:8447, certificates: [%s], target: 127.0.0.1:8080, target_protocol: h3}
  - {address: 0.0.0.0:8448, certificates: [%s], upstream: api, target_protocol: http1}
`, ok, ok, ok, ok, ok, ok),
			want: []string{
				`ferry.yaml:6: ingress[0]: want one of target (the local application) and upstream`,
				`ferry.yaml:7: ingress[1].upstream: want only one of target and upstream, got both`,
				`ferry.yaml:8: ingress[2].upstream: unknown upstream "apx" (have api)`,
				`ferry.yaml:9: ingress[3].target: invalid target "localhost"`,
				`ferry.yaml:10: ingress[4].target_protocol: unknown protocol "h3" (want auto, http1 or http2)`,
				`ferry.yaml:11: ingress[5].target_protocol: target_protocol applies to http listeners with a target only`,
			},
		},
		{
			name: "listener settings and address clashes",
			doc: head + fmt.Sprintf(`  - {address: 127.0.0.1:9191, certificates: [%s], target: 127.0.0.1:8080}
  - {address: 0.0.0.0:21000, certificates: [%s], target: 127.0.0.1:8080}
  - {address: 0.0.0.0:8443, certificates: [%s], target: 127.0.0.1:8080, min_version: "1.1", protocol: udp}
  - {address: 127.0.0.1:8443, certificates: [], target: 127.0.0.1:8080, connect_timeout: 0s}
`, ok, ok, ok),
			want: []string{
				`ferry.yaml:6: ingress[0].address: address 127.0.0.1:9191 already used by outbound[0].address, line 3`,
				`ferry.yaml:7: ingress[1].address: address 0.0.0.0:21000 overlaps inbound.address (127.0.0.1:21000, line 2)`,
				`ferry.yaml:8: ingress[2].protocol: unknown protocol "udp"`,
				`ferry.yaml:8: ingress[2].min_version: unknown TLS version "1.1" (want 1.2 or 1.3)`,
				`ferry.yaml:9: ingress[3].address: address 127.0.0.1:8443 overlaps ingress[2].address (0.0.0.0:8443, line 8)`,
				`ferry.yaml:9: ingress[3].certificates: missing certificates`,
				`ferry.yaml:9: ingress[3].connect_timeout: must be positive, got 0s`,
			},
		},
		{
			name: "unknown key",
			doc: head + fmt.Sprintf(`  - {address: 0.0.0.0:8443, certificates: [%s], target: 127.0.0.1:8080, sni: a.example}
  - address: 0.0.0.0:8444
    target: 127.0.0.1:8080
    certificates:
      - {cert_file: %q, kye_file: %q}
      - not a mapping
      - {cert_file: %q, key_file: %q}
`, ok, aCert, aKey, missing, aKey),
			want: []string{
				`ferry.yaml:6: ingress[0].sni: unknown key (known keys: address, protocol, idle_timeout, read_header_timeout, max_header_bytes, certificates, min_version, target, upstream, target_protocol, connect_timeout, request_timeout, routes)`,
				`ferry.yaml:10: ingress[1].certificates[0].kye_file: unknown key (known keys: cert_file, key_file)`,
				`ferry.yaml:11: ingress[1].certificates[1]: `,
				`ferry.yaml:12: ingress[1].certificates[2].cert_file: cannot read certificate: ` + missing,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.doc)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse() error = %v, want config.Errors", err)
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("Parse() error =\n%v\nwant %d problems:\n%s", err, len(tc.want), strings.Join(tc.want, "\n"))
			}
			for i, e := range errs {
				if !strings.HasPrefix(e.Error(), tc.want[i]) {
					t.Errorf("error %d = %q, want prefix %q", i, e.Error(), tc.want[i])
				}
			}
		})
	}
}
