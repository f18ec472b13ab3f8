package ratelimit

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// rlsServer is a rate limit service for tests: each distinct descriptor may be hit limit
// times; mode switches it to misbehaving.
type rlsServer struct {
	rlsv3.UnimplementedRateLimitServiceServer
	limit uint32

	mu       sync.Mutex
	mode     string // "", "error", "slow", "unknown"
	hits     map[string]uint32
	requests []*rlsv3.RateLimitRequest
}

func (s *rlsServer) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	s.mu.Lock()
	mode := s.mode
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	switch mode {
	case "error":
		return nil, status.Error(codes.Unavailable, "backend down")
	case "slow":
		<-ctx.Done()
		return nil, ctx.Err()
	case "unknown":
		return &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_UNKNOWN}, nil
	}
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK,
		ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "x-rls", Value: "seen"}},
		RequestHeadersToAdd:  []*corev3.HeaderValue{{Key: "x-rls-domain", Value: req.GetDomain()}}}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range req.GetDescriptors() {
		var key []string
		for _, e := range d.GetEntries() {
			key = append(key, e.GetKey()+"="+e.GetValue())
		}
		k := strings.Join(key, ",")
		s.hits[k] += req.GetHitsAddend()
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: s.limit, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
			DurationUntilReset: durationpb.New(42 * time.Second)}
		if s.hits[k] > s.limit {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		} else {
			st.LimitRemaining = s.limit - s.hits[k]
		}
		resp.Statuses = append(resp.Statuses, st)
	}
	return resp, nil
}

func (s *rlsServer) setMode(m string) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
}

// startRLS serves s on a real TCP listener and returns a connection to it.
func startRLS(t *testing.T, s *rlsServer) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(srv, s)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestServiceCheck(t *testing.T) {
	srv := &rlsServer{limit: 2, hits: map[string]uint32{}}
	conn := startRLS(t, srv)
	svc := NewService(conn, ServiceOptions{Domain: "mesh", Timeout: time.Second})
	ctx := context.Background()
	alice := []Descriptor{{{"generic_key", "api"}, {"source_identity", "spiffe://mesh.local/svc/alice"}}}
	bob := []Descriptor{{{"generic_key", "api"}, {"source_identity", "spiffe://mesh.local/svc/bob"}}}

	for i, want := range []struct {
		allowed   bool
		remaining int
	}{{true, 1}, {true, 0}, {false, 0}} {
		r := svc.Check(ctx, alice)
		if r.Err != nil || r.Allowed != want.allowed || r.Remaining != want.remaining || r.Limit != 2 || r.Reset != 42*time.Second {
			t.Fatalf("Check #%d = %+v, want allowed %v remaining %d limit 2 reset 42s", i+1, r, want.allowed, want.remaining)
		}
		if !want.allowed {
			if r.RetryAfter != 42*time.Second {
				t.Errorf("RetryAfter = %v, want 42s", r.RetryAfter)
			}
			h := http.Header{}
			r.SetHeaders(h)
			if h.Get("Retry-After") != "42" || h.Get("X-Rls") != "seen" || h.Get("RateLimit-Limit") != "2" {
				t.Errorf("headers = %v", h)
			}
		}
		if len(r.RequestHeaders) != 1 || r.RequestHeaders[0] != (Entry{"x-rls-domain", "mesh"}) || r.Descriptor != 0 {
			t.Errorf("RequestHeaders = %v, Descriptor = %d", r.RequestHeaders, r.Descriptor)
		}
	}
	if r := svc.Check(ctx, bob); !r.Allowed {
		t.Errorf("Check(bob) = %+v, want allowed (own descriptor)", r)
	}
	if r := svc.Check(ctx, nil); !r.Allowed || r.Err != nil {
		t.Errorf("Check(no descriptors) = %+v, want allowed without a call", r)
	}
	srv.mu.Lock()
	last := srv.requests[len(srv.requests)-1]
	n := len(srv.requests)
	srv.mu.Unlock()
	if n != 4 || last.GetDomain() != "mesh" || last.GetHitsAddend() != 1 || last.GetDescriptors()[0].GetEntries()[1].GetValue() != "spiffe://mesh.local/svc/bob" {
		t.Errorf("service saw %d requests, last %v", n, last)
	}
}

func TestServiceFailureModes(t *testing.T) {
	srv := &rlsServer{limit: 100, hits: map[string]uint32{}}
	conn := startRLS(t, srv)
	d := []Descriptor{{{"generic_key", "x"}}}
	for _, mode := range []string{"error", "slow", "unknown"} {
		for _, closed := range []bool{false, true} {
			t.Run(mode+map[bool]string{false: "/open", true: "/closed"}[closed], func(t *testing.T) {
				srv.setMode(mode)
				svc := NewService(conn, ServiceOptions{Domain: "mesh", Timeout: 50 * time.Millisecond, FailClosed: closed})
				start := time.Now()
				r := svc.Check(context.Background(), d)
				if r.Err == nil || r.Allowed == closed {
					t.Errorf("Check() = allowed %v err %v, want allowed %v and an error", r.Allowed, r.Err, !closed)
				}
				if mode == "unknown" && !errors.Is(r.Err, ErrServiceUnknown) {
					t.Errorf("Check() err = %v, want ErrServiceUnknown", r.Err)
				}
				if el := time.Since(start); el > 2*time.Second {
					t.Errorf("Check() took %v, want it bounded by the timeout", el)
				}
			})
		}
	}
	srv.setMode("")
	if r := NewService(conn, ServiceOptions{}).Check(context.Background(), d); !r.Allowed || r.Err != nil {
		t.Errorf("Check() after recovery = %+v", r)
	}
}
