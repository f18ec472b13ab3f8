package consul

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/ferrymesh/ferry/discovery/consul/blocking"
)

// KVValue is what a KV key holds at one point: its value and Consul's ModifyIndex, or
// nothing (Exists false) when the key is absent.
type KVValue struct {
	// Key is the key watched.
	Key string
	// Exists is false when the key is absent (never written, or deleted).
	Exists bool
	// Value is the key's value; nil when absent. Callers must not modify it.
	Value []byte
	// ModifyIndex is Consul's index of the last write of the key; 0 when absent.
	ModifyIndex uint64
}

// kvAPI is the part of Consul's KV API the watcher consumes.
type kvAPI interface {
	Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
}

// KVOptions configure a KVWatcher. Zero durations take the Default* values of Options.
type KVOptions struct {
	// Key is the KV key to watch, e.g. "ferry/web". Required.
	Key string
	// Datacenter to read from; empty means the client's default (the agent's own).
	Datacenter string
	// Logger receives one warning when reads start failing, one info line when they
	// recover, and debug lines for every change. nil discards.
	Logger *slog.Logger
	// WaitTime is how long one blocking query may wait for a change (at most 10m).
	WaitTime time.Duration
	// MinQueryInterval rate-limits the query loop (a token bucket with a burst of 2
	// refilled once per interval), as Consul asks of blocking-query clients.
	MinQueryInterval time.Duration
	// RetryBase and RetryMax bound the jittered exponential backoff after a failed query.
	RetryBase time.Duration
	RetryMax  time.Duration
}

// KVWatcher follows one Consul KV key with blocking queries. It is safe for concurrent
// use, but each Watch runs its own query loop.
type KVWatcher struct {
	api    kvAPI
	opts   KVOptions
	pacing blocking.Pacing
	log    *slog.Logger
}

// NewKVWatcher returns a watcher of opts.Key that queries Consul through client (see
// Client.API). It does not contact Consul.
func NewKVWatcher(client *api.Client, opts KVOptions) (*KVWatcher, error) {
	if client == nil {
		return nil, errors.New("consul kv: nil client")
	}
	return newKVWatcher(client.KV(), opts)
}

func newKVWatcher(kv kvAPI, opts KVOptions) (*KVWatcher, error) {
	if opts.Key == "" {
		return nil, errors.New("consul kv: key is required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &KVWatcher{api: kv, opts: opts, log: log.With("key", opts.Key),
		pacing: pacing(opts.WaitTime, opts.MinQueryInterval, opts.RetryBase, opts.RetryMax)}, nil
}

// Watch runs the blocking-query loop until ctx is done, calling update (from Watch's
// goroutine) with the first answer and then with every answer in which the key was
// written, created or deleted: answers whose ModifyIndex, presence and value did not
// change are dropped, since a blocking query on a key also returns on timeouts and on
// writes of other keys. (The value is compared too: a new agent may reuse an index.) While Consul cannot be reached it calls nothing, retries with jittered
// exponential backoff, and the first answer after an outage is a fresh, non-blocking
// read (and is passed on only if the key changed meanwhile). Watch returns nil when ctx
// is done.
func (w *KVWatcher) Watch(ctx context.Context, update func(KVValue)) error {
	loop := blocking.NewLoop(w.pacing)
	var (
		last      KVValue
		published bool
		since     time.Time
	)
	for loop.Wait(ctx) {
		pair, meta, err := w.get(ctx, loop)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// The next query is a fresh read (see blocking.Loop.Failed).
			failures, delay := loop.Failed()
			if failures == 1 {
				since = time.Now()
			}
			switch {
			case failures > 1:
				w.log.Debug("consul kv: read failed again", "error", err, "failures", failures, "retry_in", delay)
			case !published:
				w.log.Warn("consul kv: no answer from Consul yet; retrying", "error", err, "retry_in", delay)
			default:
				w.log.Warn("consul kv: Consul read failing; keeping the last value", "error", err,
					"modify_index", last.ModifyIndex, "retry_in", delay)
			}
			if !blocking.Sleep(ctx, delay) {
				return nil
			}
			continue
		}
		// The next query waits on the answer's index, by Consul's index rules.
		if _, failures := loop.Answered(meta.LastIndex); failures > 0 {
			w.log.Info("consul kv: Consul answers again", "outage", time.Since(since).Round(time.Millisecond), "failed_reads", failures)
		}
		v := KVValue{Key: w.opts.Key}
		if pair != nil {
			v = KVValue{Key: w.opts.Key, Exists: true, Value: pair.Value, ModifyIndex: pair.ModifyIndex}
		}
		if published && v.Exists == last.Exists && v.ModifyIndex == last.ModifyIndex && bytes.Equal(v.Value, last.Value) {
			continue
		}
		w.log.Debug("consul kv: key changed", "exists", v.Exists, "modify_index", v.ModifyIndex, "bytes", len(v.Value))
		last, published = v, true
		update(v)
	}
	return nil
}

// get runs the next query of loop (blocking, unless its index is 0): a read of the key.
func (w *KVWatcher) get(ctx context.Context, loop *blocking.Loop) (*api.KVPair, *api.QueryMeta, error) {
	q, cancel := loop.Query(ctx, &api.QueryOptions{
		Datacenter: w.opts.Datacenter,
		AllowStale: true, // any server answers: config keeps flowing without a leader
	})
	defer cancel()
	return w.api.Get(w.opts.Key, q)
}
