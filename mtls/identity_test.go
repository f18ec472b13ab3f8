package mtls

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestServiceID(t *testing.T) {
	tests := []struct {
		name    string
		svc     Service
		want    string
		wantErr string
	}{
		{"ferry form", Service{TrustDomain: testTD, Name: "api"}, "spiffe://mesh.local/svc/api", ""},
		{"consul form", Service{TrustDomain: testTD, Name: "web", Namespace: "default", Datacenter: "dc1"},
			"spiffe://mesh.local/ns/default/dc/dc1/svc/web", ""},
		{"consul partition", Service{TrustDomain: testTD, Name: "web", Namespace: "ns1", Datacenter: "dc2", Partition: "ap1"},
			"spiffe://mesh.local/ap/ap1/ns/ns1/dc/dc2/svc/web", ""},
		{"no trust domain", Service{Name: "api"}, "", "without a trust domain"},
		{"no name", Service{TrustDomain: testTD}, "", "without a service name"},
		{"half consul", Service{TrustDomain: testTD, Name: "api", Namespace: "default"}, "", "both a namespace and a datacenter"},
		{"bad segment", Service{TrustDomain: testTD, Name: "a/b"}, "", "path segment"},
		{"bad char", Service{TrustDomain: testTD, Name: "api v2"}, "", "path segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tt.svc.ID()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ID() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ID() error = %v", err)
			}
			if id.String() != tt.want {
				t.Errorf("ID() = %s, want %s", id, tt.want)
			}
			back, err := ParseService(id)
			if err != nil {
				t.Fatalf("ParseService(%s) error = %v", id, err)
			}
			if back != tt.svc {
				t.Errorf("ParseService(%s) = %+v, want %+v", id, back, tt.svc)
			}
			if back.String() != tt.want {
				t.Errorf("String() = %s, want %s", back, tt.want)
			}
		})
	}
}

func TestServiceIDHelpers(t *testing.T) {
	id, err := ServiceID(testTD, "api")
	if err != nil || id.String() != "spiffe://mesh.local/svc/api" {
		t.Errorf("ServiceID() = %s, %v, want spiffe://mesh.local/svc/api", id, err)
	}
	id, err = ConsulServiceID(spiffeid.RequireTrustDomainFromString("11111111-2222-3333-4444-555555555555.consul"), "default", "dc1", "db")
	if want := "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/db"; err != nil || id.String() != want {
		t.Errorf("ConsulServiceID() = %s, %v, want %s", id, err, want)
	}
}

func TestParseServiceRejects(t *testing.T) {
	for _, s := range []string{
		"spiffe://mesh.local",
		"spiffe://mesh.local/svc",
		"spiffe://mesh.local/svc/api/extra",
		"spiffe://mesh.local/ns/default/svc/api",
		"spiffe://mesh.local/ns/default/dc/dc1/svc",
		"spiffe://mesh.local/workload/api",
		"spiffe://mesh.local/ap/x/ns/default/dc/dc1/svc",
	} {
		t.Run(s, func(t *testing.T) {
			if got, err := ParseService(spiffeid.RequireFromString(s)); err == nil {
				t.Errorf("ParseService(%s) = %+v, want an error", s, got)
			}
		})
	}
	if _, err := ParseService(spiffeid.ID{}); err == nil {
		t.Error("ParseService(zero) error = nil, want one")
	}
}

func TestParseIDAndTrustDomain(t *testing.T) {
	if _, err := ParseID("https://mesh.local/svc/api"); err == nil {
		t.Error("ParseID(https://…) error = nil, want one")
	}
	if id, err := ParseID("spiffe://mesh.local/svc/api"); err != nil || id.Path() != "/svc/api" {
		t.Errorf("ParseID() = %s, %v", id, err)
	}
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"", "mesh.local", true},
		{"example.org", "example.org", true},
		{"spiffe://example.org", "", false},
		{"Upper.Case", "", false},
	}
	for _, tt := range tests {
		td, err := ParseTrustDomain(tt.in)
		if (err == nil) != tt.ok || (tt.ok && td.Name() != tt.want) {
			t.Errorf("ParseTrustDomain(%q) = %q, %v, want %q (ok=%v)", tt.in, td.Name(), err, tt.want, tt.ok)
		}
	}
}

func TestExpectedID(t *testing.T) {
	tests := []struct {
		upstream, configured, want string
		ok                         bool
	}{
		{"api", "", "spiffe://mesh.local/svc/api", true},
		{"api", "spiffe://mesh.local/ns/default/dc/dc1/svc/api", "spiffe://mesh.local/ns/default/dc/dc1/svc/api", true},
		{"api", "spiffe://other.org/svc/api", "spiffe://other.org/svc/api", true},
		{"api", "not-an-id", "", false},
		{"bad name", "", "", false},
	}
	for _, tt := range tests {
		id, err := ExpectedID(testTD, tt.upstream, tt.configured)
		if (err == nil) != tt.ok || (tt.ok && id.String() != tt.want) {
			t.Errorf("ExpectedID(%q, %q) = %s, %v, want %s (ok=%v)", tt.upstream, tt.configured, id, err, tt.want, tt.ok)
		}
	}
}

func TestMatchService(t *testing.T) {
	match := MatchService(testTD, "api")
	tests := []struct {
		id string
		ok bool
	}{
		{"spiffe://mesh.local/svc/api", true},
		{"spiffe://mesh.local/ns/default/dc/dc1/svc/api", true},
		{"spiffe://mesh.local/ap/p/ns/default/dc/dc1/svc/api", true},
		{"spiffe://mesh.local/svc/web", false},
		{"spiffe://other.org/svc/api", false},
		{"spiffe://mesh.local/api", false},
	}
	for _, tt := range tests {
		if err := match(spiffeid.RequireFromString(tt.id)); (err == nil) != tt.ok {
			t.Errorf("MatchService(api)(%s) = %v, want ok=%v", tt.id, err, tt.ok)
		}
	}
}
