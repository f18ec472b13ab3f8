package sidecar

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/ratelimit"
)

// rlsClient is the connection to the global rate limit service (policy.rate_limit_service)
// and the ratelimit.Service asking it. It is kept across reloads while the address and the
// options are unchanged, so the gRPC connection stays warm.
type rlsClient struct {
	key  string
	conn *grpc.ClientConn
	svc  *ratelimit.Service
}

// service returns the Service, nil for no client.
func (c *rlsClient) service() *ratelimit.Service {
	if c == nil {
		return nil
	}
	return c.svc
}

// rateLimitServiceFor returns the client pol asks (nil when it has no global rate
// limit): the running one while its settings are unchanged, a new one otherwise. A new
// one is used only if commitRLS is called; settleRLS closes it otherwise. The gRPC
// connection is made lazily, on the first call, so this does no I/O. Calls are made in
// plaintext: run the service on loopback or reach it through an outbound listener of
// this sidecar for mTLS.
func (s *Sidecar) rateLimitServiceFor(pol *policy.Policy) (*rlsClient, error) {
	if !pol.HasGlobalRateLimits() {
		return nil, nil
	}
	addr, opts := pol.RateLimitService()
	key := fmt.Sprintf("%s|%+v", addr, opts)
	if cur := s.rls; cur != nil && cur.key == key {
		return cur, nil
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("policy.rate_limit_service: %w", err)
	}
	return &rlsClient{key: key, conn: conn, svc: ratelimit.NewService(conn, opts)}, nil
}

// settleRLS closes c if Apply did not commit it.
func (s *Sidecar) settleRLS(c *rlsClient) {
	if c != nil && c != s.rls {
		_ = c.conn.Close()
	}
}

// commitRLS makes c the running client; the previous one is closed once requests that
// may still be asking it have had the drain timeout to finish.
func (s *Sidecar) commitRLS(c *rlsClient, drain time.Duration) {
	old := s.rls
	s.rls = c
	if old != nil && old != c {
		s.retire(drain, func(ctx context.Context) { <-ctx.Done(); _ = old.conn.Close() })
	}
}

// closeRLS closes the client at the end of Drain.
func (s *Sidecar) closeRLS() {
	if c := s.rls; c != nil {
		s.rls = nil
		_ = c.conn.Close()
	}
}
