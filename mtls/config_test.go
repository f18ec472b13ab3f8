package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

func TestServerConfigHandshakes(t *testing.T) {
	ca := newTestCA(t, testTD)
	otherCA := newTestCA(t, testTD) // same trust domain, different keys
	foreignTD := spiffeid.RequireTrustDomainFromString("partner.org")
	foreignCA := newTestCA(t, foreignTD)

	server := storeWith(t, ca, issueSVID(t, ca, "api"))
	// A server that also trusts partner.org (federation), to show that the default
	// authorizer still admits its own trust domain only.
	federated := storeWithBundles(t, issueSVID(t, ca, "api"), ca, foreignCA)
	web := svcID(t, testTD, "web")
	expired := issueAt(t, ca, web, time.Now().Add(-48*time.Hour), time.Hour)

	tests := []struct {
		name      string
		server    Source
		authorize Authorizer
		client    Source // nil: no client certificate
		maxVer    uint16
		wantPeer  string // the peer ID the server sees; "" = refused
		wantErr   string // text in the server's error when refused
	}{
		{name: "valid client", server: server, client: storeWith(t, ca, issueSVID(t, ca, "web")),
			wantPeer: "spiffe://mesh.local/svc/web"},
		{name: "tls 1.2 client", server: server, client: storeWith(t, ca, issueSVID(t, ca, "web")), maxVer: tls.VersionTLS12,
			wantPeer: "spiffe://mesh.local/svc/web"},
		{name: "consul form identity", server: server,
			client:   storeWith(t, ca, issueAt(t, ca, spiffeid.RequireFromString("spiffe://mesh.local/ns/default/dc/dc1/svc/web"), time.Now(), time.Hour)),
			wantPeer: "spiffe://mesh.local/ns/default/dc/dc1/svc/web"},
		{name: "authorizer allows", server: server, authorize: tlsconfig.AuthorizeID(web),
			client: storeWith(t, ca, issueSVID(t, ca, "web")), wantPeer: web.String()},
		{name: "no client certificate", server: server, client: nil, wantErr: "client didn't provide a certificate"},
		{name: "client from another CA", server: server, client: rawStore(t, ca, issueSVID(t, otherCA, "web")),
			wantErr: "certificate signed by unknown authority"},
		{name: "expired client", server: server, client: rawStore(t, ca, expired), wantErr: "expired"},
		{name: "authorizer rejects", server: server, authorize: tlsconfig.AuthorizeID(svcID(t, testTD, "frontend")),
			client: storeWith(t, ca, issueSVID(t, ca, "web")), wantErr: "unexpected ID"},
		{name: "service matcher rejects", server: server, authorize: tlsconfig.AdaptMatcher(MatchService(testTD, "frontend")),
			client: storeWith(t, ca, issueSVID(t, ca, "web")), wantErr: `is not service "frontend"`},
		{name: "default authorizer: other trust domain", server: federated,
			client: storeWithBundles(t, issueSVID(t, foreignCA, "web"), foreignCA, ca), wantErr: `unexpected trust domain "partner.org"`},
		{name: "explicit authorizer: federated peer allowed", server: federated, authorize: tlsconfig.AuthorizeMemberOf(foreignTD),
			client: storeWithBundles(t, issueSVID(t, foreignCA, "web"), foreignCA, ca), wantPeer: "spiffe://partner.org/svc/web"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scfg := ServerConfig(tt.server, tt.authorize)
			var ccfg *tls.Config
			if tt.client != nil {
				ccfg = ClientConfig(tt.client, svcID(t, testTD, "api"))
			} else {
				// No client certificate, but still check the server.
				ccfg = ClientConfig(NewStore("empty"), svcID(t, testTD, "api"))
				ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return &tls.Certificate{}, nil
				}
				ccfg.VerifyConnection = nil
			}
			ccfg.MaxVersion = tt.maxVer
			res := handshake(t, scfg, ccfg)
			if tt.wantPeer == "" {
				if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), tt.wantErr) {
					t.Fatalf("server handshake error = %v, want one containing %q", res.serverErr, tt.wantErr)
				}
				if res.clientErr == nil || res.reply != "" {
					t.Errorf("client got %q, %v; want its connection refused", res.reply, res.clientErr)
				}
				if tt.client != nil && tt.wantErr != "client didn't provide a certificate" {
					pe, ok := asPeerError(res.serverErr)
					if !ok {
						t.Fatalf("server error %T is not a *PeerError", res.serverErr)
					}
					if pe.Got.IsZero() {
						t.Errorf("PeerError.Got is zero, want the client's ID")
					}
				}
				return
			}
			if res.serverErr != nil || res.clientErr != nil {
				t.Fatalf("handshake: server error = %v, client error = %v; want success", res.serverErr, res.clientErr)
			}
			if res.reply != "hello" {
				t.Errorf("reply = %q, want hello", res.reply)
			}
			peer, err := PeerID(&res.serverState)
			if err != nil || peer.String() != tt.wantPeer {
				t.Errorf("PeerID(server side) = %s, %v, want %s", peer, err, tt.wantPeer)
			}
			if got := res.serverState.NegotiatedProtocol; got != ALPNHTTP2 {
				t.Errorf("NegotiatedProtocol = %q, want h2", got)
			}
			wantVer := uint16(tls.VersionTLS13)
			if tt.maxVer != 0 {
				wantVer = tt.maxVer
			}
			if res.serverState.Version != wantVer {
				t.Errorf("Version = %x, want %x", res.serverState.Version, wantVer)
			}
		})
	}
}

func TestServerRefusesPlaintext(t *testing.T) {
	ca := newTestCA(t, testTD)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := WrapListener(inner, ModeStrict, ServerConfig(storeWith(t, ca, issueSVID(t, ca, "api")), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	result := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			result <- err
			return
		}
		defer c.Close()
		// The application would read here; the handshake must fail first.
		_, err = c.Read(make([]byte, 1))
		result <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	err = <-result
	var rhe tls.RecordHeaderError
	if !errors.As(err, &rhe) {
		t.Errorf("server Read() error = %v, want a tls.RecordHeaderError (plaintext refused)", err)
	}
}

func TestClientConfigVerifiesServer(t *testing.T) {
	ca := newTestCA(t, testTD)
	otherCA := newTestCA(t, testTD)
	client := storeWith(t, ca, issueSVID(t, ca, "web"))
	api := svcID(t, testTD, "api")
	expiredAPI := issueAt(t, ca, api, time.Now().Add(-48*time.Hour), time.Hour)

	tests := []struct {
		name     string
		server   Source
		expected spiffeid.ID
		wantGot  string // PeerError.Got; "" = success
		wantErr  string // text in PeerError.Err; "" = plain mismatch
	}{
		{name: "expected server", server: storeWith(t, ca, issueSVID(t, ca, "api")), expected: api},
		{name: "wrong service", server: storeWith(t, ca, issueSVID(t, ca, "db")), expected: api,
			wantGot: "spiffe://mesh.local/svc/db"},
		{name: "consul form is not ferry form", server: storeWith(t, ca, issueAt(t, ca, spiffeid.RequireFromString("spiffe://mesh.local/ns/default/dc/dc1/svc/api"), time.Now(), time.Hour)),
			expected: api, wantGot: "spiffe://mesh.local/ns/default/dc/dc1/svc/api"},
		{name: "server from another CA", server: rawStore(t, ca, issueSVID(t, otherCA, "api")), expected: api,
			wantGot: "spiffe://mesh.local/svc/api", wantErr: "unknown authority"},
		{name: "expired server", server: rawStore(t, ca, expiredAPI), expected: api,
			wantGot: "spiffe://mesh.local/svc/api", wantErr: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, ServerConfig(tt.server, nil), ClientConfig(client, tt.expected))
			if tt.wantGot == "" {
				if res.clientErr != nil || res.serverErr != nil || res.reply != "hello" {
					t.Fatalf("handshake = %q, client %v, server %v; want success", res.reply, res.clientErr, res.serverErr)
				}
				if id, err := PeerID(&res.clientState); err != nil || id != tt.expected {
					t.Errorf("PeerID(client side) = %s, %v, want %s", id, err, tt.expected)
				}
				return
			}
			pe, ok := asPeerError(res.clientErr)
			if !ok {
				t.Fatalf("client error = %v (%T), want a *PeerError", res.clientErr, res.clientErr)
			}
			if pe.Want != tt.expected || pe.Got.String() != tt.wantGot {
				t.Errorf("PeerError = want %s got %s, want want %s got %s", pe.Want, pe.Got, tt.expected, tt.wantGot)
			}
			wantDetails := fmt.Sprintf("want %s, got %s", tt.expected, tt.wantGot)
			if !strings.HasPrefix(pe.Details(), wantDetails) {
				t.Errorf("Details() = %q, want prefix %q", pe.Details(), wantDetails)
			}
			if tt.wantErr == "" {
				if pe.Err != nil || pe.Error() != "mtls: peer identity mismatch: "+wantDetails {
					t.Errorf("Error() = %q, Err = %v; want a plain mismatch", pe.Error(), pe.Err)
				}
			} else if pe.Err == nil || !strings.Contains(pe.Error(), tt.wantErr) {
				t.Errorf("Error() = %q, want it to contain %q", pe.Error(), tt.wantErr)
			}
			var invalid x509.CertificateInvalidError
			if isExpired := errors.As(res.clientErr, &invalid) && invalid.Reason == x509.Expired; isExpired != (tt.wantErr == "expired") {
				t.Errorf("errors.As(x509.CertificateInvalidError{Expired}) = %v, want %v", isExpired, tt.wantErr == "expired")
			}
			if res.serverErr == nil {
				t.Error("server handshake succeeded although the client refused it")
			}
		})
	}
}

func TestClientConfigNoExpectedID(t *testing.T) {
	ca := newTestCA(t, testTD)
	res := handshake(t, ServerConfig(storeWith(t, ca, issueSVID(t, ca, "api")), nil),
		ClientConfig(storeWith(t, ca, issueSVID(t, ca, "web")), spiffeid.ID{}))
	pe, ok := asPeerError(res.clientErr)
	if !ok || !strings.Contains(pe.Error(), "no expected identity") {
		t.Errorf("client error = %v, want a *PeerError about no expected identity", res.clientErr)
	}
}

func TestNoMaterialFailsHandshake(t *testing.T) {
	ca := newTestCA(t, testTD)
	res := handshake(t, ServerConfig(NewStore("files"), nil), ClientConfig(storeWith(t, ca, issueSVID(t, ca, "web")), svcID(t, testTD, "api")))
	if !errors.Is(res.serverErr, ErrNoCertificate) || res.clientErr == nil {
		t.Errorf("handshake with an empty server source: server %v, client %v; want ErrNoCertificate and a refusal", res.serverErr, res.clientErr)
	}
}

func TestDialer(t *testing.T) {
	ca := newTestCA(t, testTD)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := echoServer(t, tls.NewListener(inner, ServerConfig(storeWith(t, ca, issueSVID(t, ca, "api")), nil)))
	defer stop()
	d := &Dialer{Source: storeWith(t, ca, issueSVID(t, ca, "web")), NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := d.DialContext(ctx, "tcp", inner.Addr().String(), svcID(t, testTD, "api"))
	if err != nil {
		t.Fatalf("DialContext(api) error = %v", err)
	}
	if id, err := PeerIDFromConn(c); err != nil || id != svcID(t, testTD, "api") {
		t.Errorf("PeerIDFromConn() = %s, %v, want spiffe://mesh.local/svc/api", id, err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != ALPNHTTP2 {
		t.Errorf("NegotiatedProtocol = %q, want h2", p)
	}
	_ = c.Close()

	d.NextProtos = []string{ALPNHTTP1}
	c, err = d.DialContext(ctx, "tcp", inner.Addr().String(), svcID(t, testTD, "api"))
	if err != nil {
		t.Fatalf("DialContext(http/1.1) error = %v", err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != ALPNHTTP1 {
		t.Errorf("NegotiatedProtocol = %q, want http/1.1", p)
	}
	_ = c.Close()

	_, err = d.DialContext(ctx, "tcp", inner.Addr().String(), svcID(t, testTD, "payments"))
	pe, ok := asPeerError(err)
	if !ok || pe.Details() != "want spiffe://mesh.local/svc/payments, got spiffe://mesh.local/svc/api" {
		t.Errorf("DialContext(payments) error = %v, want a *PeerError want payments got api", err)
	}
}

func TestPeerIDWithoutCertificate(t *testing.T) {
	if _, err := PeerID(nil); !errors.Is(err, ErrNoPeerID) {
		t.Errorf("PeerID(nil) error = %v, want ErrNoPeerID", err)
	}
	if _, err := PeerID(&tls.ConnectionState{}); !errors.Is(err, ErrNoPeerID) {
		t.Errorf("PeerID(no certs) error = %v, want ErrNoPeerID", err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := PeerIDFromConn(a); !errors.Is(err, ErrNoPeerID) {
		t.Errorf("PeerIDFromConn(plain) error = %v, want ErrNoPeerID", err)
	}
	if _, err := PeerIDFromConn(tls.Client(a, &tls.Config{})); !errors.Is(err, ErrNoPeerID) {
		t.Errorf("PeerIDFromConn(before handshake) error = %v, want ErrNoPeerID", err)
	}
	if _, err := PeerID(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{{}}}); err == nil || errors.Is(err, ErrNoPeerID) {
		t.Errorf("PeerID(certificate without URI SAN) error = %v, want a parse error", err)
	}
}

func TestParseModeAndWrapListener(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeStrict, "strict": ModeStrict, "permissive": ModePermissive, "disabled": ModeDisabled} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("STRICT"); err == nil {
		t.Error("ParseMode(STRICT) error = nil, want one")
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	if l, err := WrapListener(inner, ModeDisabled, nil); err != nil || l != inner {
		t.Errorf("WrapListener(disabled) = %v, %v, want the inner listener", l, err)
	}
	if _, err := WrapListener(inner, "bogus", nil); err == nil {
		t.Error("WrapListener(bogus) error = nil, want one")
	}
	l, err := WrapListener(inner, ModePermissive, &tls.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.(*PermissiveListener); !ok {
		t.Errorf("WrapListener(permissive) = %T, want *PermissiveListener", l)
	}
	_ = l.Close()
}

// TestHTTPOverMTLS runs net/http on both sides: the server's handler sees the caller's
// identity and builds the XFCC header; the client negotiates h2 and then http/1.1.
func TestHTTPOverMTLS(t *testing.T) {
	ca := newTestCA(t, testTD)
	serverSrc := storeWith(t, ca, issueSVID(t, ca, "api"))
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local, _ := serverSrc.Current()
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := PeerID(r.TLS)
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			x, err := NewXFCC(local.ID(), r.TLS)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "%s %s %s", r.Proto, id, x.URI)
		}),
	}
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		_ = srv.Serve(tls.NewListener(inner, ServerConfig(serverSrc, nil)))
	}()
	defer func() {
		_ = srv.Close()
		<-serveDone
	}()

	clientSrc := storeWith(t, ca, issueSVID(t, ca, "web"))
	for _, tt := range []struct {
		protos []string
		want   string
	}{
		{nil, "HTTP/2.0 spiffe://mesh.local/svc/web spiffe://mesh.local/svc/web"},
		{[]string{ALPNHTTP1}, "HTTP/1.1 spiffe://mesh.local/svc/web spiffe://mesh.local/svc/web"},
	} {
		d := &Dialer{Source: clientSrc, NextProtos: tt.protos}
		tr := &http.Transport{
			ForceAttemptHTTP2: true,
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr, svcID(t, testTD, "api"))
			},
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + inner.Addr().String() + "/")
		if err != nil {
			t.Fatalf("GET error = %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.StatusCode != 200 || string(body) != tt.want {
			t.Errorf("GET (ALPN %v) = %d %q, want 200 %q", tt.protos, resp.StatusCode, body, tt.want)
		}
	}
}
