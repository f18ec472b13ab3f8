package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

// ferryCmd runs the CLI in-process and returns its exit code and output.
func ferryCmd(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestCACreate(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := filepath.Join(t.TempDir(), "ca")
	code, out, errOut := ferryCmd("ca", "create", "--dir", dir, "--trust-domain", "example.org", "--ttl", "48h")
	if code != 0 {
		t.Fatalf("ca create = %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "created CA for trust domain example.org") {
		t.Errorf("ca create output = %q, want it to name the trust domain", out)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), certPEM)
	if err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("ca.pem = %v, %v, want one CA certificate", b, err)
	}
	ca := b.X509Authorities()[0]
	if !ca.IsCA || ca.PublicKeyAlgorithm != x509.ECDSA || len(ca.URIs) != 1 || ca.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("CA: IsCA=%v alg=%v URIs=%v, want an ECDSA CA for spiffe://example.org", ca.IsCA, ca.PublicKeyAlgorithm, ca.URIs)
	}
	if life := ca.NotAfter.Sub(ca.NotBefore); life != 48*time.Hour+time.Minute {
		t.Errorf("CA lifetime = %s, want 48h (+1m backdating)", life)
	}
	fi, err := os.Stat(filepath.Join(dir, "ca-key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca-key.pem = %v, %v, want mode 0600", fi, err)
	}

	// Refuses to overwrite; --force replaces.
	code, _, errOut = ferryCmd("ca", "create", "--dir", dir)
	if code != 1 || !strings.Contains(errOut, "already exists") || !strings.Contains(errOut, "--force") {
		t.Errorf("second ca create = %d %q, want 1 and a refusal mentioning --force", code, errOut)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "ca.pem")); !bytes.Equal(again, certPEM) {
		t.Error("refused ca create changed ca.pem")
	}
	if code, _, errOut = ferryCmd("ca", "create", "--dir", dir, "--force"); code != 0 {
		t.Fatalf("ca create --force = %d %q", code, errOut)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "ca.pem")); bytes.Equal(again, certPEM) {
		t.Error("ca create --force left the old CA")
	}
}

func TestCAIssue(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "certs")
	if code, _, errOut := ferryCmd("ca", "create", "--dir", dir); code != 0 {
		t.Fatalf("ca create = %d %q", code, errOut)
	}
	code, stdout, errOut := ferryCmd("ca", "issue", "--dir", dir, "--service", "api", "--out", out,
		"--ttl", "2h", "--dns", "api.local,localhost", "--dns", "api")
	if code != 0 {
		t.Fatalf("ca issue = %d %q", code, errOut)
	}
	if !strings.Contains(stdout, "issued spiffe://mesh.local/svc/api") || !strings.Contains(stdout, filepath.Join(out, "api.pem")) {
		t.Errorf("ca issue output = %q, want the ID and the paths", stdout)
	}
	svid, err := x509svid.Load(filepath.Join(out, "api.pem"), filepath.Join(out, "api-key.pem"))
	if err != nil {
		t.Fatalf("x509svid.Load() error = %v", err)
	}
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("mesh.local"), filepath.Join(out, "bundle.pem"))
	if err != nil {
		t.Fatalf("x509bundle.Load() error = %v", err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil || id.String() != "spiffe://mesh.local/svc/api" {
		t.Errorf("Verify(issued) = %s, %v, want spiffe://mesh.local/svc/api", id, err)
	}
	leaf := svid.Certificates[0]
	if !slices.Equal(leaf.DNSNames, []string{"api.local", "localhost", "api"}) {
		t.Errorf("DNS SANs = %v, want [api.local localhost api]", leaf.DNSNames)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature ||
		!slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("usages = %v %v, want digital signature; server and client auth", leaf.KeyUsage, leaf.ExtKeyUsage)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life != 2*time.Hour+time.Minute {
		t.Errorf("lifetime = %s, want 2h (+1m backdating)", life)
	}
	if fi, err := os.Stat(filepath.Join(out, "api-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("api-key.pem = %v, %v, want mode 0600", fi, err)
	}

	// Issuing again rotates: same files, new serial. Without --out it writes into --dir.
	if code, _, errOut := ferryCmd("ca", "issue", "--dir", dir, "--service", "api", "--out", out); code != 0 {
		t.Fatalf("second ca issue = %d %q", code, errOut)
	}
	again, err := x509svid.Load(filepath.Join(out, "api.pem"), filepath.Join(out, "api-key.pem"))
	if err != nil || again.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("re-issue = %v, same serial %v; want a new certificate", err, again != nil)
	}
	if code, _, errOut := ferryCmd("ca", "issue", "--dir", dir, "--service", "web", "--id", "spiffe://mesh.local/ns/default/dc/dc1/svc/web"); code != 0 {
		t.Fatalf("ca issue --id = %d %q", code, errOut)
	}
	web, err := x509svid.Load(filepath.Join(dir, "web.pem"), filepath.Join(dir, "web-key.pem"))
	if err != nil || web.ID.String() != "spiffe://mesh.local/ns/default/dc/dc1/svc/web" {
		t.Errorf("ca issue --id wrote %v, %v, want the Consul-form ID", web, err)
	}
}

func TestCAErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	if code, _, errOut := ferryCmd("ca", "create", "--dir", dir); code != 0 {
		t.Fatalf("ca create = %d %q", code, errOut)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no subcommand", []string{"ca"}, 2, "Usage"},
		{"unknown subcommand", []string{"ca", "sign"}, 2, `unknown command "sign"`},
		{"create without dir", []string{"ca", "create"}, 2, "usage: ferry ca create"},
		{"create bad trust domain", []string{"ca", "create", "--dir", t.TempDir(), "--trust-domain", "spiffe://x"}, 2, "invalid trust domain"},
		{"create bad ttl", []string{"ca", "create", "--dir", t.TempDir(), "--ttl", "-1h"}, 2, "positive"},
		{"create unknown flag", []string{"ca", "create", "--dir", t.TempDir(), "--bits", "4096"}, 2, "flag provided but not defined"},
		{"issue without service", []string{"ca", "issue", "--dir", dir}, 2, "usage: ferry ca issue"},
		{"issue without CA", []string{"ca", "issue", "--dir", t.TempDir(), "--service", "api"}, 1, "ferry ca create --dir"},
		{"issue other trust domain", []string{"ca", "issue", "--dir", dir, "--service", "api", "--trust-domain", "other.org"}, 1, "is for trust domain mesh.local, not other.org"},
		{"issue bad service", []string{"ca", "issue", "--dir", dir, "--service", "a b"}, 2, "path segment"},
		{"issue id in other trust domain", []string{"ca", "issue", "--dir", dir, "--service", "api", "--id", "spiffe://other.org/svc/api"}, 1, "trust domain"},
		{"issue empty dns", []string{"ca", "issue", "--dir", dir, "--service", "api", "--dns", "a,,b"}, 2, "empty DNS name"},
		{"issue stray argument", []string{"ca", "issue", "--dir", dir, "--service", "api", "extra"}, 2, "usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := ferryCmd(tt.args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("ferry %v = %d %q, want %d and stderr containing %q", tt.args, code, errOut, tt.wantCode, tt.wantErr)
			}
		})
	}
	code, out, _ := ferryCmd("ca", "help")
	if code != 0 || !strings.Contains(out, "ferry ca create --dir DIR") {
		t.Errorf("ferry ca help = %d %q, want 0 and the usage", code, out)
	}
	if code, out, _ := ferryCmd("help"); code != 0 || !strings.Contains(out, "ferry ca create|issue") {
		t.Errorf("ferry help = %d %q, want the ca command listed", code, out)
	}
}
