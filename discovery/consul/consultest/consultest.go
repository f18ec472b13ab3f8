// Package consultest runs a real Consul agent in -dev mode for tests: every listener on
// 127.0.0.1 and free ports, a leader before Start returns, stopped at the end of the test.
//
// The agent binary is $FERRY_CONSUL_BIN, else <repo>/.deps/bin/consul (built by
// `make deps-consul`), else consul on PATH. A missing binary fails the test.
package consultest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// Ports are the agent's listening ports, all on 127.0.0.1.
type Ports struct {
	HTTP, GRPC, GRPCTLS, DNS, Server, SerfLAN, SerfWAN int
	// HTTPS is used only with Options.TLS.
	HTTPS int
}

// Options configure an agent. The zero value is a plain dev agent on fresh ports.
type Options struct {
	// Ports reuses the given ports (to restart an agent where the previous one was); nil
	// picks free ones.
	Ports *Ports
	// ACLManagementToken, if set, enables ACLs with default policy deny and makes this
	// the initial management token (also used as the agent's own token). It must be a
	// UUID.
	ACLManagementToken string
	// TLS also serves the HTTP API over HTTPS on Ports.HTTPS, with certificates made by
	// `consul tls`, and requires clients to present a certificate there.
	TLS bool
	// HCL is extra agent configuration, passed with -hcl.
	HCL []string
}

// Agent is a running `consul agent -dev`. Its methods are safe for concurrent use.
type Agent struct {
	// Addr is the HTTP API address, 127.0.0.1:port.
	Addr string
	// Ports are the agent's ports.
	Ports Ports
	// Token is the management token when ACLs are enabled, else empty.
	Token string
	// With Options.TLS: HTTPSAddr is the HTTPS API address, CAFile the CA that signs the
	// agent's certificate, ClientCertFile and ClientKeyFile a client certificate it
	// accepts.
	HTTPSAddr                             string
	CAFile, ClientCertFile, ClientKeyFile string

	t    testing.TB
	proc *ferrytest.Child
}

// Binary returns the path of the consul binary, failing t if there is none.
func Binary(t testing.TB) string {
	t.Helper()
	return ferrytest.Tool(t, "FERRY_CONSUL_BIN", "consul", "deps-consul")
}

// Start runs a dev agent, waits until it has a leader and has registered its own node,
// and stops it when the test ends. It fails t if the agent does not come up within 30s.
func Start(t testing.TB, opts Options) *Agent {
	t.Helper()
	bin := Binary(t)
	var lastErr error
	attempts := 3
	if opts.Ports != nil {
		// Fixed ports (an agent restarted where the last one ran): a port can be held for a
		// moment by another test's FreePorts probe, so wait and try again rather than fail.
		attempts = 10
	}
	for attempt := 0; attempt < attempts; attempt++ {
		ports := opts.Ports
		if ports == nil {
			p, err := FreePorts()
			if err != nil {
				t.Fatalf("consultest: free ports: %v", err)
			}
			ports = &p
		}
		a, err := start(t, bin, *ports, opts)
		if err == nil {
			return a
		}
		lastErr = err
		if opts.Ports != nil {
			time.Sleep(300 * time.Millisecond)
		}
	}
	t.Fatalf("consultest: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string, ports Ports, opts Options) (*Agent, error) {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "consul-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", "ferry-test",
		"-http-port", strconv.Itoa(ports.HTTP), "-grpc-port", strconv.Itoa(ports.GRPC),
		"-grpc-tls-port", strconv.Itoa(ports.GRPCTLS),
		"-dns-port", strconv.Itoa(ports.DNS), "-server-port", strconv.Itoa(ports.Server),
		"-serf-lan-port", strconv.Itoa(ports.SerfLAN), "-serf-wan-port", strconv.Itoa(ports.SerfWAN),
		"-log-level", "debug",
	}
	if opts.ACLManagementToken != "" {
		args = append(args, "-hcl", fmt.Sprintf(
			`acl { enabled = true default_policy = "deny" enable_token_persistence = false tokens { initial_management = %q agent = %q } }`,
			opts.ACLManagementToken, opts.ACLManagementToken))
	}
	var tlsFiles [3]string
	if opts.TLS {
		if ports.HTTPS == 0 {
			return nil, errors.New("TLS needs Ports.HTTPS")
		}
		if tlsFiles, err = makeCerts(bin, filepath.Dir(logf.Name())); err != nil {
			return nil, err
		}
		dir := filepath.Dir(logf.Name())
		args = append(args, "-https-port", strconv.Itoa(ports.HTTPS), "-hcl", fmt.Sprintf(
			`tls { defaults { ca_file = %q cert_file = %q key_file = %q } https { verify_incoming = true } }`,
			tlsFiles[0], filepath.Join(dir, "dc1-server-consul-0.pem"), filepath.Join(dir, "dc1-server-consul-0-key.pem")))
	}
	for _, h := range opts.HCL {
		args = append(args, "-hcl", h)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	proc, err := ferrytest.StartChild(cmd, logf.Name())
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	a := &Agent{
		Addr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.HTTP)),
		Ports: ports,
		Token: opts.ACLManagementToken,
		t:     t,
		proc:  proc,
	}
	if opts.TLS {
		a.HTTPSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.HTTPS))
		a.CAFile, a.ClientCertFile, a.ClientKeyFile = tlsFiles[0], tlsFiles[1], tlsFiles[2]
	}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("consul agent log (%s), last lines:\n%s", a.proc.LogPath(), a.logTail(40))
		}
	})
	if err := a.waitReady(30 * time.Second); err != nil {
		a.Stop()
		return nil, fmt.Errorf("agent on %s: %w\n%s", a.Addr, err, a.logTail(30))
	}
	return a, nil
}

// makeCerts creates a CA, a server certificate (for 127.0.0.1 and localhost) and a
// client certificate in dir with `consul tls`, returning the CA, client cert and client
// key files.
func makeCerts(bin, dir string) ([3]string, error) {
	for _, args := range [][]string{
		{"tls", "ca", "create"},
		{"tls", "cert", "create", "-server", "-dc", "dc1"},
		{"tls", "cert", "create", "-client", "-dc", "dc1"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		cmd.Env = cleanEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			return [3]string{}, fmt.Errorf("consul %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return [3]string{
		filepath.Join(dir, "consul-agent-ca.pem"),
		filepath.Join(dir, "dc1-client-consul-0.pem"),
		filepath.Join(dir, "dc1-client-consul-0-key.pem"),
	}, nil
}

// cleanEnv is the test's environment without CONSUL_* variables, which would change how
// the agent's own CLI behaves.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitReady polls until the agent has a leader and its node is in the catalog.
func (a *Agent) waitReady(timeout time.Duration) error {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-a.proc.Exited():
			return fmt.Errorf("agent exited: %v", a.proc.Err())
		default:
		}
		var leader string
		if err := a.getJSON(hc, "/v1/status/leader", &leader); err != nil {
			last = err
		} else if leader == "" {
			last = errors.New("no leader yet")
		} else {
			var nodes []struct{ Node string }
			if err := a.getJSON(hc, "/v1/catalog/nodes", &nodes); err != nil {
				last = err
			} else if len(nodes) == 0 {
				last = errors.New("node not registered yet")
			} else {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %v", timeout, last)
}

func (a *Agent) getJSON(hc *http.Client, path string, out any) error {
	req, err := http.NewRequest(http.MethodGet, "http://"+a.Addr+path, nil)
	if err != nil {
		return err
	}
	if a.Token != "" {
		req.Header.Set("X-Consul-Token", a.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Stop stops the agent (SIGINT, then SIGKILL after 10s) and waits for it to exit. It is
// idempotent; the test's cleanup calls it too.
func (a *Agent) Stop() { a.proc.Stop(os.Interrupt, 10*time.Second) }

// Kill stops the agent at once with SIGKILL, as a crash would, and waits for it to exit.
func (a *Agent) Kill() { a.proc.Kill() }

// logTail returns the last n lines of the agent's log.
func (a *Agent) logTail(n int) string { return a.proc.LogTail(n) }

// FreePorts picks distinct ports that are free for both TCP and UDP on 127.0.0.1 (serf
// and DNS use both). Another process may still take one before an agent binds it; Start
// then retries with new ports (unless they were given in Options.Ports).
func FreePorts() (Ports, error) {
	var got []int
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for len(got) < 8 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Ports{}, err
		}
		closers = append(closers, func() { l.Close() })
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // UDP side taken: try another
		}
		closers = append(closers, func() { pc.Close() })
		got = append(got, port)
	}
	return Ports{HTTP: got[0], GRPC: got[1], GRPCTLS: got[2], DNS: got[3], Server: got[4], SerfLAN: got[5], SerfWAN: got[6], HTTPS: got[7]}, nil
}

// WaitFor polls cond every 20ms until it returns nil or timeout passes, then fails t with
// the last error. It is a helper for tests that wait on the agent's state.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after %v: %v", timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
