// Package jaegertest runs a real Jaeger all-in-one (v1.62.0, in-memory storage) for tests:
// every listener on 127.0.0.1 and a free port, the query API answering before Start
// returns, stopped at the end of the test. It also reads traces back from the query API
// (GET /api/traces?service=NAME and /api/traces/{id}) into small structs.
//
// The binary is $FERRY_JAEGER_BIN, else <repo>/.deps/bin/jaeger-all-in-one (built by
// `make deps-jaeger`), else jaeger-all-in-one on PATH. A missing binary fails the test.
package jaegertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// Ports are every port the all-in-one listens on, all bound to 127.0.0.1. The three
// processor ports are UDP (the legacy agent); the rest are TCP.
type Ports struct {
	OTLPGRPC, OTLPHTTP int // --collector.otlp.grpc.host-port, --collector.otlp.http.host-port
	Query, QueryGRPC   int // --query.http-server.host-port, --query.grpc-server.host-port
	Admin              int // --admin.http.host-port (health check, /metrics)
	CollectorGRPC      int // --collector.grpc-server.host-port (Jaeger's own gRPC model)
	CollectorHTTP      int // --collector.http-server.host-port (Jaeger's own Thrift over HTTP)
	AgentHTTP          int // --http-server.host-port (agent sampling endpoint)
	JaegerBinary       int // --processor.jaeger-binary.server-host-port (UDP)
	JaegerCompact      int // --processor.jaeger-compact.server-host-port (UDP)
	ZipkinCompact      int // --processor.zipkin-compact.server-host-port (UDP)
}

// Jaeger is a running all-in-one. Its methods are safe for concurrent use.
type Jaeger struct {
	// OTLPGRPCAddr is the OTLP/gRPC receiver, 127.0.0.1:port (an otlp_endpoint for protocol grpc).
	OTLPGRPCAddr string
	// OTLPHTTPAddr is the OTLP/HTTP receiver, 127.0.0.1:port (an otlp_endpoint for protocol http).
	OTLPHTTPAddr string
	// QueryURL is the query API and UI, http://127.0.0.1:port.
	QueryURL string
	// AdminURL is the admin server (health check, /metrics), http://127.0.0.1:port.
	AdminURL string
	// Ports are all the ports it listens on; StartOn takes them to restart where it was.
	Ports Ports

	t    testing.TB
	proc *ferrytest.Child
	hc   *http.Client
}

// Binary returns the path of the jaeger-all-in-one binary, failing t if there is none.
func Binary(t testing.TB) string {
	t.Helper()
	return ferrytest.Tool(t, "FERRY_JAEGER_BIN", "jaeger-all-in-one", "deps-jaeger")
}

// Start runs an all-in-one on fresh free ports, waits until its collector is healthy and
// its query API answers, and stops it when the test ends. It fails t if Jaeger does not
// come up within 30s (after up to three tries with new ports, in case another process
// took a port between picking and binding it).
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Binary(t)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports, err := FreePorts()
		if err != nil {
			t.Fatalf("jaegertest: free ports: %v", err)
		}
		j, err := start(t, bin, ports)
		if err == nil {
			return j
		}
		lastErr = err
	}
	t.Fatalf("jaegertest: %v", lastErr)
	return nil
}

// StartOn runs an all-in-one on the given ports (those of a stopped one, to bring a
// collector back where clients expect it). Its storage starts empty.
func StartOn(t testing.TB, ports Ports) *Jaeger {
	t.Helper()
	j, err := start(t, Binary(t), ports)
	if err != nil {
		t.Fatalf("jaegertest: %v", err)
	}
	return j
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func start(t testing.TB, bin string, ports Ports) (*Jaeger, error) {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "jaeger-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{
		"--admin.http.host-port=" + hostPort(ports.Admin),
		"--collector.grpc-server.host-port=" + hostPort(ports.CollectorGRPC),
		"--collector.http-server.host-port=" + hostPort(ports.CollectorHTTP),
		"--collector.otlp.grpc.host-port=" + hostPort(ports.OTLPGRPC),
		"--collector.otlp.http.host-port=" + hostPort(ports.OTLPHTTP),
		"--http-server.host-port=" + hostPort(ports.AgentHTTP),
		"--processor.jaeger-binary.server-host-port=" + hostPort(ports.JaegerBinary),
		"--processor.jaeger-compact.server-host-port=" + hostPort(ports.JaegerCompact),
		"--processor.zipkin-compact.server-host-port=" + hostPort(ports.ZipkinCompact),
		"--query.grpc-server.host-port=" + hostPort(ports.QueryGRPC),
		"--query.http-server.host-port=" + hostPort(ports.Query),
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = jaegerEnv(ports)
	proc, err := ferrytest.StartChild(cmd, logf.Name())
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	j := &Jaeger{
		OTLPGRPCAddr: hostPort(ports.OTLPGRPC),
		OTLPHTTPAddr: hostPort(ports.OTLPHTTP),
		QueryURL:     "http://" + hostPort(ports.Query),
		AdminURL:     "http://" + hostPort(ports.Admin),
		Ports:        ports,
		t:            t,
		proc:         proc,
		// No keep-alive: no idle connection goroutines outlive a call, so tests can
		// check for leaked goroutines while Jaeger runs.
		hc: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second},
	}
	t.Cleanup(func() {
		j.Stop()
		if t.Failed() {
			t.Logf("jaeger log (%s), last lines:\n%s", j.proc.LogPath(), j.LogTail(40))
		}
	})
	if err := j.waitReady(30 * time.Second); err != nil {
		j.Kill()
		return nil, fmt.Errorf("jaeger on %s: %w\n%s", j.QueryURL, err, j.LogTail(30))
	}
	return j, nil
}

// jaegerEnv is the test's environment without the variables that would change how Jaeger
// runs (OTEL_*, storage and sampling selection), with Jaeger's own tracing turned off and
// pointed at itself so that it never sends spans anywhere else.
func jaegerEnv(ports Ports) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OTEL_") || strings.HasPrefix(kv, "SPAN_STORAGE_TYPE=") ||
			strings.HasPrefix(kv, "METRICS_STORAGE_TYPE=") || strings.HasPrefix(kv, "SAMPLING_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"SPAN_STORAGE_TYPE=memory",
		"OTEL_TRACES_SAMPLER=always_off",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+hostPort(ports.OTLPGRPC),
	)
}

// waitReady polls until the admin health check reports the server available and the
// query API lists services.
func (j *Jaeger) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-j.proc.Exited():
			return fmt.Errorf("jaeger exited: %v", j.proc.Err())
		default:
		}
		var health struct {
			Status string `json:"status"`
		}
		if err := j.getJSON(context.Background(), j.AdminURL+"/", &health); err != nil {
			last = err
		} else if health.Status != "Server available" {
			last = fmt.Errorf("health status %q", health.Status)
		} else {
			var services struct {
				Data []string `json:"data"`
			}
			if err := j.getJSON(context.Background(), j.QueryURL+"/api/services", &services); err != nil {
				last = err
			} else {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %v", timeout, last)
}

// errNotFound is what getJSON returns for a 404.
var errNotFound = errors.New("not found")

func (j *Jaeger) getJSON(ctx context.Context, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := j.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("GET %s: %w", u, errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("GET %s: decode: %w", u, err)
	}
	return nil
}

// Stop stops Jaeger (SIGTERM, then SIGKILL after 10s) and waits for it to exit. It is
// idempotent; the test's cleanup calls it too.
func (j *Jaeger) Stop() { j.proc.Stop(syscall.SIGTERM, 10*time.Second) }

// Kill stops Jaeger at once with SIGKILL, as a crash would, and waits for it to exit.
func (j *Jaeger) Kill() { j.proc.Kill() }

// LogTail returns the last n lines of Jaeger's log.
func (j *Jaeger) LogTail(n int) string { return j.proc.LogTail(n) }

// FreePorts picks distinct free ports on 127.0.0.1: TCP for the listeners, UDP for the
// three agent processors. Another process may still take one before Jaeger binds it;
// Start then retries with new ports.
func FreePorts() (Ports, error) {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	tcp := make([]int, 0, 8)
	for len(tcp) < cap(tcp) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Ports{}, err
		}
		closers = append(closers, l)
		tcp = append(tcp, l.Addr().(*net.TCPAddr).Port)
	}
	udp := make([]int, 0, 3)
	for len(udp) < cap(udp) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return Ports{}, err
		}
		closers = append(closers, pc)
		udp = append(udp, pc.LocalAddr().(*net.UDPAddr).Port)
	}
	return Ports{
		OTLPGRPC: tcp[0], OTLPHTTP: tcp[1], Query: tcp[2], QueryGRPC: tcp[3], Admin: tcp[4],
		CollectorGRPC: tcp[5], CollectorHTTP: tcp[6], AgentHTTP: tcp[7],
		JaegerBinary: udp[0], JaegerCompact: udp[1], ZipkinCompact: udp[2],
	}, nil
}

// Trace is one trace from the query API.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
	Warnings  []string           `json:"warnings"`
}

// Span is one span of a Trace. Process is filled in from the trace's processes.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	StartTime     int64       `json:"startTime"` // microseconds since the Unix epoch
	Duration      int64       `json:"duration"`  // microseconds
	Tags          []Tag       `json:"tags"`
	ProcessID     string      `json:"processID"`
	Warnings      []string    `json:"warnings"`
	Process       Process     `json:"-"`
}

// Reference links a span to another; RefType is CHILD_OF or FOLLOWS_FROM.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Tag is a span or process attribute. Type is string, bool, int64, float64 or binary;
// Value is the JSON value (a float64 for numbers).
type Tag struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Process is the resource that emitted a span: its service.name and other attributes.
type Process struct {
	ServiceName string `json:"serviceName"`
	Tags        []Tag  `json:"tags"`
}

// ParentSpanID is the span ID of the CHILD_OF reference, or "" for a root span.
func (s Span) ParentSpanID() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag returns the value of the span tag key (span.kind, otel.status_code, error and the
// span's attributes are all tags).
func (s Span) Tag(key string) (any, bool) { return findTag(s.Tags, key) }

// TagString returns the tag key formatted as text ("" if absent): numbers without a
// fraction print as integers, so an int attribute 200 is "200".
func (s Span) TagString(key string) string {
	v, ok := s.Tag(key)
	if !ok {
		return ""
	}
	return tagText(v)
}

// Tag returns the value of the process (resource) tag key.
func (p Process) Tag(key string) (any, bool) { return findTag(p.Tags, key) }

// TagString is Tag formatted as text, as for Span.TagString.
func (p Process) TagString(key string) string {
	v, ok := p.Tag(key)
	if !ok {
		return ""
	}
	return tagText(v)
}

func findTag(tags []Tag, key string) (any, bool) {
	for _, t := range tags {
		if t.Key == key {
			return t.Value, true
		}
	}
	return nil, false
}

func tagText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	default:
		return fmt.Sprint(x)
	}
}

// Span returns the span with the given ID.
func (tr Trace) Span(spanID string) (Span, bool) {
	for _, s := range tr.Spans {
		if s.SpanID == spanID {
			return s, true
		}
	}
	return Span{}, false
}

// Find returns the spans for which match is true.
func (tr Trace) Find(match func(Span) bool) []Span {
	var out []Span
	for _, s := range tr.Spans {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}

type tracesResponse struct {
	Data   []Trace `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

func (r *tracesResponse) traces() ([]Trace, error) {
	if len(r.Errors) > 0 {
		return nil, fmt.Errorf("jaeger query error %d: %s", r.Errors[0].Code, r.Errors[0].Msg)
	}
	for i := range r.Data {
		tr := &r.Data[i]
		for k := range tr.Spans {
			tr.Spans[k].Process = tr.Processes[tr.Spans[k].ProcessID]
		}
	}
	return r.Data, nil
}

// Traces returns the traces of service from the last hour (up to 1000), newest first.
func (j *Jaeger) Traces(ctx context.Context, service string) ([]Trace, error) {
	q := url.Values{"service": {service}, "limit": {"1000"},
		"start": {strconv.FormatInt(time.Now().Add(-time.Hour).UnixMicro(), 10)},
		"end":   {strconv.FormatInt(time.Now().Add(time.Minute).UnixMicro(), 10)}}
	var resp tracesResponse
	if err := j.getJSON(ctx, j.QueryURL+"/api/traces?"+q.Encode(), &resp); err != nil {
		return nil, err
	}
	return resp.traces()
}

// ErrTraceNotFound is returned by Trace for an ID that Jaeger does not have.
var ErrTraceNotFound = errors.New("jaegertest: trace not found")

// Trace returns the trace with the given ID (32 hex digits), or ErrTraceNotFound.
func (j *Jaeger) Trace(ctx context.Context, traceID string) (Trace, error) {
	var resp tracesResponse
	if err := j.getJSON(ctx, j.QueryURL+"/api/traces/"+url.PathEscape(traceID), &resp); err != nil {
		if errors.Is(err, errNotFound) {
			return Trace{}, ErrTraceNotFound
		}
		return Trace{}, err
	}
	trs, err := resp.traces()
	if err != nil {
		return Trace{}, err
	}
	if len(trs) == 0 {
		return Trace{}, ErrTraceNotFound
	}
	return trs[0], nil
}

// WaitTrace polls until the trace traceID has at least spans spans (Jaeger stores what
// its collector receives asynchronously), failing t after timeout.
func (j *Jaeger) WaitTrace(t testing.TB, traceID string, spans int, timeout time.Duration) Trace {
	t.Helper()
	var got Trace
	WaitFor(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tr, err := j.Trace(ctx, traceID)
		if err != nil {
			return err
		}
		if len(tr.Spans) < spans {
			return fmt.Errorf("trace %s has %d spans, want %d", traceID, len(tr.Spans), spans)
		}
		got = tr
		return nil
	})
	return got
}

// WaitTraces polls until service has at least n traces, failing t after timeout.
func (j *Jaeger) WaitTraces(t testing.TB, service string, n int, timeout time.Duration) []Trace {
	t.Helper()
	var got []Trace
	WaitFor(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		trs, err := j.Traces(ctx, service)
		if err != nil {
			return err
		}
		if len(trs) < n {
			return fmt.Errorf("service %s has %d traces, want %d", service, len(trs), n)
		}
		got = trs
		return nil
	})
	return got
}

// WaitFor polls cond every 50ms until it returns nil or timeout passes, then fails t with
// the last error.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
