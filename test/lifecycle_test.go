package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestReloadUnderLoad reloads the config ten times, alternating valid and invalid files,
// while clients send requests without pause; no request may fail.
func TestReloadUnderLoad(t *testing.T) {
	ferrytest.CheckLeaks(t)
	b1, b2 := startHTTPBackend(t, "b1", nil), startHTTPBackend(t, "b2", nil)
	occupied, err := net.Listen("tcp", "127.0.0.1:0") // a port a reload cannot bind
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = occupied.Close() })
	admin, mainAddr, extraAddr := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)

	// render returns a config: upstream api over b1 and b2 behind mainAddr, and with extra
	// set, a second listener at extra for upstream extra (b2 only); tail is appended as is.
	render := func(lb string, w1, w2 int, extra, tail string) string {
		var s strings.Builder
		fmt.Fprintf(&s, "service: e2e\nadmin: {address: %s}\ndrain_timeout: 5s\noutbound:\n  - {upstream: api, address: %s}\n", admin, mainAddr)
		if extra != "" {
			fmt.Fprintf(&s, "  - {upstream: extra, address: %s}\n", extra)
		}
		fmt.Fprintf(&s, "upstreams:\n")
		if extra != "" {
			fmt.Fprintf(&s, "  - name: extra\n    endpoints: [%s]\n", b2.addr)
		}
		fmt.Fprintf(&s, "  - name: api\n    lb: %s\n    endpoints:\n      - {address: %s, weight: %d}\n      - {address: %s, weight: %d}\n",
			lb, b1.addr, w1, b2.addr, w2)
		s.WriteString(tail)
		return s.String()
	}
	type step struct {
		what    string
		content string
		valid   bool
		extraUp bool // whether extraAddr serves after this step
	}
	steps := []step{
		{"lb least_request", render("least_request", 1, 1, "", ""), true, false},
		{"unknown key", render("least_request", 1, 1, "", "bogus_key: true\n"), false, false},
		{"weights 1:3", render("round_robin", 1, 3, "", ""), true, false},
		{"bad duration", render("round_robin", 1, 3, "", "    request_timeout: 2 fortnights\n"), false, false},
		{"add a listener", render("random", 1, 1, extraAddr, ""), true, true},
		{"listener address in use", render("random", 1, 1, occupied.Addr().String(), ""), false, true},
		{"remove the listener", render("maglev", 2, 1, "", "    hash_on: header:x-user\n"), true, false},
		{"unknown lb policy", render("fastest", 2, 1, "", ""), false, false},
		{"add the listener again", render("round_robin", 1, 1, extraAddr, ""), true, true},
		{"YAML syntax error", render("round_robin", 1, 1, extraAddr, "  - {name: broken\n"), false, true},
	}

	initial := render("round_robin", 1, 1, "", "")
	dir := t.TempDir()
	cfgPath := ferrytest.WriteFile(t, dir, "ferry.yaml", initial)
	f := startFerry(t, cfgPath, admin)
	f.WaitReady()
	if v := f.configVersion(); v != configVersion(initial) {
		t.Fatalf("/config_dump version = %s, want %s", v, configVersion(initial))
	}

	// A keep-alive connection opened before the reloads, to use again after them.
	kept, err := net.DialTimeout("tcp", mainAddr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	_ = kept.SetDeadline(time.Now().Add(time.Minute))
	keptReader := bufio.NewReader(kept)
	keptGet := func(when string) {
		t.Helper()
		if _, err := io.WriteString(kept, "GET /kept HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
			t.Fatalf("%s: write on the kept connection: %v", when, err)
		}
		resp, err := http.ReadResponse(keptReader, nil)
		if err != nil {
			t.Fatalf("%s: read on the kept connection: %v", when, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || (string(body) != "b1" && string(body) != "b2") {
			t.Fatalf("%s: kept connection: %d %q %v, want 200 from b1 or b2", when, resp.StatusCode, body, err)
		}
	}
	keptGet("before the reloads")

	// The load: keep-alive clients, and one client opening a new connection per request.
	var (
		ok, failed atomic.Int64
		failMu     sync.Mutex
		failures   []string
		stop       = make(chan struct{})
		wg         sync.WaitGroup
	)
	worker := func(c *http.Client) {
		deadline := time.Now().Add(30 * time.Second) // bound even if the test stalls
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				return
			default:
			}
			r, err := tryDo(c, http.MethodGet, "http://"+mainAddr+"/", nil, "")
			if err == nil && r.status == http.StatusOK && (r.body == "b1" || r.body == "b2") {
				ok.Add(1)
				continue
			}
			failed.Add(1)
			failMu.Lock()
			if len(failures) < 10 {
				failures = append(failures, fmt.Sprintf("%s: status %d body %q err %v", time.Now().Format("15:04:05.000"), r.status, r.body, err))
			}
			failMu.Unlock()
		}
	}
	for range 4 {
		c := newClient(t, nil)
		wg.Go(func() { worker(c) })
	}
	fresh := newClient(t, nil)
	fresh.Transport.(*http.Transport).DisableKeepAlives = true
	wg.Go(func() { worker(fresh) })
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad)

	time.Sleep(300 * time.Millisecond)
	probe := newClient(t, nil)
	current := configVersion(initial)
	errorsSoFar := 0
	reloadErrors := func() float64 {
		v, _ := f.Metric("ferry_config_reloads_total", map[string]string{"result": "error"})
		return v
	}
	for i, s := range steps {
		if err := os.WriteFile(cfgPath, []byte(s.content), 0o644); err != nil {
			t.Fatal(err)
		}
		f.Signal(syscall.SIGHUP)
		if s.valid {
			want := configVersion(s.content)
			var got string
			ferrytest.Eventually(t, 10*time.Second, func() bool { got = f.configVersion(); return got == want },
				func() string {
					return fmt.Sprintf("step %d (%s, valid): /config_dump version %s, want the new %s", i+1, s.what, got, want)
				})
			current = want
		} else {
			errorsSoFar++
			var n float64
			ferrytest.Eventually(t, 10*time.Second, func() bool { n = reloadErrors(); return n >= float64(errorsSoFar) },
				func() string {
					return fmt.Sprintf("step %d (%s, invalid): ferry_config_reloads_total{result=\"error\"} = %v, want %d", i+1, s.what, n, errorsSoFar)
				})
			if got := f.configVersion(); got != current {
				t.Fatalf("step %d (%s, invalid): /config_dump version %s, want the previous %s", i+1, s.what, got, current)
			}
		}
		if s.extraUp {
			r, err := tryDo(probe, http.MethodGet, "http://"+extraAddr+"/", nil, "")
			if err != nil || r.status != http.StatusOK || r.body != "b2" {
				t.Errorf("step %d (%s): GET on the second listener = %d %q %v, want 200 \"b2\"", i+1, s.what, r.status, r.body, err)
			}
		} else if !dialRefused(extraAddr) {
			t.Errorf("step %d (%s): the second listener %s accepts connections, want refused", i+1, s.what, extraAddr)
		}
		time.Sleep(350 * time.Millisecond)
	}
	stopLoad()
	t.Logf("%d requests succeeded and %d failed during %d reloads (b1 %d, b2 %d)",
		ok.Load(), failed.Load(), len(steps), b1.requests.Load(), b2.requests.Load())

	if n := reloadErrors(); n != float64(errorsSoFar) {
		t.Errorf("ferry_config_reloads_total{result=\"error\"} = %v, want %d", n, errorsSoFar)
	}
	if got := countLines(f.Output(), "reload refused"); got != errorsSoFar {
		t.Errorf("ferry logged %d \"reload refused\" errors, want %d", got, errorsSoFar)
	}
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during the reloads; first ones:\n%s", n, n+ok.Load(), strings.Join(failures, "\n"))
	}
	if n := ok.Load(); n < 100 {
		t.Errorf("only %d requests succeeded during the reloads: the load did not run", n)
	}
	if b1.requests.Load() == 0 || b2.requests.Load() == 0 {
		t.Errorf("backend requests b1=%d b2=%d, want both > 0", b1.requests.Load(), b2.requests.Load())
	}
	keptGet("after the reloads")
}

// TestDrain sends SIGTERM while a slow request is in flight.
func TestDrain(t *testing.T) {
	ferrytest.CheckLeaks(t)
	backend := startHTTPBackend(t, "api", nil)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	const drainTimeout = 10 * time.Second
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
drain_timeout: %v
outbound:
  - {upstream: api, address: %s}
upstreams:
  - name: api
    endpoints: [%s]
`, admin, drainTimeout, out, backend.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()

	type result struct {
		r   response
		err error
		at  time.Time
	}
	slow := make(chan result, 1)
	client := newClient(t, nil)
	go func() {
		r, err := tryDo(client, http.MethodGet, "http://"+out+"/slow?d=1500ms", nil, "")
		slow <- result{r, err, time.Now()}
	}()
	select {
	case s := <-backend.seen:
		if s.path != "/slow" {
			t.Fatalf("backend saw %s, want /slow", s.path)
		}
	case <-time.After(ioTimeout):
		t.Fatal("the slow request never reached the backend")
	}

	sigAt := time.Now()
	f.Signal(syscall.SIGTERM)

	// /ready turns 503 while the request is in flight.
	probe := newClient(t, nil)
	var last string
	ferrytest.Eventually(t, 5*time.Second, func() bool {
		r, err := tryDo(probe, http.MethodGet, f.AdminURL("/ready"), nil, "")
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%d %s", r.status, strings.TrimSpace(r.body))
		return r.status == http.StatusServiceUnavailable
	}, func() string { return "/ready during drain = " + last + ", want 503" })

	// New connections are refused while the request is still in flight.
	ferrytest.Eventually(t, 5*time.Second, func() bool { return dialRefused(out) },
		func() string { return "the listener still accepts new connections during drain" })
	select {
	case res := <-slow:
		t.Fatalf("the slow request ended (%d, %v) before the listener was seen closed; cannot check draining", res.r.status, res.err)
	default:
	}
	if f.Exited() {
		t.Fatal("ferry exited while a request was in flight")
	}

	var res result
	select {
	case res = <-slow:
	case <-time.After(ioTimeout):
		t.Fatal("the in-flight request did not complete")
	}
	if res.err != nil || res.r.status != http.StatusOK || res.r.body != "slow done" {
		t.Errorf("in-flight request during drain = %d %q %v, want 200 \"slow done\"", res.r.status, res.r.body, res.err)
	}
	code := f.Wait(exitTimeout)
	took := time.Since(sigAt)
	if code != 0 {
		t.Errorf("ferry exited with %d after SIGTERM, want 0", code)
	}
	if took >= drainTimeout {
		t.Errorf("ferry took %v to exit, want less than drain_timeout %v", took, drainTimeout)
	}
}

// TestValidate checks `ferry validate` and `ferry run` on an invalid and a valid file.
func TestValidate(t *testing.T) {
	ferrytest.CheckLeaks(t)
	dir := t.TempDir()
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	bad := ferrytest.WriteFile(t, dir, "bad.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: api, address: %s}
upstreams:
  - name: api
    endpoints: [127.0.0.1:9]
    lb: fastest
    connect_timeout: 2 fortnights
drain_timeout: 5s
bogus_key: true
`, admin, out))
	// Each problem: its line, and a word its message must mention.
	problems := []struct {
		line int
		word string
	}{{8, "fastest"}, {9, "fortnights"}, {11, "bogus_key"}}

	runFerry := func(args ...string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, ferryBin, args...).CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("ferry %v did not exit within %v:\n%s", args, exitTimeout, out)
		}
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("ferry %v: %v", args, err)
		}
		return code, string(out)
	}
	checkProblems := func(t *testing.T, output string) {
		t.Helper()
		for _, p := range problems {
			prefix := fmt.Sprintf("%s:%d: ", bad, p.line)
			found := false
			for _, l := range lines(output) {
				found = found || strings.HasPrefix(l, prefix) && strings.Contains(l, p.word)
			}
			if !found {
				t.Errorf("no line %q...%s... in the output:\n%s", prefix, p.word, output)
			}
		}
	}

	t.Run("validate_invalid", func(t *testing.T) {
		code, output := runFerry("validate", "--config", bad)
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		checkProblems(t, output)
		if n := countLines(output, bad+":"); n != len(problems) {
			t.Errorf("%d problem lines, want %d:\n%s", n, len(problems), output)
		}
	})
	t.Run("run_invalid", func(t *testing.T) {
		code, output := runFerry("run", "--config", bad)
		if code == 0 {
			t.Errorf("ferry run with an invalid file exited 0")
		}
		checkProblems(t, output)
	})
	t.Run("validate_valid", func(t *testing.T) {
		good := ferrytest.WriteFile(t, dir, "good.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: api, address: %s}
upstreams:
  - name: api
    endpoints: [127.0.0.1:9]
`, admin, out))
		code, output := runFerry("validate", "--config", good)
		if code != 0 || !strings.Contains(output, "ok") {
			t.Errorf("validate of a valid file: exit %d, output %q; want 0 and ok", code, output)
		}
	})
}

// TestApp checks `ferry run -- APP`: the app starts once Ferry is ready, Ferry exits with
// its code, and SIGTERM reaches the app while Ferry keeps serving it.
func TestApp(t *testing.T) {
	ferrytest.CheckLeaks(t)
	backend := startHTTPBackend(t, "api", nil)
	// start runs ferry with an app, after replacing {ADMIN} and {OUT} in its arguments with
	// the admin address and the address of the outbound listener for the backend.
	start := func(t *testing.T, app ...string) *ferry {
		admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
		cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
drain_timeout: 5s
outbound:
  - {upstream: api, address: %s}
upstreams:
  - name: api
    endpoints: [%s]
`, admin, out, backend.addr))
		for i, a := range app {
			app[i] = strings.NewReplacer("{ADMIN}", admin, "{OUT}", out).Replace(a)
		}
		return startFerry(t, cfg, admin, app...)
	}
	waitOutput := func(t *testing.T, f *ferry, marker string) {
		t.Helper()
		ferrytest.Eventually(t, readyTimeout, func() bool {
			if f.Exited() {
				t.Fatalf("ferry exited (%d) before the app printed %q", f.ExitCode(), marker)
			}
			return strings.Contains(f.Output(), marker)
		}, func() string { return "the app never printed " + marker })
	}

	t.Run("exit_code", func(t *testing.T) {
		f := start(t, appBin, "ready", "{ADMIN}", "7")
		if code := f.Wait(readyTimeout); code != 7 {
			t.Errorf("ferry exited with %d, want the app's 7", code)
		}
		if !strings.Contains(f.Output(), "app: ferry was ready when the app started") {
			t.Errorf("the app did not find ferry ready when it started")
		}
	})

	t.Run("sigterm_to_shell_app", func(t *testing.T) {
		script := `"$0" ready {ADMIN} 0 || exit 99
trap 'echo "app: got TERM"; exit 3' TERM
m=trap
echo "app: $m-installed"
i=0
while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
exit 42`
		f := start(t, "sh", "-c", script, appBin)
		waitOutput(t, f, "app: trap-installed")
		f.Signal(syscall.SIGTERM)
		if code := f.Wait(exitTimeout); code != 3 {
			t.Errorf("ferry exited with %d, want the app's 3 (the app traps TERM)", code)
		}
		if !strings.Contains(f.Output(), "app: got TERM") {
			t.Errorf("the app never got SIGTERM")
		}
	})

	t.Run("serves_while_app_stops", func(t *testing.T) {
		f := start(t, appBin, "serve-until-term", "{ADMIN}", "http://{OUT}/", "3")
		waitOutput(t, f, "app: waiting for SIGTERM")
		f.Signal(syscall.SIGTERM)
		if code := f.Wait(exitTimeout); code != 3 {
			t.Errorf("ferry exited with %d, want 3 (97: /ready was not 503 during the app's shutdown; 98: ferry stopped serving the app)", code)
		}
	})
}
