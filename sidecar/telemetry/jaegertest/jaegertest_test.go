package jaegertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestJaeger starts a real all-in-one, checks that it listens only on loopback, sends it
// a two-span trace over OTLP/HTTP (JSON encoding, so no exporter is involved), reads the
// trace back in both query forms, and restarts it on the same ports.
func TestJaeger(t *testing.T) {
	j := Start(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	checkLoopbackOnly(t, j.proc.Pid())

	const (
		traceID = "5b8efff798038103d269b633813fc60c"
		rootID  = "eee19b7ec3c1b174"
		childID = "eee19b7ec3c1b175"
	)
	now := time.Now()
	body := fmt.Sprintf(`{"resourceSpans":[{"resource":{"attributes":[
		{"key":"service.name","value":{"stringValue":"jaegertest-svc"}},
		{"key":"ferry.sidecar.id","value":{"stringValue":"i-1"}}]},
	"scopeSpans":[{"scope":{"name":"test"},"spans":[
		{"traceId":%q,"spanId":%q,"name":"root","kind":2,"startTimeUnixNano":"%d","endTimeUnixNano":"%d",
		 "attributes":[{"key":"http.response.status_code","value":{"intValue":"200"}}]},
		{"traceId":%q,"spanId":%q,"parentSpanId":%q,"name":"child","kind":3,"startTimeUnixNano":"%d","endTimeUnixNano":"%d",
		 "attributes":[{"key":"ferry.upstream","value":{"stringValue":"api"}}]}]}]}]}`,
		traceID, rootID, now.UnixNano(), now.Add(time.Millisecond).UnixNano(),
		traceID, childID, rootID, now.UnixNano(), now.Add(time.Millisecond).UnixNano())
	resp, err := j.hc.Post("http://"+j.OTLPHTTPAddr+"/v1/traces", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST /v1/traces: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/traces = %s, want 200", resp.Status)
	}

	tr := j.WaitTrace(t, traceID, 2, 10*time.Second)
	root, ok := tr.Span(rootID)
	if !ok {
		t.Fatalf("trace %s has no span %s: %+v", traceID, rootID, tr)
	}
	child, _ := tr.Span(childID)
	if got := child.ParentSpanID(); got != rootID {
		t.Errorf("child.ParentSpanID() = %q, want %q", got, rootID)
	}
	if got := root.ParentSpanID(); got != "" {
		t.Errorf("root.ParentSpanID() = %q, want none", got)
	}
	if got := root.TagString("http.response.status_code"); got != "200" {
		t.Errorf("root http.response.status_code = %q, want 200", got)
	}
	if got := root.TagString("span.kind"); got != "server" {
		t.Errorf("root span.kind = %q, want server", got)
	}
	if got := child.TagString("ferry.upstream"); got != "api" {
		t.Errorf("child ferry.upstream = %q, want api", got)
	}
	if got := child.Process.ServiceName; got != "jaegertest-svc" {
		t.Errorf("child service = %q, want jaegertest-svc", got)
	}
	if got := child.Process.TagString("ferry.sidecar.id"); got != "i-1" {
		t.Errorf("process ferry.sidecar.id = %q, want i-1", got)
	}

	trs := j.WaitTraces(t, "jaegertest-svc", 1, 10*time.Second)
	if len(trs) != 1 || trs[0].TraceID != traceID {
		t.Errorf("Traces(jaegertest-svc) = %d traces, want just %s", len(trs), traceID)
	}
	ctx := context.Background()
	if _, err := j.Trace(ctx, "00000000000000000000000000000001"); !errors.Is(err, ErrTraceNotFound) {
		t.Errorf("Trace(unknown) error = %v, want ErrTraceNotFound", err)
	}
	if trs, err := j.Traces(ctx, "no-such-service"); err != nil || len(trs) != 0 {
		t.Errorf("Traces(no-such-service) = %d traces, %v; want none", len(trs), err)
	}

	ports := j.Ports
	j.Stop()
	if _, err := j.Traces(ctx, "jaegertest-svc"); err == nil {
		t.Errorf("Traces after Stop succeeded, want an error")
	}
	j2 := StartOn(t, ports)
	if j2.OTLPGRPCAddr != j.OTLPGRPCAddr || j2.QueryURL != j.QueryURL {
		t.Errorf("StartOn: addresses %s %s, want %s %s", j2.OTLPGRPCAddr, j2.QueryURL, j.OTLPGRPCAddr, j.QueryURL)
	}
	if _, err := j2.Trace(ctx, traceID); !errors.Is(err, ErrTraceNotFound) {
		t.Errorf("Trace after restart error = %v, want ErrTraceNotFound (storage is in memory)", err)
	}
	j2.Kill()
}

// checkLoopbackOnly fails t if the process pid has a socket bound to anything but
// 127.0.0.1, reading /proc/net/{tcp,udp}{,6} for the inodes the process holds.
func checkLoopbackOnly(t *testing.T, pid int) {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("read fds: %v", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	listening := 0
	for _, file := range []string{"tcp", "udp", "tcp6", "udp6"} {
		f, err := os.Open("/proc/net/" + file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			local, remote, state := fields[1], fields[2], fields[3]
			isListen := (strings.HasPrefix(file, "tcp") && state == "0A") ||
				(strings.HasPrefix(file, "udp") && strings.HasSuffix(remote, ":0000"))
			if !isListen {
				continue
			}
			listening++
			host := local[:strings.IndexByte(local, ':')]
			port, _ := strconv.ParseUint(local[strings.IndexByte(local, ':')+1:], 16, 16)
			if host != "0100007F" { // 127.0.0.1, little-endian hex
				t.Errorf("jaeger listens on %s %s:%d, want only 127.0.0.1", file, host, port)
			}
		}
		f.Close()
	}
	if listening < 11 {
		t.Errorf("found %d listening sockets, want at least 11", listening)
	}
}
