package mtls

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// certLayout writes a certificate, key and bundle into a directory the way some tool
// does, and says where a FileSource should look.
type certLayout struct {
	name string
	// files returns the cert, key and CA paths under dir.
	files func(dir string) (cert, key, ca string)
	// write installs new contents (the first call creates the layout).
	write func(t *testing.T, dir string, cert, key, ca []byte)
}

func plainFiles(dir string) (cert, key, ca string) {
	return filepath.Join(dir, "svc.pem"), filepath.Join(dir, "svc-key.pem"), filepath.Join(dir, "bundle.pem")
}

// renameLayout replaces each file by writing a temporary file and renaming it over the
// old one (what `ferry ca issue` and most editors do).
var renameLayout = certLayout{
	name:  "rename",
	files: plainFiles,
	write: func(t *testing.T, dir string, cert, key, ca []byte) {
		c, k, b := plainFiles(dir)
		for _, f := range []struct {
			p    string
			data []byte
		}{{b, ca}, {k, key}, {c, cert}} {
			if err := writeFileAtomic(f.p, f.data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	},
}

// inPlaceLayout truncates and rewrites the files themselves.
var inPlaceLayout = certLayout{
	name:  "in place",
	files: plainFiles,
	write: func(t *testing.T, dir string, cert, key, ca []byte) {
		c, k, b := plainFiles(dir)
		for _, f := range []struct {
			p    string
			data []byte
		}{{b, ca}, {k, key}, {c, cert}} {
			if err := os.WriteFile(f.p, f.data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	},
}

// kubeLayout is a Kubernetes secret volume: tls.crt -> ..data/tls.crt, and ..data is a
// symlink to a timestamped directory that the kubelet swaps atomically.
var kubeLayout = certLayout{
	name: "kubernetes symlink swap",
	files: func(dir string) (string, string, string) {
		return filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	},
	write: func(t *testing.T, dir string, cert, key, ca []byte) {
		ts := fmt.Sprintf("..%d", time.Now().UnixNano())
		if err := os.MkdirAll(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"tls.crt": cert, "tls.key": key, "ca.crt": ca} {
			if err := os.WriteFile(filepath.Join(dir, ts, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
			link := filepath.Join(dir, name)
			if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
				if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
					t.Fatal(err)
				}
			}
		}
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(ts, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if old != "" {
			if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
				t.Fatal(err)
			}
		}
	},
}

func svidPEM(t *testing.T, svid *x509svid.SVID, ca *CA) (cert, key, bundle []byte) {
	t.Helper()
	cert, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err = ca.Bundle(spiffeid.TrustDomain{}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, bundle
}

func newFileSource(t *testing.T, l certLayout, dir string, opts FileOptions) *FileSource {
	t.Helper()
	opts.CertFile, opts.KeyFile, opts.CAFile = l.files(dir)
	if opts.Debounce == 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	src, err := NewFileSource(opts)
	if err != nil {
		t.Fatalf("NewFileSource() error = %v", err)
	}
	return src
}

func currentSerial(src Source) string {
	m, err := src.Current()
	if err != nil {
		return ""
	}
	return FormatSerial(m.Leaf().SerialNumber)
}

// TestFileRotation rotates the server's and the client's files under each layout: new
// handshakes show the new serials on both sides, and a connection established before
// the rotation keeps working.
func TestFileRotation(t *testing.T) {
	for _, l := range []certLayout{renameLayout, inPlaceLayout, kubeLayout} {
		t.Run(l.name, func(t *testing.T) {
			ca := newTestCA(t, testTD)
			serverDir, clientDir := t.TempDir(), t.TempDir()
			s1, c1 := issueSVID(t, ca, "api"), issueSVID(t, ca, "web")
			cert, key, bundle := svidPEM(t, s1, ca)
			l.write(t, serverDir, cert, key, bundle)
			cert, key, bundle = svidPEM(t, c1, ca)
			l.write(t, clientDir, cert, key, bundle)

			serverSrc := newFileSource(t, l, serverDir, FileOptions{})
			defer serverSrc.Close()
			clientSrc := newFileSource(t, l, clientDir, FileOptions{})
			defer clientSrc.Close()
			if got, want := currentSerial(serverSrc), FormatSerial(s1.Certificates[0].SerialNumber); got != want {
				t.Fatalf("initial server serial = %q, want %q (status %+v)", got, want, serverSrc.Status())
			}

			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			stop := echoServer(t, tls.NewListener(inner, ServerConfig(serverSrc, nil)))
			defer stop()
			d := &Dialer{Source: clientSrc}
			dial := func() (*tls.Conn, *bufio.Reader) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := d.DialContext(ctx, "tcp", inner.Addr().String(), svcID(t, testTD, "api"))
				if err != nil {
					t.Fatalf("DialContext() error = %v", err)
				}
				return c, bufio.NewReader(c)
			}
			old, oldR := dial()
			defer old.Close()
			if got, want := roundTrip(t, old, oldR, "before"), FormatSerial(c1.Certificates[0].SerialNumber)+" before"; got != want {
				t.Fatalf("echo before rotation = %q, want %q", got, want)
			}

			s2, c2 := issueSVID(t, ca, "api"), issueSVID(t, ca, "web")
			cert, key, bundle = svidPEM(t, s2, ca)
			l.write(t, serverDir, cert, key, bundle)
			cert, key, bundle = svidPEM(t, c2, ca)
			l.write(t, clientDir, cert, key, bundle)
			s2Serial, c2Serial := FormatSerial(s2.Certificates[0].SerialNumber), FormatSerial(c2.Certificates[0].SerialNumber)
			eventually(t, "the server's rotation", func() bool { return currentSerial(serverSrc) == s2Serial })
			eventually(t, "the client's rotation", func() bool { return currentSerial(clientSrc) == c2Serial })

			fresh, freshR := dial()
			defer fresh.Close()
			if got := FormatSerial(fresh.ConnectionState().PeerCertificates[0].SerialNumber); got != s2Serial {
				t.Errorf("new handshake: server serial = %s, want the rotated %s", got, s2Serial)
			}
			if got, want := roundTrip(t, fresh, freshR, "after"), c2Serial+" after"; got != want {
				t.Errorf("new handshake: echo = %q, want %q (the rotated client serial)", got, want)
			}
			if got, want := roundTrip(t, old, oldR, "still"), FormatSerial(c1.Certificates[0].SerialNumber)+" still"; got != want {
				t.Errorf("established connection after rotation: echo = %q, want %q", got, want)
			}
			if st := serverSrc.Status(); st.Updates < 2 || st.Source != "files" {
				t.Errorf("Status() = %+v, want at least 2 updates from files", st)
			}
		})
	}
}

// TestFileCorruptReplacement: a replacement that does not load keeps the previous
// certificate in force, and a good one afterwards is picked up.
func TestFileCorruptReplacement(t *testing.T) {
	ca := newTestCA(t, testTD)
	otherCA := newTestCA(t, testTD)
	dir := t.TempDir()
	s1 := issueSVID(t, ca, "api")
	cert, key, bundle := svidPEM(t, s1, ca)
	renameLayout.write(t, dir, cert, key, bundle)
	var logs syncBuffer
	src := newFileSource(t, renameLayout, dir, FileOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer src.Close()
	s1Serial := FormatSerial(s1.Certificates[0].SerialNumber)
	certFile, keyFile, _ := renameLayout.files(dir)

	foreign := issueSVID(t, otherCA, "api")
	fCert, fKey, _ := svidPEM(t, foreign, otherCA)
	_, otherKey, _ := svidPEM(t, issueSVID(t, ca, "api"), ca)
	bad := []struct {
		name string
		do   func()
	}{
		{"garbage certificate", func() { _ = writeFileAtomic(certFile, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"), 0o600) }},
		{"truncated certificate", func() { _ = writeFileAtomic(certFile, cert[:len(cert)/2], 0o600) }},
		{"key of another certificate", func() {
			_ = writeFileAtomic(certFile, cert, 0o600)
			_ = writeFileAtomic(keyFile, otherKey, 0o600)
		}},
		{"certificate from another CA", func() {
			_ = writeFileAtomic(keyFile, fKey, 0o600)
			_ = writeFileAtomic(certFile, fCert, 0o600)
		}},
		{"certificate removed", func() { _ = os.Remove(certFile) }},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			before := src.Status().Failures
			b.do()
			eventually(t, "the failure to be recorded", func() bool { return src.Status().Failures > before })
			if got := currentSerial(src); got != s1Serial {
				t.Errorf("serial after a bad replacement = %q, want the previous %q", got, s1Serial)
			}
			res := handshake(t, ServerConfig(src, nil), ClientConfig(storeWith(t, ca, issueSVID(t, ca, "web")), svcID(t, testTD, "api")))
			if res.clientErr != nil {
				t.Fatalf("handshake after a bad replacement: %v", res.clientErr)
			}
			if got := FormatSerial(res.clientState.PeerCertificates[0].SerialNumber); got != s1Serial {
				t.Errorf("handshake after a bad replacement shows serial %s, want the previous %s", got, s1Serial)
			}
			st := src.Status()
			if st.LastError == "" || st.LastErrorAt.IsZero() {
				t.Errorf("Status() = %+v, want the last error recorded", st)
			}
			if l := logs.String(); !strings.Contains(l, `level=ERROR msg="certificate reload failed; keeping the previous certificate"`) ||
				!strings.Contains(l, "source=files") || strings.Contains(l, "error=<nil>") || !strings.Contains(l, "error=\"mtls: ") {
				t.Errorf("logs = %s, want an error saying the previous certificate is kept", l)
			}
		})
	}

	s2 := issueSVID(t, ca, "api")
	cert, key, bundle = svidPEM(t, s2, ca)
	renameLayout.write(t, dir, cert, key, bundle)
	eventually(t, "recovery", func() bool { return currentSerial(src) == FormatSerial(s2.Certificates[0].SerialNumber) })
	if st := src.Status(); st.LastError != "" {
		t.Errorf("Status().LastError = %q after recovery, want it cleared", st.LastError)
	}
}

// TestFilePolling: with change notifications effectively off (a one-hour debounce), the
// periodic re-stat still picks up a rotation, including of a directory that did not
// exist at start-up.
func TestFilePolling(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := filepath.Join(t.TempDir(), "later")
	src := newFileSource(t, renameLayout, dir, FileOptions{Debounce: time.Hour, PollInterval: 20 * time.Millisecond, Source: "mounted"})
	defer src.Close()
	if _, err := src.Current(); !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), "reading") {
		t.Fatalf("Current() before the files exist error = %v, want ErrNoCertificate with the read error", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s1 := issueSVID(t, ca, "api")
	cert, key, bundle := svidPEM(t, s1, ca)
	renameLayout.write(t, dir, cert, key, bundle)
	eventually(t, "the first load by polling", func() bool { return currentSerial(src) == FormatSerial(s1.Certificates[0].SerialNumber) })
	s2 := issueSVID(t, ca, "api")
	cert, key, bundle = svidPEM(t, s2, ca)
	renameLayout.write(t, dir, cert, key, bundle)
	eventually(t, "the rotation by polling", func() bool { return currentSerial(src) == FormatSerial(s2.Certificates[0].SerialNumber) })
	if m, _ := src.Current(); m.Source() != "mounted" {
		t.Errorf("Source() = %q, want mounted", m.Source())
	}
}

func TestFileReload(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	cert, key, bundle := svidPEM(t, issueSVID(t, ca, "api"), ca)
	renameLayout.write(t, dir, cert, key, bundle)
	src := newFileSource(t, renameLayout, dir, FileOptions{Debounce: time.Hour, PollInterval: -1})
	defer src.Close()
	if err := src.Reload(); err != nil {
		t.Errorf("Reload(unchanged good files) = %v, want nil", err)
	}
	certFile, _, _ := renameLayout.files(dir)
	if err := os.WriteFile(certFile, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	err1 := src.Reload()
	err2 := src.Reload()
	if err1 == nil || err2 == nil || err1.Error() != err2.Error() {
		t.Errorf("Reload(corrupt) = %v, then %v; want the same error twice", err1, err2)
	}
	if st := src.Status(); st.Failures != 1 {
		t.Errorf("Failures = %d, want 1 (unchanged files are not parsed again)", st.Failures)
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	if _, err := NewFileSource(FileOptions{CertFile: "a", KeyFile: "b"}); err == nil {
		t.Error("NewFileSource(no ca_file) error = nil, want one")
	}
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	cert, key, bundle := svidPEM(t, issueSVID(t, ca, "api"), ca)
	renameLayout.write(t, dir, cert, key, bundle)
	src := newFileSource(t, renameLayout, dir, FileOptions{TrustDomain: spiffeid.RequireTrustDomainFromString("other.org")})
	defer src.Close()
	if _, err := src.Current(); err == nil || !strings.Contains(err.Error(), "not in trust domain") {
		t.Errorf("Current() with a trust-domain mismatch error = %v, want 'not in trust domain'", err)
	}
}
