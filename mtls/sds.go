package mtls

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymesh/ferry/discovery/consul/blocking"
)

// Defaults for SDSOptions.
const (
	// DefaultSDSCertName is the name of the TLS certificate secret Istio's agent serves;
	// with SPIRE's agent, the workload's SPIFFE ID (or SPIRE's "default").
	DefaultSDSCertName = "default"
	// DefaultSDSValidationName is the name of the validation context secret Istio's agent
	// serves; with SPIRE's agent, the trust domain's SPIFFE ID (spiffe://example.org).
	// SPIRE serves its "ALL" secret (a SPIFFE validator configuration) only to clients that
	// announce Envoy 1.18 or later as their build version, which Ferry does not claim.
	DefaultSDSValidationName = "ROOTCA"
	DefaultSDSRetryBase      = 500 * time.Millisecond
	DefaultSDSRetryMax       = 30 * time.Second
)

// SDSTypeURL is the type URL of the secrets the SDS client asks for (Envoy's
// envoy.extensions.transport_sockets.tls.v3.Secret).
const SDSTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// SDSOptions configures an SDSSource.
type SDSOptions struct {
	// Address is the SDS server: unix:///path (SPIRE's agent, Istio's workload socket) or
	// host:port (required; see ParseSDSAddress). The stream is plaintext gRPC, as Envoy's
	// is over a Unix socket: a TCP address must be loopback or otherwise trusted, since
	// whoever answers there hands this sidecar its identity.
	Address string
	// CertName and ValidationName are the names of the TLS certificate secret and of the
	// validation context secret (DefaultSDSCertName and DefaultSDSValidationName if
	// empty). They must differ: one secret holds one of the two.
	CertName, ValidationName string
	// NodeID and NodeCluster identify this sidecar in its requests (node.id and
	// node.cluster): the service's SPIFFE ID and its service name.
	NodeID, NodeCluster string
	// TrustDomain is this sidecar's trust domain (required): a certificate of another
	// trust domain is refused, and from a SPIFFE validator configuration listing several
	// trust domains, this one's bundle is taken.
	TrustDomain spiffeid.TrustDomain
	// Logger receives updates and errors; nil discards them.
	Logger *slog.Logger
	// RetryBase and RetryMax bound the jittered exponential backoff between stream
	// attempts after a failure, and between repeated rejections of the same response
	// (DefaultSDSRetryBase and DefaultSDSRetryMax if zero).
	RetryBase, RetryMax time.Duration
}

// SDSSource is a Source whose certificate and trust bundle are pushed by an SDS server
// (Envoy's SecretDiscoveryService, state of the world), the way Envoy gets them from
// SPIRE's agent or Istio's: one StreamSecrets stream asks for the TLS certificate secret
// (certificate_chain and private_key) and the validation context secret (trusted_ca, or a
// SPIFFE validator configuration whose bundle for the trust domain is taken), and every
// response is acknowledged (ACK: its version and nonce) or, if its secrets are unusable,
// rejected (NACK: the previous version, the response's nonce and error_detail).
//
// A response is rejected, and nothing published, when a secret is malformed (bad PEM, a
// key that does not match the certificate, an unsupported data source), or when the pair
// does not make valid Material (ParseMaterial: no SPIFFE ID, another trust domain, not
// verifying against the bundle, expired). The previous material stays in force, as it
// does while the server cannot be reached; streams are retried with jittered exponential
// backoff. Secrets may arrive in separate responses: the latest of each is kept, and
// material is published once the two make a valid pair. All methods are safe to call
// concurrently; Close ends the stream and waits for it.
type SDSSource struct {
	*Store
	opts   SDSOptions
	target string
	log    *slog.Logger
	conn   *grpc.ClientConn

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	// Owned by the stream goroutine.
	version   string       // last acknowledged version
	cert      *sdsCert     // latest well-formed certificate secret
	valid     *sdsBundles  // latest well-formed validation context secret
	published string       // certificate, key and bundle of the published material
	nack      sdsRejection // the last rejection, and how many in a row repeated it
}

var _ Source = (*SDSSource)(nil)

// sdsCert is a TLS certificate secret's PEM data.
type sdsCert struct{ chain, key []byte }

// sdsBundles is a validation context secret's CA certificates (PEM): any for a plain
// trusted_ca (the bundle of whatever trust domain the certificate is in), byTD for a
// SPIFFE validator configuration.
type sdsBundles struct {
	any  []byte
	byTD map[string][]byte
}

// sdsRejection is the last response rejected: its version and the error, and how many
// rejections in a row repeated it.
type sdsRejection struct {
	version, err string
	repeats      int
	seen         bool // a rejection is recorded
}

// ParseSDSAddress checks an SDS server address, unix:///absolute/path or host:port, and
// returns the gRPC target to dial and whether the address is local: a Unix socket, a
// loopback IP or localhost.
func ParseSDSAddress(addr string) (target string, local bool, err error) {
	if addr == "" {
		return "", false, errors.New("mtls: empty SDS address (want unix:///path or host:port)")
	}
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		p, ok := strings.CutPrefix(rest, "//")
		if !ok || !strings.HasPrefix(p, "/") || len(p) < 2 || strings.ContainsRune(p, 0) {
			return "", false, fmt.Errorf("mtls: invalid SDS address %q (want unix:///absolute/path)", addr)
		}
		return "unix://" + p, true, nil
	}
	if strings.Contains(addr, "://") {
		return "", false, fmt.Errorf("mtls: invalid SDS address %q (want unix:///path or host:port)", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false, fmt.Errorf("mtls: invalid SDS address %q (want unix:///path or host:port): %w", addr, err)
	}
	if host == "" {
		return "", false, fmt.Errorf("mtls: invalid SDS address %q: no host", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", false, fmt.Errorf("mtls: invalid SDS address %q: bad port %q", addr, port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		local = ip.IsLoopback()
	} else {
		local = strings.EqualFold(host, "localhost")
	}
	return "dns:///" + addr, local, nil
}

// NewSDSSource starts the stream to the SDS server. It fails only for invalid options:
// while the server does not answer, Current reports why and the stream is retried.
func NewSDSSource(opts SDSOptions) (*SDSSource, error) {
	target, _, err := ParseSDSAddress(opts.Address)
	if err != nil {
		return nil, err
	}
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("mtls: sds source needs a trust domain")
	}
	if opts.CertName == "" {
		opts.CertName = DefaultSDSCertName
	}
	if opts.ValidationName == "" {
		opts.ValidationName = DefaultSDSValidationName
	}
	if opts.CertName == opts.ValidationName {
		return nil, fmt.Errorf("mtls: sds cert_name and validation_name are both %q (one secret cannot hold both)", opts.CertName)
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = DefaultSDSRetryBase
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultSDSRetryMax
	}
	opts.RetryMax = max(opts.RetryMax, opts.RetryBase)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("mtls: sds client for %s: %w", opts.Address, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &SDSSource{
		Store:  NewStore("sds"),
		opts:   opts,
		target: target,
		log:    log.With("source", "sds", "sds_address", opts.Address),
		conn:   conn,
		cancel: cancel,
	}
	s.wg.Add(1)
	go s.run(ctx)
	return s, nil
}

// Close ends the stream, waits for it and closes the connection. Published material
// stays available.
func (s *SDSSource) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
		err = s.conn.Close()
	})
	return err
}

// run keeps a stream open until ctx is done, with backoff between failed attempts.
func (s *SDSSource) run(ctx context.Context) {
	defer s.wg.Done()
	client := secretv3.NewSecretDiscoveryServiceClient(s.conn)
	failures := 0
	for {
		answered, err := s.stream(ctx, client, &failures)
		if ctx.Err() != nil {
			return
		}
		if answered {
			failures = 0
		}
		failures++
		delay := blocking.Backoff(s.opts.RetryBase, s.opts.RetryMax, failures)
		err = fmt.Errorf("mtls: sds stream to %s: %w", s.opts.Address, err)
		s.Fail(err, time.Now())
		switch {
		case failures > 1:
			s.log.Debug("SDS stream failed again", "error", err, "failures", failures, "retry_in", delay)
		case s.hasMaterial():
			s.log.Warn("SDS stream failing; keeping the current certificate", "error", err, "retry_in", delay)
		default:
			s.log.Error("cannot get certificates from the SDS server; no certificate yet, /ready answers 503 until one arrives",
				"error", err, "retry_in", delay)
		}
		if !blocking.Sleep(ctx, delay) {
			return
		}
	}
}

func (s *SDSSource) hasMaterial() bool {
	_, err := s.Current()
	return err == nil
}

// stream runs one StreamSecrets stream until it fails or ctx is done, and reports whether
// the server answered on it. failures is the run of failed streams before this one; the
// first answer logs the recovery and sets it to 0.
func (s *SDSSource) stream(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, failures *int) (bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.StreamSecrets(sctx)
	if err != nil {
		return false, err
	}
	names := []string{s.opts.CertName, s.opts.ValidationName}
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo:   s.version,
		Node:          &corev3.Node{Id: s.opts.NodeID, Cluster: s.opts.NodeCluster, UserAgentName: "ferry"},
		ResourceNames: names,
		TypeUrl:       SDSTypeURL,
	}
	if err := st.Send(req); err != nil {
		return false, err
	}
	answered := false
	for {
		resp, err := st.Recv()
		if err != nil {
			return answered, err
		}
		if !answered {
			answered = true
			if *failures > 0 {
				s.log.Info("SDS server answers again", "failed_streams", *failures)
				*failures = 0
			}
		}
		next := &discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: SDSTypeURL, ResponseNonce: resp.GetNonce()}
		if err := s.apply(resp); err != nil {
			next.VersionInfo = s.version
			next.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			if d := s.rejected(resp.GetVersionInfo(), err); d > 0 && !blocking.Sleep(ctx, d) {
				return answered, ctx.Err()
			}
		} else {
			s.version = resp.GetVersionInfo()
			s.nack = sdsRejection{}
			next.VersionInfo = s.version
		}
		if err := st.Send(next); err != nil {
			return answered, err
		}
	}
}

// rejected records the rejection of the response of version with err, and returns how
// long to wait before sending the NACK: nothing the first time, a growing backoff when
// the server sends the same response again at once (a snapshot cache answers a NACK with
// the version it still holds), so that a bad snapshot does not make a busy loop. A
// repeated rejection is neither logged nor counted again.
func (s *SDSSource) rejected(version string, err error) time.Duration {
	// The same version again is the same rejection: compare versions, not error texts,
	// which may carry the time (an expired certificate's does); a server that sends no
	// version is compared by the error.
	same := s.nack.version == version && (version != "" || s.nack.err == err.Error())
	if s.nack.seen && same {
		s.nack.repeats++
		s.log.Debug("SDS response rejected again", "version", version, "error", err, "repeats", s.nack.repeats)
		return blocking.Backoff(s.opts.RetryBase, s.opts.RetryMax, s.nack.repeats)
	}
	s.nack = sdsRejection{version: version, err: err.Error(), seen: true}
	s.Fail(err, time.Now())
	if s.hasMaterial() {
		s.log.Error("SDS secrets rejected; keeping the current certificate", "version", version, "error", err)
	} else {
		s.log.Error("SDS secrets rejected; no certificate loaded", "version", version, "error", err)
	}
	return 0
}

// apply reads the secrets of resp and publishes the material they make with the secrets
// kept from earlier responses. An error means resp is to be rejected.
func (s *SDSSource) apply(resp *discoveryv3.DiscoveryResponse) error {
	if resp.GetTypeUrl() != SDSTypeURL {
		return fmt.Errorf("mtls: sds response of type %q, want %q", resp.GetTypeUrl(), SDSTypeURL)
	}
	cert, valid := s.cert, s.valid
	touched := false
	for _, r := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := r.UnmarshalTo(&sec); err != nil {
			return fmt.Errorf("mtls: sds resource: %w", err)
		}
		var err error
		switch sec.GetName() {
		case s.opts.CertName:
			cert, err = s.certOf(&sec)
		case s.opts.ValidationName:
			valid, err = s.bundlesOf(&sec)
		default:
			continue // not asked for: a server may send more
		}
		if err != nil {
			return fmt.Errorf("mtls: sds secret %q: %w", sec.GetName(), err)
		}
		touched = true
	}
	if !touched {
		return nil
	}
	// Keep what is well-formed even if the pair does not verify yet: the other half of a
	// rotation may come in the next response.
	s.cert, s.valid = cert, valid
	if cert == nil || valid == nil {
		missing := s.opts.ValidationName
		if cert == nil {
			missing = s.opts.CertName
		}
		s.log.Info("SDS secret received; waiting for the other one", "missing", missing, "version", resp.GetVersionInfo())
		return nil
	}
	td := s.opts.TrustDomain
	ca := valid.any
	if valid.byTD != nil {
		if ca = valid.byTD[td.Name()]; ca == nil {
			return fmt.Errorf("mtls: sds secret %q: the SPIFFE validator configuration has no bundle for trust domain %q", s.opts.ValidationName, td.Name())
		}
	}
	key := string(cert.chain) + "\x00" + string(cert.key) + "\x00" + string(ca)
	if key == s.published {
		return nil
	}
	now := time.Now()
	m, err := ParseMaterial("sds", cert.chain, cert.key, ca, td, now)
	if err != nil {
		return fmt.Errorf("sds secrets %q and %q (version %q): %w", s.opts.CertName, s.opts.ValidationName, resp.GetVersionInfo(), err)
	}
	if want, err := spiffeid.FromString(s.opts.CertName); err == nil && m.ID() != want {
		return fmt.Errorf("mtls: sds secret %q holds a certificate for %s", s.opts.CertName, m.ID())
	}
	s.published = key
	s.Publish(m)
	s.log.Info("certificate loaded from SDS", "spiffe_id", m.ID().String(),
		"serial", FormatSerial(m.Leaf().SerialNumber), "not_after", m.NotAfter(), "version", resp.GetVersionInfo())
	return nil
}

// certOf reads a TLS certificate secret.
func (s *SDSSource) certOf(sec *tlsv3.Secret) (*sdsCert, error) {
	tc := sec.GetTlsCertificate()
	switch {
	case tc == nil:
		return nil, errors.New("not a tls_certificate secret")
	case tc.GetPkcs12() != nil, tc.GetPrivateKeyProvider() != nil:
		return nil, errors.New("pkcs12 and private_key_provider are not supported (want certificate_chain and private_key)")
	}
	chain, err := dataOf(tc.GetCertificateChain())
	if err != nil {
		return nil, fmt.Errorf("certificate_chain: %w", err)
	}
	key, err := dataOf(tc.GetPrivateKey())
	if err != nil {
		return nil, fmt.Errorf("private_key: %w", err)
	}
	return &sdsCert{chain: chain, key: key}, nil
}

// bundlesOf reads a validation context secret: trusted_ca, or a SPIFFE validator
// configuration (custom_validator_config) with a bundle per trust domain.
func (s *SDSSource) bundlesOf(sec *tlsv3.Secret) (*sdsBundles, error) {
	vc := sec.GetValidationContext()
	if vc == nil {
		return nil, errors.New("not a validation_context secret")
	}
	if cv := vc.GetCustomValidatorConfig(); cv != nil {
		var sv tlsv3.SPIFFECertValidatorConfig
		if cv.GetTypedConfig() == nil || !cv.GetTypedConfig().MessageIs(&sv) {
			return nil, fmt.Errorf("custom_validator_config %q is not supported (want trusted_ca or a SPIFFE validator)", cv.GetTypedConfig().GetTypeUrl())
		}
		if err := cv.GetTypedConfig().UnmarshalTo(&sv); err != nil {
			return nil, fmt.Errorf("custom_validator_config: %w", err)
		}
		return spiffeValidatorBundles(&sv)
	}
	if vc.GetTrustedCa() == nil {
		return nil, errors.New("no trusted_ca")
	}
	ca, err := dataOf(vc.GetTrustedCa())
	if err != nil {
		return nil, fmt.Errorf("trusted_ca: %w", err)
	}
	return &sdsBundles{any: ca}, nil
}

// spiffeValidatorBundles reads the CA certificates of each trust domain of a SPIFFE
// validator configuration: its trust_domains' trust_bundle PEM data, or, when set (it
// takes precedence, as in Envoy), its trust_bundles SPIFFE bundle map.
func spiffeValidatorBundles(sv *tlsv3.SPIFFECertValidatorConfig) (*sdsBundles, error) {
	b := &sdsBundles{byTD: make(map[string][]byte)}
	if sv.GetTrustBundles() != nil {
		doc, err := dataOf(sv.GetTrustBundles())
		if err != nil {
			return nil, fmt.Errorf("trust_bundles: %w", err)
		}
		if b.byTD, err = parseBundleMap(doc); err != nil {
			return nil, fmt.Errorf("trust_bundles: %w", err)
		}
		return b, nil
	}
	if len(sv.GetTrustDomains()) == 0 {
		return nil, errors.New("SPIFFE validator without trust domains")
	}
	for _, td := range sv.GetTrustDomains() {
		name := strings.TrimPrefix(td.GetName(), "spiffe://")
		ca, err := dataOf(td.GetTrustBundle())
		if err != nil {
			return nil, fmt.Errorf("trust domain %q: trust_bundle: %w", td.GetName(), err)
		}
		b.byTD[name] = ca
	}
	return b, nil
}

// dataOf returns the bytes of an Envoy data source: inline bytes or string, a file or an
// environment variable.
func dataOf(ds *corev3.DataSource) ([]byte, error) {
	var b []byte
	switch sp := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		b = sp.InlineBytes
	case *corev3.DataSource_InlineString:
		b = []byte(sp.InlineString)
	case *corev3.DataSource_Filename:
		var err error
		if b, err = os.ReadFile(sp.Filename); err != nil {
			return nil, err
		}
	case *corev3.DataSource_EnvironmentVariable:
		b = []byte(os.Getenv(sp.EnvironmentVariable))
	default:
		return nil, errors.New("empty data source")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("empty data")
	}
	return b, nil
}

// parseBundleMap reads a SPIFFE bundle map, {"trust_domains": {"<td>": <SPIFFE bundle>}}
// (the trust_bundles format of Envoy's SPIFFE validator), into each trust domain's X.509
// authorities as PEM. The bundles are parsed by go-spiffe.
func parseBundleMap(doc []byte) (map[string][]byte, error) {
	var m struct {
		TrustDomains map[string]json.RawMessage `json:"trust_domains"`
	}
	if err := json.Unmarshal(doc, &m); err != nil {
		return nil, err
	}
	if len(m.TrustDomains) == 0 {
		return nil, errors.New("no trust_domains")
	}
	out := make(map[string][]byte, len(m.TrustDomains))
	for name, raw := range m.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("trust domain %q: %w", name, err)
		}
		b, err := spiffebundle.Parse(td, raw)
		if err != nil {
			return nil, fmt.Errorf("trust domain %q: %w", name, err)
		}
		var ca []byte
		for _, c := range b.X509Authorities() {
			ca = append(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		out[td.Name()] = ca
	}
	return out, nil
}
