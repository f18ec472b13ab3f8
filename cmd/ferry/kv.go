package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/ferrymesh/ferry/discovery/consul"
	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// kvStartWait bounds the wait at start-up for the first read of discovery.consul.config_key;
// past it Ferry starts with the file alone and applies the KV document once Consul answers.
const kvStartWait = 5 * time.Second

// kvWatcher follows one KV key (a *consul.KVWatcher): update gets the first value and
// every change, from Watch's goroutine, until ctx is done.
type kvWatcher interface {
	Watch(ctx context.Context, update func(consul.KVValue)) error
}

// meshConfig is the running config's two sources: the config file (as last loaded, so that
// a KV change is merged with the file that runs, not with unreloaded edits) and the Consul
// KV key the file names in discovery.consul.config_key, followed by a consul.KVWatcher.
// It is used from the run loop's goroutine only.
type meshConfig struct {
	file    string
	log     *slog.Logger
	metrics *telemetry.Metrics

	// startWait bounds the wait for the first value at start-up (kvStartWait).
	startWait time.Duration
	// watcher builds the watch of d.ConfigKey and a func releasing what it holds.
	watcher func(d *config.ConsulDiscovery, log *slog.Logger) (kvWatcher, func(), error)

	fileData []byte          // the file as last applied
	pending  []byte          // the file read by reloadFile, until commit
	watchID  string          // key and Consul settings of the running watch; "" for none
	key      string          // the watched key
	values   chan kvValue    // the running watch's values; nil without one
	stop     func()          // stops the running watch
	latest   *consul.KVValue // the last value read, nil before the first
}

// kvValue is a value read by the watch identified by watchID.
type kvValue struct {
	watchID string
	v       consul.KVValue
}

func newMeshConfig(file string, log *slog.Logger, m *telemetry.Metrics) *meshConfig {
	return &meshConfig{file: file, log: log, metrics: m, stop: func() {}, startWait: kvStartWait, watcher: consulKVWatcher}
}

// consulKVWatcher builds a consul.KVWatcher of d.ConfigKey on its own Consul client.
func consulKVWatcher(d *config.ConsulDiscovery, log *slog.Logger) (kvWatcher, func(), error) {
	client, err := consul.NewClient(consul.Config{Address: d.Address, Scheme: d.Scheme, Datacenter: d.Datacenter,
		Token: d.Token, TokenFile: d.TokenFile, TLS: consul.TLSConfig{CAFile: d.CAFile, CertFile: d.CertFile,
			KeyFile: d.KeyFile, ServerName: d.TLSServerName}})
	if err != nil {
		return nil, nil, fmt.Errorf("discovery.consul (config_key %s): %w", d.ConfigKey, err)
	}
	w, err := consul.NewKVWatcher(client.API(), consul.KVOptions{Key: d.ConfigKey, Datacenter: d.Datacenter, Logger: log})
	if err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("discovery.consul.config_key: %w", err)
	}
	return w, client.Close, nil
}

// readFile reads a config file's bytes, as config.Load does, with the same error.
func readFile(path string) ([]byte, error) {
	fail := func(err error) error {
		msg := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			msg = pe.Op + ": " + pe.Err.Error()
		}
		return config.Errors{{File: path, Msg: "cannot read config: " + msg, Err: err}}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fail(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, config.MaxFileSize+1))
	if err != nil {
		return nil, fail(err)
	}
	return data, nil
}

// start loads the file and, if it names a config key, starts following it and waits up to
// kvStartWait for its first value: the config returned is the file merged with the KV
// document, or the file alone if the key is absent, the document invalid (logged, counted
// as a failed reload) or Consul did not answer in time (logged; applied later by the run
// loop). An invalid file is an error.
func (m *meshConfig) start() (*config.Config, error) {
	data, err := readFile(m.file)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Parse(m.file, data)
	if err != nil {
		return nil, err
	}
	m.fileData = data
	if err := m.follow(cfg); err != nil {
		m.stop()
		return nil, err
	}
	if m.values == nil {
		return cfg, nil
	}
	t := time.NewTimer(m.startWait)
	defer t.Stop()
	select {
	case kv := <-m.values:
		v := kv.v
		m.latest = &v
		if !v.Exists {
			m.log.Info("consul kv: config key absent; running the file alone", "key", m.key)
			return cfg, nil
		}
		merged, err := m.merge(data, v)
		if err != nil {
			m.refused("consul kv: document refused at start-up; running the file alone", v, err)
			return cfg, nil
		}
		m.log.Info("consul kv: config merged", "key", m.key, "modify_index", v.ModifyIndex, "keys", merged.Overlay.Keys)
		return merged, nil
	case <-t.C:
		m.log.Warn("consul kv: no answer from Consul; starting with the file alone, the KV document is applied once Consul answers",
			"key", m.key, "waited", m.startWait)
		return cfg, nil
	}
}

// watchIDOf identifies the watch cfg asks for (its config key and Consul settings), or
// returns "" for none.
func watchIDOf(cfg *config.Config) string {
	if cfg.Discovery == nil || cfg.Discovery.Consul == nil || cfg.Discovery.Consul.ConfigKey == "" {
		return ""
	}
	d := cfg.Discovery.Consul
	return fmt.Sprint(d.ConfigKey, "|", d.Address, "|", d.Scheme, "|", d.Datacenter, "|", d.Token, "|", d.TokenFile,
		"|", d.CAFile, "|", d.CertFile, "|", d.KeyFile, "|", d.TLSServerName)
}

// follow starts, restarts or stops the watch of cfg's config key, as cfg asks. On error
// the running watch is left as it was.
func (m *meshConfig) follow(cfg *config.Config) error {
	id := watchIDOf(cfg)
	if id == m.watchID {
		return nil
	}
	if id == "" {
		m.stop()
		m.stop, m.values, m.watchID, m.key, m.latest = func() {}, nil, "", "", nil
		m.log.Info("consul kv: no config key any more; running the file alone")
		return nil
	}
	d := cfg.Discovery.Consul
	w, release, err := m.watcher(d, m.log)
	if err != nil {
		return err
	}
	m.stop()
	ctx, cancel := context.WithCancel(context.Background())
	values := make(chan kvValue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Watch(ctx, func(v consul.KVValue) {
			select {
			case values <- kvValue{id, v}:
			case <-ctx.Done():
			}
		})
	}()
	m.stop = func() { cancel(); <-done; release() }
	m.values, m.watchID, m.key, m.latest = values, id, d.ConfigKey, nil
	m.log.Info("consul kv: following config key", "key", d.ConfigKey)
	return nil
}

// merge parses v as the KV document and merges it into the file data.
func (m *meshConfig) merge(data []byte, v consul.KVValue) (*config.Config, error) {
	ov, err := config.ParseOverlay("consul kv "+m.key, v.ModifyIndex, v.Value)
	if err != nil {
		return nil, err
	}
	return config.ParseWithOverlay(m.file, data, ov)
}

// refused logs a refused KV document, one line per problem (each with its source:line),
// and counts a failed reload.
func (m *meshConfig) refused(msg string, v consul.KVValue, err error) {
	m.metrics.ConfigReloads.WithLabelValues("error").Inc()
	var es config.Errors
	if errors.As(err, &es) {
		for _, e := range es {
			m.log.Error(e.Error(), "key", m.key, "modify_index", v.ModifyIndex)
		}
		m.log.Error(msg, "key", m.key, "modify_index", v.ModifyIndex, "problems", len(es))
		return
	}
	m.log.Error(msg, "key", m.key, "modify_index", v.ModifyIndex, "error", err.Error())
}

// kvChanged returns the config for a new value of the key, merged with the file as last
// loaded, or nil (logged, counted) if the document is refused.
func (m *meshConfig) kvChanged(kv kvValue) *config.Config {
	if kv.watchID != m.watchID {
		return nil // from a watch stopped meanwhile
	}
	v := kv.v
	m.latest = &v
	if !v.Exists {
		cfg, err := config.Parse(m.file, m.fileData)
		if err != nil {
			// The file was valid when loaded, and parsing is deterministic.
			m.refused("consul kv: config key deleted but the file alone is invalid; the running config stays", v, err)
			return nil
		}
		m.log.Info("consul kv: config key deleted; running the file alone", "key", m.key)
		return cfg
	}
	cfg, err := m.merge(m.fileData, v)
	if err != nil {
		m.refused("consul kv: document refused; the running config stays", v, err)
		return nil
	}
	return cfg
}

// reloadFile re-reads the file (SIGHUP) and returns it merged with the latest KV value, or
// nil (logged, counted) if either is refused. When the file changes the config key or the
// Consul settings, the file alone is returned: commit, called once it is applied,
// restarts the watch, and the new key's document is merged once read.
func (m *meshConfig) reloadFile() *config.Config {
	data, err := readFile(m.file)
	var cfg *config.Config
	if err == nil {
		cfg, err = config.Parse(m.file, data)
	}
	if err != nil {
		m.metrics.ConfigReloads.WithLabelValues("error").Inc()
		m.log.Error("reload refused: invalid config; the running config stays", "config", m.file, "error", err.Error())
		return nil
	}
	m.pending = data
	if watchIDOf(cfg) != m.watchID || m.latest == nil || !m.latest.Exists {
		return cfg
	}
	merged, err := m.merge(data, *m.latest)
	if err != nil {
		m.refused("reload refused: the file merged with the latest KV document is invalid; the running config stays", *m.latest, err)
		return nil
	}
	return merged
}

// commit records that cfg, returned by reloadFile, is applied: later KV values are merged
// with its file, and the watch follows its config key.
func (m *meshConfig) commit(cfg *config.Config) {
	if m.pending != nil {
		m.fileData, m.pending = m.pending, nil
	}
	if err := m.follow(cfg); err != nil {
		m.log.Error("consul kv: cannot follow the config key; the previous watch stays", "error", err)
	}
}

// close stops the watch, if any.
func (m *meshConfig) close() { m.stop() }
