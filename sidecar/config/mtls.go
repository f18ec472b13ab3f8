package config

import (
	"fmt"
	"strings"

	"github.com/ferrymesh/ferry/mtls"
)

// MTLS is the mtls block: this sidecar's identity, where its certificates come from, and
// how its inbound listener treats TLS. With it, every upstream speaks mutual TLS unless
// it opts out with tls: none or tls: simple.
type MTLS struct {
	// Mode is how the inbound listener treats TLS: strict (mTLS only, the default),
	// permissive (mTLS and plaintext on the same port, for migrations) or disabled
	// (plaintext; outbound connections still use mTLS).
	Mode string `yaml:"mode" json:"mode"`
	// TrustDomain is the SPIFFE trust domain: this service is
	// spiffe://<trust_domain>/svc/<service>. Default mesh.local, except with source
	// consul: there the trust domain is Consul's (learnt at run time from its CA roots)
	// and, if set here, must equal it, or no certificate is loaded (a pin against
	// talking to the wrong Consul cluster).
	TrustDomain string `yaml:"trust_domain" json:"trust_domain"`
	// Source is where the certificates come from: files (CertFile, KeyFile, CAFile; the
	// default), dev (the development CA of `ferry ca`, in Dir), consul (Consul
	// Connect's CA, through the agent of discovery.consul or the CONSUL_* environment:
	// the leaf certificate of ConsulService and the CA roots, followed as they rotate) or
	// sds (pushed by an SDS server such as SPIRE's or Istio's agent; see SDS).
	Source string `yaml:"source" json:"source"`
	// ConsulService is the Consul service name the leaf certificate is issued for (source
	// consul; default: service). The sidecar's identity is then Consul's
	// spiffe://<trust domain>/ns/default/dc/<datacenter>/svc/<consul_service>.
	ConsulService string `yaml:"consul_service" json:"consul_service,omitempty"`
	// CertFile, KeyFile and CAFile are PEM files (source files): this sidecar's
	// certificate chain, its private key and the trust bundle. They are re-read when
	// they change.
	CertFile string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file" json:"key_file,omitempty"`
	CAFile   string `yaml:"ca_file" json:"ca_file,omitempty"`
	// Dir is the directory `ferry ca create` or `ferry ca issue --out` wrote to
	// (source dev).
	Dir string `yaml:"dir" json:"dir,omitempty"`
	// SDS is where source sds gets its certificates (required with it, and only there).
	SDS *SDS `yaml:"sds" json:"sds,omitempty"`
}

// SDS is the mtls.sds block: the SDS server (Envoy's SecretDiscoveryService) that pushes
// this sidecar's certificate and trust bundle, and the names of the two secrets. The
// certificate must be in mtls.trust_domain (with SPIRE, set it to SPIRE's trust domain);
// one that is not, or that does not verify against the bundle, is refused (NACKed) and
// the previous one stays.
type SDS struct {
	// Address is the SDS server: unix:///path (SPIRE's agent socket, Istio's workload
	// socket) or host:port. The stream is plaintext gRPC, as Envoy's is over a Unix
	// socket, so a TCP address must be loopback or on a network otherwise trusted
	// (Warnings says so for a host that is not a loopback IP): whoever answers there
	// hands this sidecar its identity. Required.
	Address string `yaml:"address" json:"address"`
	// CertName is the name of the TLS certificate secret: default "default" (Istio's
	// name); with SPIRE, the workload's SPIFFE ID.
	CertName string `yaml:"cert_name" json:"cert_name"`
	// ValidationName is the name of the validation context secret (the trust bundle):
	// default "ROOTCA" (Istio's name); with SPIRE, the trust domain's SPIFFE ID
	// (spiffe://example.org).
	ValidationName string `yaml:"validation_name" json:"validation_name"`
}

// Values of mtls.source and of an upstream's tls key.
const (
	MTLSSourceFiles  = "files"
	MTLSSourceDev    = "dev"
	MTLSSourceConsul = "consul"
	MTLSSourceSDS    = "sds"

	UpstreamTLSMesh   = "mesh"
	UpstreamTLSNone   = "none"
	UpstreamTLSSimple = "simple"
)

// Defaults of the mtls block.
const (
	DefaultMTLSMode   = string(mtls.ModeStrict)
	DefaultMTLSSource = MTLSSourceFiles
)

// mtlsDefaults fills in the mtls block and the upstreams' tls and identity keys. An
// upstream's identity is derived only when it speaks mesh TLS and the trust domain is
// valid (validation reports a bad one).
func mtlsDefaults(c *Config) {
	m := c.MTLS
	if m != nil {
		if m.Mode == "" {
			m.Mode = DefaultMTLSMode
		}
		if m.Source == "" {
			m.Source = DefaultMTLSSource
		}
		if m.TrustDomain == "" && m.Source != MTLSSourceConsul {
			m.TrustDomain = mtls.DefaultTrustDomain
		}
		if m.ConsulService == "" && m.Source == MTLSSourceConsul {
			m.ConsulService = c.Service
		}
		if m.Source == MTLSSourceSDS && m.SDS != nil {
			if m.SDS.CertName == "" {
				m.SDS.CertName = mtls.DefaultSDSCertName
			}
			if m.SDS.ValidationName == "" {
				m.SDS.ValidationName = mtls.DefaultSDSValidationName
			}
		}
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.TLS == "" {
			u.TLS = UpstreamTLSNone
			if m != nil {
				u.TLS = UpstreamTLSMesh
			}
		}
		if u.TLS != UpstreamTLSMesh || u.Identity != "" || m == nil || !validName(u.Name) {
			continue
		}
		if m.Source == MTLSSourceConsul {
			// Consul's identities name the trust domain and datacenter, known only at
			// run time: the sidecar derives the expected identity then.
			continue
		}
		td, err := mtls.ParseTrustDomain(m.TrustDomain)
		if err != nil {
			continue
		}
		if id, err := mtls.ExpectedID(td, u.Name, ""); err == nil {
			u.Identity = id.String()
		}
	}
}

// checkMTLS validates the mtls block and the upstreams' TLS keys.
func checkMTLS(c *Config, col *collector) {
	if m := c.MTLS; m != nil {
		p := path{"mtls"}
		if _, err := mtls.ParseMode(m.Mode); err != nil || m.Mode == "" {
			col.add(p.with("mode"), "unknown mode %q (want strict, permissive or disabled)", m.Mode)
		}
		if _, err := mtls.ParseTrustDomain(m.TrustDomain); err != nil && (m.TrustDomain != "" || m.Source != MTLSSourceConsul) {
			col.add(p.with("trust_domain"), "%s", strings.TrimPrefix(err.Error(), "mtls: "))
		}
		switch m.Source {
		case MTLSSourceFiles:
			for _, f := range []struct{ key, v string }{{"cert_file", m.CertFile}, {"key_file", m.KeyFile}, {"ca_file", m.CAFile}} {
				if f.v == "" {
					col.add(p.with(f.key), "missing %s (source files needs cert_file, key_file and ca_file)", f.key)
				}
			}
			if m.Dir != "" {
				col.add(p.with("dir"), "dir applies to source dev only")
			}
		case MTLSSourceDev:
			if m.Dir == "" {
				col.add(p.with("dir"), "missing dir (the directory of `ferry ca create` or `ferry ca issue --out`)")
			}
			for _, f := range []struct{ key, v string }{{"cert_file", m.CertFile}, {"key_file", m.KeyFile}, {"ca_file", m.CAFile}} {
				if f.v != "" {
					col.add(p.with(f.key), "%s applies to source files only", f.key)
				}
			}
		case MTLSSourceConsul:
			for _, f := range []struct{ key, v string }{{"cert_file", m.CertFile}, {"key_file", m.KeyFile}, {"ca_file", m.CAFile}} {
				if f.v != "" {
					col.add(p.with(f.key), "%s applies to source files only (source consul takes the certificate from Consul)", f.key)
				}
			}
			if m.Dir != "" {
				col.add(p.with("dir"), "dir applies to source dev only")
			}
			if m.ConsulService != "" && !validName(m.ConsulService) {
				col.add(p.with("consul_service"), "invalid Consul service name %q (%s)", m.ConsulService, nameRule)
			}
		case MTLSSourceSDS:
			for _, f := range []struct{ key, v string }{{"cert_file", m.CertFile}, {"key_file", m.KeyFile}, {"ca_file", m.CAFile}} {
				if f.v != "" {
					col.add(p.with(f.key), "%s applies to source files only (source sds takes the certificate from the SDS server)", f.key)
				}
			}
			if m.Dir != "" {
				col.add(p.with("dir"), "dir applies to source dev only")
			}
			checkSDS(m.SDS, p.with("sds"), col)
		default:
			col.add(p.with("source"), "unknown source %q (want files, dev, consul or sds)", m.Source)
		}
		if m.SDS != nil && m.Source != MTLSSourceSDS {
			col.add(p.with("sds"), "sds applies to source sds only (source is %s)", m.Source)
		}
		if m.ConsulService != "" && m.Source != MTLSSourceConsul {
			col.add(p.with("consul_service"), "consul_service applies to source consul only")
		}
		for _, f := range []struct{ key, v string }{{"cert_file", m.CertFile}, {"key_file", m.KeyFile}, {"ca_file", m.CAFile}, {"dir", m.Dir}} {
			if strings.ContainsRune(f.v, 0) {
				col.add(p.with(f.key), "invalid file name %q", f.v)
			}
		}
	}
	l := col.loc
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := l.upstream(i)
		switch u.TLS {
		case UpstreamTLSMesh:
			if c.MTLS == nil {
				col.add(p.with("tls"), "tls mesh needs an mtls block (or use tls: none or simple)")
			}
		case UpstreamTLSNone, UpstreamTLSSimple:
			if u.Identity != "" {
				col.add(p.with("identity"), "identity applies to tls mesh only (tls is %s)", u.TLS)
			}
		default:
			col.add(p.with("tls"), "unknown tls %q (want mesh, none or simple)", u.TLS)
		}
		if u.Identity != "" {
			if _, err := mtls.ParseID(u.Identity); err != nil {
				col.add(p.with("identity"), "%s", strings.TrimPrefix(err.Error(), "mtls: "))
			}
		}
		if u.TLS != UpstreamTLSSimple {
			if u.TLSCAFile != "" {
				col.add(p.with("tls_ca_file"), "tls_ca_file applies to tls simple only")
			}
			if u.TLSServerName != "" {
				col.add(p.with("tls_server_name"), "tls_server_name applies to tls simple only")
			}
		}
		if strings.ContainsRune(u.TLSCAFile, 0) {
			col.add(p.with("tls_ca_file"), "invalid file name %q", u.TLSCAFile)
		}
	}
}

// checkSDS validates the sds block of source sds, at p.
func checkSDS(s *SDS, p path, col *collector) {
	if s == nil || s.Address == "" {
		col.add(p.with("address"), "missing sds.address (source sds needs the SDS server: unix:///path or host:port)")
		return
	}
	if _, _, err := mtls.ParseSDSAddress(s.Address); err != nil {
		col.add(p.with("address"), "%s", strings.TrimPrefix(err.Error(), "mtls: "))
	}
	for _, f := range []struct{ key, v string }{{"cert_name", s.CertName}, {"validation_name", s.ValidationName}} {
		if strings.ContainsRune(f.v, 0) {
			col.add(p.with(f.key), "invalid secret name %q", f.v)
		}
	}
	if s.CertName != "" && s.CertName == s.ValidationName {
		col.add(p.with("validation_name"), "validation_name is the same as cert_name (%q): the certificate and the trust bundle are two secrets", s.CertName)
	}
}

// mtlsWarnings warns about an SDS server reached over TCP on an address that is not
// loopback: the stream is plaintext.
func mtlsWarnings(c *Config) []string {
	m := c.MTLS
	if m == nil || m.Source != MTLSSourceSDS || m.SDS == nil {
		return nil
	}
	if _, local, err := mtls.ParseSDSAddress(m.SDS.Address); err == nil && !local {
		return []string{fmt.Sprintf("mtls.sds.address %s is not a Unix socket or a loopback address: the SDS stream is plaintext, and whoever answers there hands this sidecar its identity; make sure that network is trusted", m.SDS.Address)}
	}
	return nil
}
