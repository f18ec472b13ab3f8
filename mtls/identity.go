package mtls

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when the configuration names none.
const DefaultTrustDomain = "mesh.local"

// Service is the mesh service a SPIFFE ID names. Ferry's own form is
// spiffe://<trust_domain>/svc/<name>; Consul Connect's form is
// spiffe://<trust_domain>/ns/<namespace>/dc/<datacenter>/svc/<name>, with an optional
// leading /ap/<partition> (Consul Enterprise admin partitions). A Service is a plain
// value, safe to copy and share.
type Service struct {
	TrustDomain spiffeid.TrustDomain
	Name        string
	// Namespace and Datacenter are set for Consul's form only; Partition only for
	// Consul's partitioned form.
	Namespace  string
	Datacenter string
	Partition  string
}

// ID formats s as a SPIFFE ID: Ferry's form when Namespace and Datacenter are empty,
// Consul's form otherwise.
func (s Service) ID() (spiffeid.ID, error) {
	if s.TrustDomain.IsZero() {
		return spiffeid.ID{}, errors.New("mtls: service identity without a trust domain")
	}
	if s.Name == "" {
		return spiffeid.ID{}, errors.New("mtls: service identity without a service name")
	}
	if s.Namespace == "" && s.Datacenter == "" && s.Partition == "" {
		return spiffeid.FromSegments(s.TrustDomain, "svc", s.Name)
	}
	if s.Namespace == "" || s.Datacenter == "" {
		return spiffeid.ID{}, fmt.Errorf("mtls: Consul identity for %q needs both a namespace and a datacenter", s.Name)
	}
	var segs []string
	if s.Partition != "" {
		segs = append(segs, "ap", s.Partition)
	}
	segs = append(segs, "ns", s.Namespace, "dc", s.Datacenter, "svc", s.Name)
	return spiffeid.FromSegments(s.TrustDomain, segs...)
}

// String returns the SPIFFE ID of s, or a description of why it has none.
func (s Service) String() string {
	id, err := s.ID()
	if err != nil {
		return err.Error()
	}
	return id.String()
}

// ServiceID returns Ferry's default identity for a service:
// spiffe://<td>/svc/<service>.
func ServiceID(td spiffeid.TrustDomain, service string) (spiffeid.ID, error) {
	return Service{TrustDomain: td, Name: service}.ID()
}

// ConsulServiceID returns Consul Connect's identity for a service:
// spiffe://<td>/ns/<namespace>/dc/<datacenter>/svc/<service>.
func ConsulServiceID(td spiffeid.TrustDomain, namespace, datacenter, service string) (spiffeid.ID, error) {
	return Service{TrustDomain: td, Name: service, Namespace: namespace, Datacenter: datacenter}.ID()
}

// ParseService reads the service out of a SPIFFE ID in either of the forms described on
// Service. Any other path is an error.
func ParseService(id spiffeid.ID) (Service, error) {
	if id.IsZero() {
		return Service{}, errors.New("mtls: empty SPIFFE ID")
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	s := Service{TrustDomain: id.TrustDomain()}
	switch {
	case len(segs) == 2 && segs[0] == "svc":
		s.Name = segs[1]
	case len(segs) == 6 && segs[0] == "ns" && segs[2] == "dc" && segs[4] == "svc":
		s.Namespace, s.Datacenter, s.Name = segs[1], segs[3], segs[5]
	case len(segs) == 8 && segs[0] == "ap" && segs[2] == "ns" && segs[4] == "dc" && segs[6] == "svc":
		s.Partition, s.Namespace, s.Datacenter, s.Name = segs[1], segs[3], segs[5], segs[7]
	default:
		return Service{}, fmt.Errorf("mtls: %s is not a service identity (want /svc/NAME or /ns/NS/dc/DC/svc/NAME)", id)
	}
	return s, nil
}

// ParseID parses a SPIFFE ID such as spiffe://mesh.local/svc/api.
func ParseID(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("mtls: invalid SPIFFE ID %q: %w", s, err)
	}
	return id, nil
}

// ParseTrustDomain parses a trust domain name such as mesh.local; an empty name means
// DefaultTrustDomain.
func ParseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		name = DefaultTrustDomain
	}
	if strings.Contains(name, "://") {
		return spiffeid.TrustDomain{}, fmt.Errorf("mtls: invalid trust domain %q: want a name such as %s, not a URI", name, DefaultTrustDomain)
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("mtls: invalid trust domain %q: %w", name, err)
	}
	return td, nil
}

// ExpectedID returns the identity Ferry expects of an upstream's endpoints: configured
// (the upstream's `identity` key) when it is set, otherwise the default identity of the
// upstream's service name in td. A configured ID must belong to td or name another trust
// domain explicitly; it is returned as written.
func ExpectedID(td spiffeid.TrustDomain, upstream, configured string) (spiffeid.ID, error) {
	if configured != "" {
		return ParseID(configured)
	}
	return ServiceID(td, upstream)
}

// MatchService returns a matcher that accepts the identity of service in td in any of
// the forms described on Service (any namespace, datacenter and partition). Use it to
// authorize a service by name when its certificates may come from Consul.
func MatchService(td spiffeid.TrustDomain, service string) spiffeid.Matcher {
	return func(id spiffeid.ID) error {
		s, err := ParseService(id)
		if err != nil {
			return err
		}
		if s.TrustDomain != td || s.Name != service {
			return fmt.Errorf("mtls: %s is not service %q in trust domain %q", id, service, td)
		}
		return nil
	}
}
