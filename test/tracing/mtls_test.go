package tracing

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/sidecar/telemetry/jaegertest"
	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestPeerIdentitiesOverMTLS: with mTLS between the sidecars, the trace names who was on
// the other end of each hop: A's client span the identity B proved, B's server span the
// identity A proved; A's access log names B's identity too.
func TestPeerIdentitiesOverMTLS(t *testing.T) {
	j := jaegertest.Start(t)
	appAddr, seen := startHTTPApp(t)
	pki := ferrytest.NewPKI(t)
	aCerts, bCerts := pki.Issue("svc-a"), pki.Issue("svc-b")
	inbound, outbound := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	adminA, adminB := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, "svc-b", adminB, fmt.Sprintf(`service: svc-b
admin: {address: %s}
inbound: {address: %s, target: %s}
telemetry:
%s%s`, adminB, inbound, appAddr, tracingBlock(j, ""), bCerts.MTLSBlock()))
	a := startFerry(t, "svc-a", adminA, fmt.Sprintf(`service: svc-a
admin: {address: %s}
outbound: [{upstream: svc-b, address: %s}]
upstreams: [{name: svc-b, endpoints: [%s]}]
telemetry:
  access_log: stdout
%s%s`, adminA, outbound, inbound, tracingBlock(j, ""), aCerts.MTLSBlock()))

	resp, body := get(t, "http://"+outbound+"/mtls", nil)
	if resp.StatusCode != http.StatusOK || body != "hello\n" {
		t.Fatalf("GET /mtls = %d %q, want 200 hello", resp.StatusCode, body)
	}
	traceID, _ := traceparent(t, seen.get(t, "/mtls"))
	tr := j.WaitTrace(t, traceID, 3, waitTimeout)
	for _, tc := range []struct {
		service, kind, want string
	}{
		{"svc-a", "client", "spiffe://mesh.local/svc/svc-b"},
		{"svc-b", "server", "spiffe://mesh.local/svc/svc-a"},
	} {
		ss := tr.Find(func(s jaegertest.Span) bool {
			return s.Process.ServiceName == tc.service && s.TagString("span.kind") == tc.kind
		})
		if len(ss) != 1 {
			t.Fatalf("%d %s spans of %s, want 1 (spans: %s)", len(ss), tc.kind, tc.service, describe(tr))
		}
		if got := ss[0].TagString("ferry.peer_identity"); got != tc.want {
			t.Errorf("%s %s span ferry.peer_identity = %q, want %q", tc.service, tc.kind, got, tc.want)
		}
	}
	want := `"peer_identity":"spiffe://mesh.local/svc/svc-b"`
	ferrytest.Eventually(t, waitTimeout, func() bool { return strings.Contains(a.Output(), want) },
		func() string { return "A's access log has no " + want + ":\n" + a.Output() })
}
