package consul

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/consultest"
)

// kvAnswer is one scripted reply of fakeKV: the pair (nil: key absent), the index, or an
// error.
type kvAnswer struct {
	pair  *api.KVPair
	index uint64
	err   error
}

// fakeKV replays answers in order and records the WaitIndex of every query; once the
// script is used up, queries block until done is closed.
type fakeKV struct {
	mu      sync.Mutex
	script  []kvAnswer
	indexes []uint64
	done    chan struct{}
}

func (f *fakeKV) Get(_ string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	f.mu.Lock()
	f.indexes = append(f.indexes, q.WaitIndex)
	if len(f.script) == 0 {
		f.mu.Unlock()
		<-f.done
		return nil, nil, errors.New("fake closed")
	}
	a := f.script[0]
	f.script = f.script[1:]
	f.mu.Unlock()
	if a.err != nil {
		return nil, nil, a.err
	}
	return a.pair, &api.QueryMeta{LastIndex: a.index}, nil
}

func pair(value string, modify uint64) *api.KVPair {
	return &api.KVPair{Key: "ferry/web", Value: []byte(value), ModifyIndex: modify}
}

// kvRecorder collects what a KV Watch passes on.
type kvRecorder struct {
	mu      sync.Mutex
	vals    []KVValue
	changed chan struct{}
}

func newKVRecorder() *kvRecorder { return &kvRecorder{changed: make(chan struct{}, 1)} }

func (r *kvRecorder) update(v KVValue) {
	r.mu.Lock()
	r.vals = append(r.vals, v)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *kvRecorder) all() []KVValue {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.vals)
}

// render shows values as "absent" or "value@index".
func render(vs []KVValue) string {
	var out []string
	for _, v := range vs {
		if !v.Exists {
			out = append(out, "absent")
			continue
		}
		out = append(out, fmt.Sprintf("%s@%d", v.Value, v.ModifyIndex))
	}
	return strings.Join(out, " ")
}

// waitFor waits until the values passed on render as one of want.
func (r *kvRecorder) waitFor(t *testing.T, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if got := render(r.all()); slices.Contains(want, got) {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("after %v: values = %q, want %q", timeout, render(r.all()), want)
		}
	}
}

func TestKVWatchIndexRulesAndDedup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeKV{done: make(chan struct{}), script: []kvAnswer{
			{pair: nil, index: 4},           // absent: passed on
			{pair: nil, index: 6},           // another key written: still absent, dropped
			{pair: pair("a", 9), index: 9},  // created
			{pair: pair("a", 9), index: 9},  // timeout: dropped
			{pair: pair("a", 9), index: 15}, // another key written: dropped
			{pair: pair("a", 9), index: 2},  // index went backwards: reset, dropped
			{pair: pair("b", 0), index: 0},  // broken index 0 (and a new ModifyIndex)
			{err: errors.New("connection refused")},
			{pair: pair("b", 0), index: 3},   // fresh read after the outage: unchanged
			{pair: pair("c", 21), index: 21}, // changed
			{pair: nil, index: 22},           // deleted
		}}
		w, err := newKVWatcher(f, KVOptions{Key: "ferry/web", RetryBase: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rec := newKVRecorder()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- w.Watch(ctx, rec.update) }()
		time.Sleep(time.Hour)
		synctest.Wait()
		cancel()
		close(f.done)
		if err := <-done; err != nil {
			t.Fatalf("Watch() = %v, want nil after cancel", err)
		}
		// After 4: 4. After 6: 6. 9, 9, 15. After 2 (< 15): 0. After 0: 1. After an
		// error: 0. Then 3, 21, 22.
		want := []uint64{0, 4, 6, 9, 9, 15, 0, 1, 0, 3, 21, 22}
		if got := f.indexes; !slices.Equal(got, want) {
			t.Errorf("WaitIndex sequence = %v, want %v", got, want)
		}
		if got, want := render(rec.all()), "absent a@9 b@0 c@21 absent"; got != want {
			t.Errorf("values passed on = %q, want %q", got, want)
		}
	})
}

func TestNewKVWatcherNeedsKey(t *testing.T) {
	if _, err := newKVWatcher(&fakeKV{}, KVOptions{}); err == nil {
		t.Error("newKVWatcher() without a key = nil error, want one")
	}
	if _, err := NewKVWatcher(nil, KVOptions{Key: "k"}); err == nil {
		t.Error("NewKVWatcher(nil client) = nil error, want one")
	}
}

// startKVWatch runs a Watch of key until the test ends.
func startKVWatch(t *testing.T, c *Client, opts KVOptions) *kvRecorder {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger, _ = testLogger(t)
	}
	w, err := NewKVWatcher(c.API(), opts)
	if err != nil {
		t.Fatal(err)
	}
	rec := newKVRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Watch(ctx, rec.update) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch() = %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Watch() did not return within 5s of cancel")
		}
	})
	return rec
}

func kvPut(t *testing.T, c *Client, key, value string) uint64 {
	t.Helper()
	if _, err := c.API().KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("KV put %s: %v", key, err)
	}
	p, _, err := c.API().KV().Get(key, nil)
	if err != nil || p == nil {
		t.Fatalf("KV get %s = %v, %v", key, p, err)
	}
	return p.ModifyIndex
}

func TestAgentKVWatchFollowsKey(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.Options{})
	c := newClient(t, Config{Address: agent.Addr})
	rec := startKVWatch(t, c, KVOptions{Key: "ferry/web", WaitTime: 5 * time.Second, MinQueryInterval: 10 * time.Millisecond})
	rec.waitFor(t, 10*time.Second, "absent")

	i1 := kvPut(t, c, "ferry/web", "one")
	rec.waitFor(t, 10*time.Second, fmt.Sprintf("absent one@%d", i1))

	// A write of another key wakes the blocking query up but passes nothing on.
	kvPut(t, c, "ferry/other", "x")
	kvPut(t, c, "ferry/webx", "x")
	i2 := kvPut(t, c, "ferry/web", "two")
	rec.waitFor(t, 10*time.Second, fmt.Sprintf("absent one@%d two@%d", i1, i2))

	if _, err := c.API().KV().Delete("ferry/web", nil); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, 10*time.Second, fmt.Sprintf("absent one@%d two@%d absent", i1, i2))
}

// TestAgentKVWatchOutageAndFirstStartDown is not parallel: it frees its agent's ports and
// takes them again, and a parallel test's agent could pick them up meanwhile.
func TestAgentKVWatchOutageAndFirstStartDown(t *testing.T) {
	ports, err := consultest.FreePorts()
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, Config{Address: fmt.Sprintf("127.0.0.1:%d", ports.HTTP)})
	logger, logs := testLogger(t)
	rec := startKVWatch(t, c, KVOptions{Key: "ferry/web", Logger: logger, WaitTime: 2 * time.Second,
		RetryBase: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	time.Sleep(500 * time.Millisecond)
	if got := rec.all(); len(got) != 0 {
		t.Fatalf("values with Consul down = %q, want none", render(got))
	}
	if !strings.Contains(logs.String(), "no answer from Consul yet") {
		t.Errorf("log has no line saying the watch waits for Consul:\n%s", logs.String())
	}

	agent := consultest.Start(t, consultest.Options{Ports: &ports})
	i1 := kvPut(t, c, "ferry/web", "one")
	rec.waitFor(t, 15*time.Second, fmt.Sprintf("one@%d", i1))

	// Outage: nothing is passed on; a new agent (a fresh dev agent, lower indexes and
	// no data: the key may be seen absent before the put) is caught up with.
	agent.Kill()
	const failing = "consul kv: Consul read failing; keeping the last value"
	consultest.WaitFor(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), failing) {
			return errors.New("the watch has not noticed the outage yet")
		}
		return nil
	})
	if got := render(rec.all()); got != fmt.Sprintf("one@%d", i1) {
		t.Errorf("values after the outage began = %q, want only one@%d", got, i1)
	}
	consultest.Start(t, consultest.Options{Ports: &ports})
	i2 := kvPut(t, c, "ferry/web", "two")
	rec.waitFor(t, 15*time.Second, fmt.Sprintf("one@%d two@%d", i1, i2), fmt.Sprintf("one@%d absent two@%d", i1, i2))
	if got := strings.Count(logs.String(), failing); got != 1 {
		t.Errorf("%d outage warnings, want 1", got)
	}
	if !strings.Contains(logs.String(), "Consul answers again") {
		t.Errorf("log has no recovery line:\n%s", logs.String())
	}
}
