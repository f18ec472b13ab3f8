package l7

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// TestForwardReusesUpstreamHeader checks that a state kept across requests (as a reused
// state is) lends its header map to the upstream request when the round trip does not keep
// it, that the map is emptied after each request so that no field leaks into the next, and
// that it is left alone (a new map per request) when the round trip may keep it.
func TestForwardReusesUpstreamHeader(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		var names []string
		for k := range r.Header {
			if strings.HasPrefix(k, "X-T-") {
				names = append(names, k)
			}
		}
		slices.Sort(names)
		_, _ = io.WriteString(w, strings.Join(names, ","))
	}))
	for _, tc := range []struct {
		name     string
		protocol string
		proto2   bool  // the downstream request is HTTP/2
		body     int64 // -1: a body of unknown length
		reuse    bool
	}{
		{"http1", ProtocolHTTP1, false, 0, true},
		{"auto from HTTP/1.1", ProtocolAuto, false, 0, true},
		{"body of known length", ProtocolAuto, false, 5, true},
		{"body of unknown length", ProtocolHTTP1, false, -1, false},
		{"auto from HTTP/2", ProtocolAuto, true, 0, false},
		{"http2", ProtocolHTTP2, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTransport(TransportOptions{Protocol: tc.protocol, ConnectTimeout: time.Second, IdleTimeout: time.Minute})
			t.Cleanup(tr.CloseIdleConnections)
			h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend),
				Transport: tr, RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")})
			var kept http.Header // what a reused state carries from one request to the next
			send := func(fields ...string) string {
				t.Helper()
				var body io.Reader
				if tc.body != 0 {
					body = strings.NewReader("hello")
				}
				r := httptest.NewRequest(http.MethodPost, "http://test/", body)
				r.ContentLength = tc.body
				if tc.proto2 {
					r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
				}
				for _, f := range fields {
					r.Header[f] = []string{"1"}
				}
				rec := httptest.NewRecorder()
				st := &state{ResponseWriter: rec, t: h.def, m: h.o.Metrics, outHdr: kept}
				if aborted := h.forward(context.Background(), st, r, ""); aborted {
					t.Fatalf("forward() aborted, want a complete response")
				}
				if rec.Code != http.StatusOK {
					t.Fatalf("status = %d, want 200 (body %q)", rec.Code, rec.Body)
				}
				if tc.reuse && len(fields) <= maxKeptHeader {
					if st.outHdr == nil || len(st.outHdr) != 0 {
						t.Errorf("after the request, outHdr = %v, want an empty map", st.outHdr)
					}
				} else if st.outHdr != nil {
					t.Errorf("after the request, outHdr = %v, want nil (not reusable)", st.outHdr)
				}
				kept = st.outHdr
				return rec.Body.String()
			}
			if got, want := send("X-T-One", "X-T-Same"), "X-T-One,X-T-Same"; got != want {
				t.Errorf("request 1: upstream saw %q, want %q", got, want)
			}
			first := kept
			if got, want := send("X-T-Two", "X-T-Same"), "X-T-Same,X-T-Two"; got != want {
				t.Errorf("request 2: upstream saw %q, want %q (nothing of request 1)", got, want)
			}
			if tc.reuse && reflect.ValueOf(kept).UnsafePointer() != reflect.ValueOf(first).UnsafePointer() {
				t.Errorf("request 2 used a new header map, want the state's")
			}
			var many []string
			for i := range maxKeptHeader + 8 {
				many = append(many, "X-T-"+strconv.Itoa(i))
			}
			if got := send(many...); strings.Count(got, ",") != len(many)-1 {
				t.Errorf("request 3: upstream saw %q, want %d fields", got, len(many))
			}
			if got, want := send("X-T-Four"), "X-T-Four"; got != want {
				t.Errorf("request 4: upstream saw %q, want %q", got, want)
			}
		})
	}
}

// TestUpstreamHeaderIntoKeptMap checks that building the upstream request's header into a
// kept map allocates nothing.
func TestUpstreamHeaderIntoKeptMap(t *testing.T) {
	in := http.Header{"Accept": {"*/*"}, "User-Agent": {"test"}, "X-Request-Id": {"abc"},
		"Te": {"trailers"}, "X-Forwarded-For": {"192.0.2.1"}, "Keep-Alive": {"5"}}
	out := make(http.Header)
	var f reqFields
	allocs := testing.AllocsPerRun(100, func() {
		clear(out)
		f = reqFields{}
		upstreamHeader(out, in, &f)
	})
	if allocs != 0 {
		t.Errorf("upstreamHeader() into a kept map: %v allocs, want 0", allocs)
	}
	want := http.Header{"Accept": {"*/*"}, "User-Agent": {"test"}, "X-Request-Id": {"abc"}}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("upstreamHeader() = %v, want %v", out, want)
	}
	if !f.userAgent || len(f.te) != 1 || len(f.xff) != 1 {
		t.Errorf("upstreamHeader() recorded %+v, want User-Agent, TE and X-Forwarded-For", f)
	}
}
