package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/sidecar/circuit"
)

// RetryOn is a set of retry conditions.
type RetryOn uint32

// Retry conditions, as in the config's retries.on. Like Envoy's, the broad ones include the
// narrow ones: 5xx and gateway-error also retry failures without a response (connect
// failures, resets, timeouts of a try).
const (
	RetryConnectFailure RetryOn = 1 << iota
	RetryRefusedStream
	RetryReset
	RetryGatewayError
	Retry5xx
	RetryStatusCodes
	RetryGRPCCancelled
	RetryGRPCDeadlineExceeded
	RetryGRPCInternal
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
)

// retryNames are the config names of the conditions, in bit order.
var retryNames = [...]string{"connect-failure", "refused-stream", "reset", "gateway-error", "5xx",
	"retriable-status-codes", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

// ParseRetryOn converts condition names (the config's retries.on) into a set.
func ParseRetryOn(names []string) (RetryOn, error) {
	var on RetryOn
	for _, n := range names {
		i := indexOf(retryNames[:], n)
		if i < 0 {
			return 0, fmt.Errorf("unknown retry condition %q", n)
		}
		on |= 1 << i
	}
	return on, nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// name returns the config name of the lowest condition in on.
func (on RetryOn) name() string {
	if on == 0 {
		return ""
	}
	return retryNames[bits.TrailingZeros32(uint32(on))]
}

// RetryPolicy is how a Handler retries. It is immutable once given to NewHandler.
type RetryPolicy struct {
	// Retries is how many times a request may be retried after its first try.
	Retries int
	// On is the set of conditions that are retried.
	On RetryOn
	// StatusCodes are retried under RetryStatusCodes.
	StatusCodes []int
	// PerTryTimeout bounds the wait for response headers of each try; 0 for none.
	PerTryTimeout time.Duration
	// BackoffBase and BackoffMax shape the wait before retry n: a random time in
	// [0, min(BackoffMax, BackoffBase × 2^(n-1))] (exponential backoff, full jitter).
	BackoffBase, BackoffMax time.Duration
	// BufferLimit is the largest request body kept to be sent again.
	BufferLimit int
}

// backoff returns the wait before the n-th retry (n >= 1).
func (p *RetryPolicy) backoff(n int) time.Duration {
	ceiling := p.BackoffBase
	for i := 1; i < n && ceiling < p.BackoffMax; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, p.BackoffMax)
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling + 1)
}

// idempotent reports whether RFC 9110 defines method as idempotent.
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// errPerTryTimeout is the cancellation cause of a try that got no response headers within
// per_try_timeout.
var errPerTryTimeout = errors.New("upstream per-try timeout")

// failureConditions returns the conditions a try that failed with err (no response) falls
// under, and whether nothing of the request can have reached the upstream.
func failureConditions(err error, try context.Context) (on RetryOn, nothingSent bool) {
	var oe *circuit.OverflowError
	switch {
	case errors.As(err, &oe):
		return 0, false // a local limit: Envoy does not retry overflows either
	case IsDialError(err):
		return RetryConnectFailure | RetryReset | RetryGatewayError | Retry5xx, true
	case strings.Contains(err.Error(), "REFUSED_STREAM"):
		// HTTP/2 RST_STREAM(REFUSED_STREAM): the server did not process the stream.
		return RetryRefusedStream | RetryReset | RetryGatewayError | Retry5xx, true
	case errors.Is(context.Cause(try), errPerTryTimeout):
		return RetryReset | RetryGatewayError | Retry5xx, false
	}
	return RetryReset | RetryGatewayError | Retry5xx, false
}

// responseConditions returns the conditions a response falls under.
func (p *RetryPolicy) responseConditions(resp *http.Response) RetryOn {
	code := resp.StatusCode
	var on RetryOn
	if code >= 500 {
		on |= Retry5xx
	}
	if code == 502 || code == 503 || code == 504 {
		on |= RetryGatewayError
	}
	for _, c := range p.StatusCodes {
		if c == code {
			on |= RetryStatusCodes
		}
	}
	// gRPC: only a trailers-only response carries its status in the headers, before any
	// message; that is the one that can be retried.
	if gs := resp.Header["Grpc-Status"]; len(gs) > 0 {
		switch gs[0] {
		case "1":
			on |= RetryGRPCCancelled
		case "4":
			on |= RetryGRPCDeadlineExceeded
		case "8":
			on |= RetryGRPCResourceExhausted
		case "13":
			on |= RetryGRPCInternal
		case "14":
			on |= RetryGRPCUnavailable
		}
	}
	return on
}

// attemptHeader holds the X-Ferry-Attempt values of the first tries. It is never written
// after initialization: requests share its slices read-only, so that setting the header
// allocates nothing.
var attemptHeader = func() (v [16][]string) {
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

func attemptValue(n int) []string {
	if n < len(attemptHeader) {
		return attemptHeader[n]
	}
	return []string{strconv.Itoa(n)}
}

// replayBody is a request body that can be sent again. The first try reads the client's
// body through it while it records up to limit bytes; once the client's body has ended
// within the limit, later tries replay the recording. A try may also start over when no
// byte was read yet (a connect failure). Only one try reads the client's body at a time:
// a retry starts either from a complete recording, which it never writes, or when nothing
// was read and no read is in progress.
type replayBody struct {
	src   io.Reader
	limit int

	// Written by the reading try only; published to others through complete.
	buf  []byte
	over bool

	consumed atomic.Int64 // bytes read from src
	reading  atomic.Bool  // a try is reading src; it owns buf and over meanwhile
	complete atomic.Bool  // src ended and buf holds all of it
}

func newReplayBody(src io.Reader, limit int, contentLength int64) *replayBody {
	rb := &replayBody{src: src, limit: limit}
	if contentLength > 0 && contentLength <= int64(limit) {
		rb.buf = make([]byte, 0, contentLength)
	}
	if limit == 0 {
		rb.over = true
	}
	return rb
}

// untouched reports whether nothing was read from the client's body and no read is in
// progress, so that a new try may start reading it.
func (rb *replayBody) untouched() bool { return rb.consumed.Load() == 0 && !rb.reading.Load() }

// attempt returns the body of one try.
func (rb *replayBody) attempt() *attemptBody { return &attemptBody{rb: rb} }

// attemptBody is one try's view of a replayBody. Close does not close the client's body:
// the forwarder closes it when the request ends.
type attemptBody struct {
	rb   *replayBody
	off  int
	dead atomic.Bool // the try was abandoned for a retry: it may not read any more
}

var (
	errTryAbandoned       = errors.New("request body: the try was abandoned for a retry")
	errConcurrentBodyRead = errors.New("request body: read by two tries at once")
)

// abandon stops the try from reading the client's body (its transport may still hold it).
func (a *attemptBody) abandon() { a.dead.Store(true) }

func (a *attemptBody) Read(p []byte) (int, error) {
	rb := a.rb
	if rb.complete.Load() {
		// The recording is final and never written again: any try may replay it.
		if a.off >= len(rb.buf) {
			return 0, io.EOF
		}
		n := copy(p, rb.buf[a.off:])
		a.off += n
		return n, nil
	}
	if a.dead.Load() {
		return 0, errTryAbandoned
	}
	// The reading flag hands the client's body, and the recording, from one try to the
	// next; it also makes a late read by an abandoned try fail instead of racing.
	if !rb.reading.CompareAndSwap(false, true) {
		return 0, errConcurrentBodyRead
	}
	defer rb.reading.Store(false)
	n, err := rb.src.Read(p)
	if n > 0 {
		rb.consumed.Add(int64(n))
		if !rb.over {
			if len(rb.buf)+n <= rb.limit {
				rb.buf = append(rb.buf, p[:n]...)
			} else {
				rb.over, rb.buf = true, nil
			}
		}
		a.off += n
	}
	if err == io.EOF && !rb.over {
		rb.complete.Store(true)
	}
	return n, err
}

func (a *attemptBody) Close() error { return nil }
