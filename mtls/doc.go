// Package mtls gives sidecars their SPIFFE identities and the mutual TLS between them:
// identities, certificate sources with rotation, tls.Config builders for termination
// and origination, the peer's identity, X-Forwarded-Client-Cert, certificate metadata and
// metrics, and a development CA. Verification is go-spiffe's; the rest is crypto/tls.
//
// # Identities
//
// A service's SPIFFE ID is spiffe://<trust_domain>/svc/<service> (ServiceID), or
// Consul Connect's spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service> (ConsulServiceID) when
// Consul issues the certificates. ParseService reads either; ExpectedID derives what an
// upstream must present from its name or its configured `identity`.
//
// # Certificate material and sources
//
// A Source publishes immutable *Material (this proxy's SVID and the trust bundles) through
// an atomic pointer: every handshake reads the current Material, so a rotation applies to
// new connections at once and never disturbs established ones. NewFileSource reads PEM
// files and re-reads them when they change; NewDevSource uses the development CA. Push
// sources (Consul, SDS) embed a *Store and call Publish when new material arrives.
//
// # Wiring
//
// At start-up (one source per proxy; Close it on shutdown):
//
//	src, err := mtls.NewFileSource(mtls.FileOptions{CertFile: c, KeyFile: k, CAFile: ca, Logger: log})
//	if _, err := src.Current(); err != nil { … }   // or mtls.Wait(ctx, src) for push sources
//	go mtls.WatchExpiry(ctx, src, log, 24*time.Hour)
//	registry.MustRegister(mtls.NewCollector(src))
//
// Inbound (termination), per listener:
//
//	ln, err := mtls.WrapListener(rawLn, mode, mtls.ServerConfig(src, authorize)) // nil authorize: own trust domain
//	// HTTP handler: the connection's peer is verified and authorized already.
//	id, err := mtls.PeerID(r.TLS)        // ErrNoPeerID for plaintext (permissive mode)
//	r.Header.Del(mtls.XFCCHeader)        // never pass on a header the caller sent
//	if x, err := mtls.NewXFCC(m.ID(), r.TLS); err == nil { r.Header.Set(mtls.XFCCHeader, x.String()) }
//	// TCP: tlsConn.HandshakeContext(ctx), then mtls.PeerIDFromConn(tlsConn).
//
// Outbound (origination), per upstream (or per endpoint if discovery supplies its ID):
//
//	want, err := mtls.ExpectedID(td, upstream.Name, upstream.Identity)
//	cfg := mtls.ClientConfig(src, want)  // reusable; reads rotated material per handshake
//	transport.DialTLSContext = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext
//	// or: (&mtls.Dialer{Source: src}).DialContext(ctx, "tcp", addr, want)
//	var pe *mtls.PeerError
//	if errors.As(err, &pe) { /* Proxy-Status: ferry; error=tls_certificate_error; details=pe.Details() */ }
//
// Admin: src.Current() gives the Material (Info for /certs, Valid for /ready), and
// src.Status() the refresh history.
package mtls
