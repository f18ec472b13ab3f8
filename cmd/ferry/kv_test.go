package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrymesh/ferry/discovery/consul"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// fakeWatcher passes on the values sent to vals, as a consul.KVWatcher passes on changes.
type fakeWatcher struct {
	vals chan consul.KVValue
}

func (f *fakeWatcher) Watch(ctx context.Context, update func(consul.KVValue)) error {
	for {
		select {
		case v := <-f.vals:
			update(v)
		case <-ctx.Done():
			return nil
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for a logger's writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const meshFile = `service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
discovery:
  consul: {address: 127.0.0.1:1, config_key: ferry/web}
drain_timeout: %s
`

// meshTest is a meshConfig over a config file in a temporary directory and a fake watch.
type meshTest struct {
	*meshConfig
	path    string
	w       *fakeWatcher
	logs    *lockedBuffer
	started int // watches built
	stopped int // watches released
}

func newMeshTest(t *testing.T, drain string) *meshTest {
	t.Helper()
	mt := &meshTest{path: filepath.Join(t.TempDir(), "ferry.yaml"), w: &fakeWatcher{vals: make(chan consul.KVValue)}, logs: &lockedBuffer{}}
	mt.writeFile(t, drain)
	log := slog.New(slog.NewTextHandler(mt.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mt.meshConfig = newMeshConfig(mt.path, log, telemetry.NewMetrics())
	mt.startWait = 100 * time.Millisecond
	mt.watcher = func(d *config.ConsulDiscovery, _ *slog.Logger) (kvWatcher, func(), error) {
		if d.ConfigKey != "ferry/web" {
			t.Errorf("watch of key %q, want ferry/web", d.ConfigKey)
		}
		mt.started++
		return mt.w, func() { mt.stopped++ }, nil
	}
	t.Cleanup(func() {
		mt.close()
		if t.Failed() {
			t.Logf("log:\n%s", mt.logs)
		}
	})
	return mt
}

func (mt *meshTest) writeFile(t *testing.T, drain string) {
	t.Helper()
	if err := os.WriteFile(mt.path, []byte(strings.Replace(meshFile, "%s", drain, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// send hands v to the watch and returns what the run loop receives.
func (mt *meshTest) send(t *testing.T, v consul.KVValue) kvValue {
	t.Helper()
	go func() { mt.w.vals <- v }()
	select {
	case kv := <-mt.values:
		return kv
	case <-time.After(5 * time.Second):
		t.Fatal("no value from the watch within 5s")
		return kvValue{}
	}
}

func (mt *meshTest) reloadErrors() float64 {
	return testutil.ToFloat64(mt.metrics.ConfigReloads.WithLabelValues("error"))
}

func doc(endpoint string) []byte {
	return []byte("upstreams: [{name: api, endpoints: [" + endpoint + "]}]\n")
}

// endpoint is the first endpoint of upstream api in cfg.
func endpoint(cfg *config.Config) string { return cfg.Upstream("api").Endpoints[0].Address }

func TestMeshConfigStart(t *testing.T) {
	tests := []struct {
		name       string
		first      *consul.KVValue // nil: the watch says nothing
		wantEP     string
		wantKV     bool
		wantErrors float64
		wantLog    string
	}{
		{"document", &consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9001"), ModifyIndex: 7},
			"127.0.0.1:9001", true, 0, "consul kv: config merged"},
		{"key absent", &consul.KVValue{Key: "ferry/web"}, "127.0.0.1:8081", false, 0, "config key absent; running the file alone"},
		{"invalid document", &consul.KVValue{Key: "ferry/web", Exists: true, Value: []byte("upstreams:\n  - name: api\n    lb: bogus\n    endpoints: [127.0.0.1:9]\n"), ModifyIndex: 8},
			"127.0.0.1:8081", false, 1, "consul kv ferry/web:3: upstreams[0].lb"},
		{"Consul silent", nil, "127.0.0.1:8081", false, 0, "no answer from Consul; starting with the file alone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mt := newMeshTest(t, "1s")
			if tt.first != nil {
				go func() { mt.w.vals <- *tt.first }()
			}
			cfg, err := mt.start()
			if err != nil {
				t.Fatalf("start() error = %v", err)
			}
			if got := endpoint(cfg); got != tt.wantEP {
				t.Errorf("start() endpoint = %s, want %s", got, tt.wantEP)
			}
			if got := cfg.Overlay != nil; got != tt.wantKV {
				t.Errorf("start() Overlay = %+v, want set %v", cfg.Overlay, tt.wantKV)
			}
			if tt.wantKV && cfg.Overlay.ModifyIndex != tt.first.ModifyIndex {
				t.Errorf("start() Overlay.ModifyIndex = %d, want %d", cfg.Overlay.ModifyIndex, tt.first.ModifyIndex)
			}
			if got := mt.reloadErrors(); got != tt.wantErrors {
				t.Errorf("reload errors = %v, want %v", got, tt.wantErrors)
			}
			if !strings.Contains(mt.logs.String(), tt.wantLog) {
				t.Errorf("log does not contain %q", tt.wantLog)
			}
			if tt.first == nil {
				// The document read once Consul answers is merged by the run loop.
				next := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9002"), ModifyIndex: 9}))
				if next == nil || endpoint(next) != "127.0.0.1:9002" {
					t.Errorf("kvChanged() after a silent start = %+v, want the document merged", next)
				}
			}
		})
	}
}

func TestMeshConfigChangesAndReloads(t *testing.T) {
	mt := newMeshTest(t, "1s")
	go func() {
		mt.w.vals <- consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9001"), ModifyIndex: 7}
	}()
	if _, err := mt.start(); err != nil {
		t.Fatal(err)
	}

	// An edited file is not picked up by a KV change until SIGHUP.
	mt.writeFile(t, "5s")
	next := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9002"), ModifyIndex: 8}))
	if next == nil || endpoint(next) != "127.0.0.1:9002" || next.DrainTimeout.D() != time.Second {
		t.Fatalf("kvChanged() = %+v, want the new document merged with the file as applied (drain 1s)", next)
	}

	// An invalid document: nil, counted.
	if next := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web", Exists: true, Value: []byte("service: other\n"), ModifyIndex: 9})); next != nil {
		t.Errorf("kvChanged(invalid) = %+v, want nil", next)
	}
	if got := mt.reloadErrors(); got != 1 {
		t.Errorf("reload errors = %v, want 1", got)
	}

	// SIGHUP merges the edited file with the latest document, which is invalid: refused.
	if next := mt.reloadFile(); next != nil {
		t.Errorf("reloadFile() with an invalid latest document = %+v, want nil", next)
	}
	if got := mt.reloadErrors(); got != 2 {
		t.Errorf("reload errors = %v, want 2", got)
	}

	// Fixed document; then SIGHUP: the edited file with it.
	if next := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9003"), ModifyIndex: 10})); next == nil || next.DrainTimeout.D() != time.Second {
		t.Fatalf("kvChanged(fixed) = %+v, want merged with the applied file (drain 1s)", next)
	}
	next = mt.reloadFile()
	if next == nil || endpoint(next) != "127.0.0.1:9003" || next.DrainTimeout.D() != 5*time.Second || next.Overlay.ModifyIndex != 10 {
		t.Fatalf("reloadFile() = %+v, want the edited file (drain 5s) merged with document 10", next)
	}
	// Until it is committed (applied), KV changes still merge with the old file.
	if n := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9004"), ModifyIndex: 11})); n == nil || n.DrainTimeout.D() != time.Second {
		t.Errorf("kvChanged() before commit = %+v, want the applied file (drain 1s)", n)
	}
	mt.commit(next)
	if n := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9005"), ModifyIndex: 12})); n == nil || n.DrainTimeout.D() != 5*time.Second {
		t.Errorf("kvChanged() after commit = %+v, want the reloaded file (drain 5s)", n)
	}

	// The key deleted: the file alone.
	if n := mt.kvChanged(mt.send(t, consul.KVValue{Key: "ferry/web"})); n == nil || n.Overlay != nil || endpoint(n) != "127.0.0.1:8081" {
		t.Errorf("kvChanged(deleted) = %+v, want the file alone", n)
	}
	// A broken file on SIGHUP: refused, counted.
	if err := os.WriteFile(mt.path, []byte("service: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := mt.reloadFile(); n != nil {
		t.Errorf("reloadFile(broken file) = %+v, want nil", n)
	}
	if got := mt.reloadErrors(); got != 3 {
		t.Errorf("reload errors = %v, want 3", got)
	}
	if mt.started != 1 || mt.stopped != 0 {
		t.Errorf("watches started %d, stopped %d; want 1 and 0 (the key never changed)", mt.started, mt.stopped)
	}
}

func TestMeshConfigKeyRemoved(t *testing.T) {
	mt := newMeshTest(t, "1s")
	go func() {
		mt.w.vals <- consul.KVValue{Key: "ferry/web", Exists: true, Value: doc("127.0.0.1:9001"), ModifyIndex: 7}
	}()
	if _, err := mt.start(); err != nil {
		t.Fatal(err)
	}
	// The file drops config_key: SIGHUP gives the file alone and, once applied, the
	// watch stops.
	if err := os.WriteFile(mt.path, []byte(strings.Replace(strings.Replace(meshFile, ", config_key: ferry/web", "", 1), "%s", "1s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	next := mt.reloadFile()
	if next == nil || next.Overlay != nil || endpoint(next) != "127.0.0.1:8081" {
		t.Fatalf("reloadFile() without config_key = %+v, want the file alone", next)
	}
	mt.commit(next)
	if mt.values != nil || mt.stopped != 1 {
		t.Errorf("after commit: values %v, watches stopped %d; want no watch", mt.values, mt.stopped)
	}
}
